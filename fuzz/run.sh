#!/bin/sh
# Builds the libFuzzer targets with clang (ASan+UBSan) and runs each for
# SECONDS (default 60), starting from the seed corpus in fuzz/corpus/TARGET.
# New inputs go to fuzz/out/corpus/TARGET (not committed); a crash leaves its
# input in fuzz/out/crashes/ and makes this script exit non-zero: copy it to
# fuzz/regressions/TARGET/ so every later run (and CI) replays it.
# Usage: fuzz/run.sh [SECONDS] [TARGET...]
set -eu
cd "$(dirname "$0")/.."
secs=${1:-60}
[ $# -gt 0 ] && shift
targets=${*:-netstring config keys server sts dns_reply}
B=build-fuzz
CC=clang CXX=clang++ cmake -S . -B $B -DFUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBUILD_TESTING=OFF >/dev/null
cmake --build $B -j"$(nproc)" --target $(for t in $targets; do printf 'fuzz_%s ' "$t"; done) >/dev/null
mkdir -p fuzz/out/crashes
export LSAN_OPTIONS="suppressions=$PWD/fuzz/lsan.supp:print_suppressions=0"
rc=0
for t in $targets; do
  mkdir -p "fuzz/out/corpus/$t"
  # Known crashers first: they must all pass now.
  if [ -d "fuzz/regressions/$t" ] && [ -n "$(ls "fuzz/regressions/$t")" ]; then
    "$B/fuzz_$t" "fuzz/regressions/$t"/* >"fuzz/out/$t.regressions.log" 2>&1 || { echo "FAIL $t: a regression input crashes again (fuzz/out/$t.regressions.log)"; rc=1; continue; }
  fi
  if "$B/fuzz_$t" -max_total_time="$secs" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
      -artifact_prefix="fuzz/out/crashes/$t-" "fuzz/out/corpus/$t" "fuzz/corpus/$t" >"fuzz/out/$t.log" 2>&1; then
    echo "ok   $t: $(grep -Eo 'Done [0-9]+ runs in [0-9]+ second' "fuzz/out/$t.log" | tail -1), corpus $(ls "fuzz/out/corpus/$t" | wc -l) inputs"
  else
    echo "FAIL $t: see fuzz/out/$t.log; input in fuzz/out/crashes/"
    tail -30 "fuzz/out/$t.log"
    rc=1
  fi
done
exit $rc
