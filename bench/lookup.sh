#!/usr/bin/env bash
# usage: bench/lookup.sh [path/to/tlspolicy]      (default: build/tlspolicy)
#
# Lookup benchmark (not a test; it only fails on a broken run or when the
# engines disagree on how many keys they found). Compares, on the same
# generated entries and the same keys:
#   tlspolicy query -c FILE -          vs  postmap -q - cdb:/hash:/lmdb:FILE
#   (domain tables of 1k, 100k, 1M rules)   (Postfix's tables, same entries)
#   each tlspolicy batch twice: on all cores (query - answers a block of keys
#   on one thread per core, at most 8) and with --threads 1, at equal CPU
#   with single-threaded postmap (and with the daemon, which is single-
#   threaded too); the ratios and goals use the --threads 1 figures.
#   tlspolicy query (10k /24 CIDRs,    vs  postmap -q - cidr:FILE
#   keys "[a.b.c.d]")                      (keys as bare IPs "a.b.c.d")
# Each batch: NKEYS keys on stdin (half hits, half misses, shuffled), output
# to /dev/null, whole-process wall time and peak RSS, best of REPEAT runs
# after one warm-up run whose output is kept to count the keys found (a
# warm-up slower than 2 s counts as the first timed run).
# Load time = wall time of the same command with no keys (stdin /dev/null).
#
# Environment:
#   REPEAT=3          timed runs per configuration (best is reported)
#   NKEYS=1000000     keys per batch
#   SIZES="1000 100000 1000000"   domain table sizes
#   NCIDR=10000       /24 networks in the CIDR table
#   QUICK=1           smoke run: NKEYS=50000 REPEAT=1 (goals only indicative)
# Generated data goes to bench/out/lookup-NKEYS/ (reused when unchanged).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
if [ "${QUICK:-0}" = 1 ]; then
    : "${NKEYS:=50000}" "${REPEAT:=1}"
