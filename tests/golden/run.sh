#!/bin/sh
# Golden tests: run `tlspolicy` over key files and diff stdout+stderr with the
# .ref files next to them. Usage: run.sh TLSPOLICY [--update]
#   NAME.MAP.keys   keys for `tlspolicy query -c NAME.conf -m MAP -` (MAP=explain: --explain per key)
#   NAME.check      `tlspolicy check -c NAME.conf` (errors and warnings included)
#   NAME.postfix-config  `tlspolicy postfix-config -c NAME.conf`
set -u
bin=$(command -v "$1" || true); case $1 in */*) bin=$(cd "$(dirname "$1")" && pwd)/$(basename "$1");; esac
update=${2:-}
cd "$(dirname "$0")"
# check compares default with Postfix's level: pin it (postfix/main.cf, may).
MAIL_CONFIG=$(pwd)/postfix; export MAIL_CONFIG
fail=0
run_case() {  # name, command...
  ref=$1.ref; shift
  out=$("$@" 2>&1; echo "exit $?")
  # (the test directory's absolute path, e.g. in postconf's main.cf path, as ".")
  out=$(printf '%s\n' "$out" | sed -E -e 's/ in [0-9.]+ ms/ in N ms/' -e "s|$(pwd)/|./|g")
  if [ "$update" = "--update" ]; then printf '%s\n' "$out" > "$ref"; return; fi
  if printf '%s\n' "$out" | diff -u "$ref" - ; then echo "ok   $ref"; else echo "FAIL $ref (diff above: - want, + got)"; fail=1; fi
}
for keys in *.keys; do
  base=${keys%.keys}; conf=${base%%.*}.conf; map=${base#*.}
  if [ "$map" = explain ]; then
    run_case "$base" sh -c 'while IFS="	" read -r m k; do "$0" query -c "$1" -m "$m" --explain "$k"; done < "$2"' "$bin" "$conf" "$keys"
  else
    run_case "$base" "$bin" query -c "$conf" -m "$map" - < "$keys"
  fi
done
for c in *.postfix-config; do   # NAME.postfix-config: `tlspolicy postfix-config -c NAME.conf`
  run_case "$c" "$bin" postfix-config -c "${c%.postfix-config}.conf"
done
for c in *.check; do
  run_case "${c%.check}.check" "$bin" check -c "${c%.check}.conf"
done
# check warns, as postfix check does, about policy files others can change.
tmp=$(mktemp -d)
cp policy.conf force.list "$tmp/"
chmod o+w "$tmp/force.list"
out=$("$bin" check -c "$tmp/policy.conf" 2>&1)
if printf '%s' "$out" | grep -q "force.list: warning: group or other writable"; then
  echo "ok   check warns about a world-writable list file"
else
  echo "FAIL check did not warn about a world-writable list file: $out"; fail=1
fi
rm -rf "$tmp"
# query - --threads N: same output in input order on 1 and 4 threads, over
# several 4 MB blocks each split between the threads; 0 is a usage error.
tmp=$(mktemp -d)
awk 'BEGIN { for (i = 0; i < 400000; i++) print (i % 3 ? "host" i ".partner.test" : "nohost" i ".example") }' > "$tmp/keys"
"$bin" query -c policy.conf -m tls-policy --threads 1 - < "$tmp/keys" > "$tmp/one"; r1=$?
"$bin" query -c policy.conf -m tls-policy --threads 4 - < "$tmp/keys" > "$tmp/four"; r4=$?
if [ "$r1$r4" = 00 ] && [ "$(wc -l < "$tmp/one")" -eq 400000 ] && cmp -s "$tmp/one" "$tmp/four"; then
  echo "ok   query - --threads 1 and --threads 4 agree on 400000 keys"
else
  echo "FAIL query - --threads 1 (exit $r1, $(wc -l < "$tmp/one") lines) vs --threads 4 (exit $r4): $(cmp "$tmp/one" "$tmp/four" 2>&1)"; fail=1
fi
if "$bin" query -c policy.conf --threads 0 - < /dev/null 2> "$tmp/err"; [ $? -eq 2 ] && grep -q "want a number of threads" "$tmp/err"; then
  echo "ok   query --threads 0 is a usage error"
else
  echo "FAIL query --threads 0: $(cat "$tmp/err")"; fail=1
fi
rm -rf "$tmp"
exit $fail