fi
REPEAT=${REPEAT:-3}
NKEYS=${NKEYS:-1000000}
SIZES=${SIZES:-"1000 100000 1000000"}
NCIDR=${NCIDR:-10000}
TP=${1:-$root/build/tlspolicy}
case $TP in /*) ;; *) TP=$(cd "$(dirname "$TP")" && pwd)/$(basename "$TP") ;; esac

die() { echo "lookup.sh: $*" >&2; exit 2; }
[ -x "$TP" ] || die "no executable $TP (build: cmake --build $root/build -j2)"
command -v postmap >/dev/null || die "postmap not found (apt-get install postfix postfix-cdb postfix-lmdb)"
PY=/usr/bin/python3
[ -x $PY ] || PY=python3

t_start=$EPOCHREALTIME
load0=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?')
OUT=$root/bench/out/lookup-$NKEYS
mkdir -p "$OUT"
cd "$OUT"

# The binary under test is copied first, so a rebuild during the run (other
# people work in this tree) cannot mix two builds in one table.
tp_info="$TP, built $(date -r "$TP" '+%Y-%m-%d %H:%M:%S'), sha256 $(sha256sum < "$TP" | cut -c1-12)"
cp "$TP" "$OUT/tlspolicy.under-test"
TP=$OUT/tlspolicy.under-test

# ---- data (deterministic; regenerated only when parameters/generator change)
stamp="$NKEYS|$SIZES|$NCIDR|$(cksum < "$here/gen_lookup_data.py")"
if [ ! -f .stamp ] || [ "$(cat .stamp)" != "$stamp" ]; then
    echo "generating data in $OUT ..." >&2
    rm -f .stamp
    # shellcheck disable=SC2086
    $PY "$here/gen_lookup_data.py" "$OUT" "$NKEYS" $SIZES --cidr "$NCIDR"
    printf '%s\n' "$stamp" > .stamp
fi
# postmap -c "$OUT". Written only when missing: Postfix waits up to ~2 s for a
# main.cf modified less than a second ago to settle, which would skew timings.
if [ "$(cat main.cf 2>/dev/null)" != "compatibility_level = 3.6" ]; then
    printf 'compatibility_level = 3.6\n' > main.cf
    sleep 2
fi

# ---- measurement helpers
# run_once INPUT OUTFILE CMD... -> sets W (wall s), M (peak RSS KB), C (CPU s, user+sys).
# Exit 1 means "nothing found" for both tools, but postmap also exits 1 (after
# a 1 s sleep) on fatal errors, so anything on stderr counts as a failure.
if [ -x /usr/bin/time ] && [ "${NO_GNU_TIME:-0}" != 1 ]; then   # NO_GNU_TIME=1: use the fallback
    run_once() {
        local in=$1 out=$2 rc=0 t0 t1; shift 2
        t0=$EPOCHREALTIME
        /usr/bin/time -f '%M %U %S' -o rss.tmp "$@" < "$in" > "$out" 2> err.tmp || rc=$?
        t1=$EPOCHREALTIME
        if [ $rc -gt 1 ] || [ -s err.tmp ]; then cat err.tmp >&2; die "failed (rc $rc): $*"; fi
        W=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", b - a }')
        read -r M C < <(tail -n 1 rss.tmp | awk '{ printf "%s %.2f\n", $1, $2 + $3 }')
    }
else   # no GNU time: python wrapper times the child and reads its ru_maxrss
    # (which keeps the ~10 MB high-water mark of the forking python: a floor)
    rss_note="peak RSS via python getrusage: figures below ~10 MB are the wrapper's floor"
    run_once() {
        local in=$1 out=$2 rc=0 res; shift 2
        res=$($PY -c '
import resource, subprocess, sys, time
t0 = time.perf_counter()
rc = subprocess.call(sys.argv[3:], stdin=open(sys.argv[1]), stdout=open(sys.argv[2], "w"), stderr=open("err.tmp", "w"))
w = time.perf_counter() - t0
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print("%d %.4f %d %.2f" % (rc, w, ru.ru_maxrss, ru.ru_utime + ru.ru_stime))
' "$in" "$out" "$@")
        read -r rc W M C <<< "$res"
        if [ "$rc" -gt 1 ] || [ -s err.tmp ]; then cat err.tmp >&2; die "failed (rc $rc): $*"; fi
    }
fi

# bench NAME KEYFILE CMD... : warm-up run (counts found keys), then up to REPEAT
# timed runs to /dev/null, then REPEAT empty-stdin runs (load time).
# Sets FOUND[NAME] WALL[NAME] CPU[NAME] (of the best run) RSS[NAME] LOAD[NAME] LRSS[NAME]
declare -A FOUND WALL CPU RSS LOAD LRSS BUILD
bench() {
    local name=$1 keys=$2 i bw bc bm=0 lw lm=0; shift 2
    printf '  %-28s' "$name" >&2
    run_once "$keys" found.tmp "$@"
    FOUND[$name]=$(wc -l < found.tmp)
    i=0
    # A slow batch (> 2 s: postmap cidr/hash/lmdb) is its own warm-up; writing
    # its output to a file costs nothing measurable, so it counts as run 1.
    if awk -v w="$W" 'BEGIN { exit !(w > 2) }'; then
        bw=$W bc=$C bm=$M i=1
        printf ' %6.3fs' "$W" >&2
    fi
    for ((; i < REPEAT; i++)); do
        run_once "$keys" /dev/null "$@"
        if [ -z "${bw:-}" ] || awk -v a="$W" -v b="$bw" 'BEGIN { exit !(a < b) }'; then bw=$W bc=$C; fi
        if [ "$M" -gt "$bm" ]; then bm=$M; fi
        printf ' %6.3fs' "$W" >&2
    done
    for ((i = 0; i < REPEAT; i++)); do
        run_once /dev/null /dev/null "$@"
        if [ -z "${lw:-}" ] || awk -v a="$W" -v b="$lw" 'BEGIN { exit !(a < b) }'; then lw=$W; fi
        if [ "$M" -gt "$lm" ]; then lm=$M; fi
    done
    printf '   load %6.3fs  found %s\n' "$lw" "${FOUND[$name]}" >&2
    WALL[$name]=$bw CPU[$name]=$bc RSS[$name]=$bm LOAD[$name]=$lw LRSS[$name]=$lm
}

build() {   # build TYPE SRC -> BUILD[TYPE:SRC] seconds
    local t0 t1
    case $1 in cdb) rm -f "$2.cdb" ;; hash) rm -f "$2.db" ;; lmdb) rm -f "$2.lmdb" ;; esac
    t0=$EPOCHREALTIME
    postmap -c "$OUT" "$1:$2" || die "postmap $1:$2 failed"
    t1=$EPOCHREALTIME
    BUILD[$1:$2]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
}

nkeys_of() { wc -l < "$1" | tr -d ' '; }
errors=()

echo "tlspolicy: $tp_info" >&2
echo "keys/batch: $NKEYS, best of $REPEAT (+1 warm-up), data: $OUT" >&2

# ---- baseline: a policy with no entries
run_once /dev/null /dev/null "$TP" query -c empty.conf -
base_rss=$M
for ((i = 1; i < REPEAT; i++)); do
    run_once /dev/null /dev/null "$TP" query -c empty.conf -
    if [ "$M" -lt "$base_rss" ]; then base_rss=$M; fi
done

CHECKMS=()
for s in $SIZES; do
    echo "domains, $s rules:" >&2
    for t in cdb hash lmdb; do build $t "dom-$s.map"; done
    chk=$("$TP" check -c "dom-$s.conf") || die "tlspolicy check dom-$s.conf failed"
    CHECKMS[s]=$(sed -n 's/.* in \([0-9.]*\) ms.*/\1/p' <<< "$chk")
    bench "tlspolicy/$s" "dom-$s.keys" "$TP" query -c "dom-$s.conf" -
    bench "tlspolicy-1t/$s" "dom-$s.keys" "$TP" query -c "dom-$s.conf" --threads 1 -
    for t in cdb hash lmdb; do
        bench "postmap-$t/$s" "dom-$s.keys" postmap -c "$OUT" -q - "$t:dom-$s.map"
    done
    [ "${FOUND[tlspolicy-1t/$s]}" = "${FOUND[tlspolicy/$s]}" ] ||
        errors+=("MISMATCH $s domains: tlspolicy --threads 1 found ${FOUND[tlspolicy-1t/$s]}, all cores ${FOUND[tlspolicy/$s]}")
    if [ "${FOUND[tlspolicy/$s]}" != "${FOUND[postmap-cdb/$s]}" ]; then
        errors+=("MISMATCH $s domains: tlspolicy found ${FOUND[tlspolicy/$s]}, postmap cdb found ${FOUND[postmap-cdb/$s]}")
        echo "!!! ${errors[-1]}" >&2
    fi
    for t in hash lmdb; do
        [ "${FOUND[postmap-$t/$s]}" = "${FOUND[postmap-cdb/$s]}" ] ||
            errors+=("MISMATCH $s domains: postmap $t found ${FOUND[postmap-$t/$s]}, cdb ${FOUND[postmap-cdb/$s]}")
    done
done

echo "CIDR, $NCIDR /24 rules:" >&2
chk=$("$TP" check -c cidr.conf) || die "tlspolicy check cidr.conf failed"
CHECKMS[0]=$(sed -n 's/.* in \([0-9.]*\) ms.*/\1/p' <<< "$chk")
bench "tlspolicy/cidr" cidr.keys "$TP" query -c cidr.conf -
bench "tlspolicy-1t/cidr" cidr.keys "$TP" query -c cidr.conf --threads 1 -
[ "${FOUND[tlspolicy-1t/cidr]}" = "${FOUND[tlspolicy/cidr]}" ] ||
    errors+=("MISMATCH CIDR: tlspolicy --threads 1 found ${FOUND[tlspolicy-1t/cidr]}, all cores ${FOUND[tlspolicy/cidr]}")
bench "postmap-cidr/cidr" cidr-bare.keys postmap -c "$OUT" -q - cidr:cidr.map
if [ "${FOUND[tlspolicy/cidr]}" != "${FOUND[postmap-cidr/cidr]}" ]; then
    errors+=("MISMATCH CIDR: tlspolicy found ${FOUND[tlspolicy/cidr]}, postmap cidr found ${FOUND[postmap-cidr/cidr]}")
    echo "!!! ${errors[-1]}" >&2
fi

# ---- report
nk=$(nkeys_of cidr.keys)
rate() { awk -v n="$1" -v w="$2" 'BEGIN { printf "%.0f", n / w }'; }
fmt_rate() { awk -v r="$1" 'BEGIN { if (r >= 1e6) printf "%.2fM", r / 1e6; else printf "%.0fk", r / 1e3 }'; }
row() {   # row LABEL ENGINE NAME REFNAME BUILD
    local name=$3 ref=$4 r rr net cr crr
    r=$(rate "$nk" "${WALL[$name]}")
    rr=$(rate "$nk" "${WALL[$ref]}")
    net=$(awk -v n="$nk" -v w="${WALL[$name]}" -v l="${LOAD[$name]}" \
        'BEGIN { d = w - l; if (d <= 0) print "-"; else if (n/d >= 1e6) printf "%.2fM", n/d/1e6; else printf "%.0fk", n/d/1e3 }')
    cr=$(awk -v n="$nk" -v c="${CPU[$name]}" 'BEGIN { printf "%.0f", (c > 0 ? n / c : 0) }')
    crr=$(awk -v n="$nk" -v c="${CPU[$ref]}" 'BEGIN { printf "%.0f", (c > 0 ? n / c : 0) }')
    printf '%-12s %-16s %10s %8s %12s %7s %10s %8s %9s %9s %9s %8s %9s\n' "$1" "$2" \
        "$(fmt_rate "$r")" "$(awk -v a="$r" -v b="$rr" 'BEGIN { printf "%.2fx", a / b }')" \
        "$net" "${CPU[$name]}" "$(fmt_rate "$cr")" "$(awk -v a="$cr" -v b="$crr" 'BEGIN { printf "%.2fx", (b > 0 ? a / b : 0) }')" \
        "$(awk -v w="${LOAD[$name]}" 'BEGIN { printf "%.3f", w }')" \
        "$(awk -v k="${RSS[$name]}" 'BEGIN { printf "%.1f", k / 1024 }')" \
        "$(awk -v k="${LRSS[$name]}" 'BEGIN { printf "%.1f", k / 1024 }')" \
        "${FOUND[$name]}" "$5"
}

echo
echo "lookup benchmark: $nk keys/batch (half hits, half misses), whole process, best of $REPEAT"
echo "host: $(nproc) CPUs, $(uname -r), load avg at start $load0; postfix $(postconf -c "$OUT" -d -h mail_version 2>/dev/null || echo '?')"
echo "tlspolicy: $tp_info (repo HEAD $(git -C "$root" --no-optional-locks rev-parse --short HEAD 2>/dev/null || echo '?'))"
if [ -n "${rss_note:-}" ]; then echo "$rss_note"; fi
if [ "${QUICK:-0}" = 1 ]; then echo "QUICK=1: few keys, one run; figures and goals are indicative only"; fi
echo
printf '%-12s %-16s %10s %8s %12s %7s %10s %8s %9s %9s %9s %8s %9s\n' \
    "table" "engine" "lookups/s" "ratio" "excl.load/s" "cpu s" "per cpu-s" "ratio" "load s" "peak MB" "load MB" "found" "build s"
for s in $SIZES; do
    label="$s dom"
    row "$label" "tlspolicy 1 thr" "tlspolicy-1t/$s" "postmap-cdb/$s" "-"
    row "$label" "tlspolicy all" "tlspolicy/$s" "postmap-cdb/$s" "-"
    for t in cdb hash lmdb; do
        row "$label" "postmap $t" "postmap-$t/$s" "postmap-cdb/$s" "${BUILD[$t:dom-$s.map]}"
    done
done
row "$NCIDR cidr" "tlspolicy 1 thr" "tlspolicy-1t/cidr" "postmap-cidr/cidr" "-"
row "$NCIDR cidr" "tlspolicy all" "tlspolicy/cidr" "postmap-cidr/cidr" "-"
row "$NCIDR cidr" "postmap cidr" "postmap-cidr/cidr" "postmap-cidr/cidr" "-"
echo
echo "tlspolicy 1 thr: query --threads 1 (equal CPU with postmap and with the daemon); all: one thread per core ($(nproc) here, at most 8)."
echo "ratio: vs postmap cdb of the same table (CIDR: vs postmap cidr). excl.load/s = keys / (wall - load). cpu s: user+sys of the best run;"
echo "per cpu-s: keys / cpu s, and its ratio: the equal-CPU comparison that holds on a busy shared machine."
echo "peak MB: peak RSS of the batch run; load MB: of the run with no keys."
echo "load s: wall time with no keys. tlspolicy check reports (parse+build only):$(for s in $SIZES; do printf ' %s dom %s ms,' "$s" "${CHECKMS[$s]}"; done) $NCIDR cidr ${CHECKMS[0]} ms."
echo "keys: domains as smtp_tls_policy_maps sends them; CIDR: tlspolicy gets \"[a.b.c.d]\", postmap cidr: gets the bare IP \"a.b.c.d\"."
echo "found: tlspolicy vs postmap cdb:$(for s in $SIZES; do printf ' %s dom %s/%s,' "$s" "${FOUND[tlspolicy/$s]}" "${FOUND[postmap-cdb/$s]}"; done) cidr ${FOUND[tlspolicy/cidr]}/${FOUND[postmap-cidr/cidr]} (expected hits: $((nk / 2)))"

# ---- goals
echo
goal() { printf '%-5s %s\n' "$1" "$2"; }
has() { [[ " $SIZES " == *" $1 "* ]]; }
echo "goals at equal CPU (tlspolicy --threads 1); all cores in brackets"
allx() {   # allx NAME REF -> "[all cores: RATE/s = Nx]"
    local a b
    a=$(rate "$nk" "${WALL[$1]}"); b=$(rate "$nk" "${WALL[$2]}")
    awk -v a="$a" -v b="$b" -v r="$(fmt_rate "$a")" 'BEGIN { printf "[all cores: %s/s = %.2fx]", r, a / b }'
}
if has 100000; then
    a=$(rate "$nk" "${WALL[tlspolicy-1t/100000]}"); b=$(rate "$nk" "${WALL[postmap-cdb/100000]}")
    x=$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.2f", a / b }')
    goal "$(awk -v x="$x" 'BEGIN { print (x >= 2) ? "PASS" : "MISS" }')" \
        "goal 1: >= 2x postmap cdb on 100k domains: $(fmt_rate "$a")/s vs $(fmt_rate "$b")/s = ${x}x $(allx tlspolicy/100000 postmap-cdb/100000)"
else
    goal "n/a" "goal 1: needs SIZES with 100000"
fi
a=$(rate "$nk" "${WALL[tlspolicy-1t/cidr]}"); b=$(rate "$nk" "${WALL[postmap-cidr/cidr]}")
x=$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.1f", a / b }')
goal "$(awk -v x="$x" 'BEGIN { print (x >= 100) ? "PASS" : "MISS" }')" \
    "goal 2: >= 100x postmap cidr on $NCIDR CIDRs: $(fmt_rate "$a")/s vs $(fmt_rate "$b")/s = ${x}x $(allx tlspolicy/cidr postmap-cidr/cidr)"
if has 1000000; then
    lw=${LOAD[tlspolicy/1000000]}
    bpr=$(awk -v m="${LRSS[tlspolicy/1000000]}" -v z="$base_rss" 'BEGIN { printf "%.0f", (m - z) * 1024 / 1e6 }')
    goal "$(awk -v w="$lw" -v b="$bpr" 'BEGIN { print (w < 1 && b < 200) ? "PASS" : "MISS" }')" \
        "goal 3: 1M rules load < 1 s at < 200 B/rule: load $(printf %.3f "$lw") s (whole process; check says ${CHECKMS[1000000]} ms), $bpr B/rule (peak RSS $((LRSS[tlspolicy/1000000] / 1024)) MB - $((base_rss / 1024)) MB with no rules)$(
            awk -v w="$lw" 'BEGIN { if (w >= 1) printf " [load too slow]" }')$(awk -v b="$bpr" 'BEGIN { if (b >= 200) printf " [too much memory]" }')"
else
    goal "n/a" "goal 3: needs SIZES with 1000000"
fi

echo
echo "total run time: $(awk -v a="$t_start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", b - a }') s"
rm -f rss.tmp err.tmp found.tmp
if [ ${#errors[@]} -gt 0 ]; then
    printf 'FAIL: %s\n' "${errors[@]}" >&2
    exit 1
fi
