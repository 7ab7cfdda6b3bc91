#!/usr/bin/env bash
# Runs `make test` RUNS times (default 3) while LOAD CPU-bound loops (default 2, one per core of
# a 2-core CI machine) keep the cores busy, to show the suite is exact under load: tests wait
# on conditions, not on timings. The loops are bounded (LOAD_SECONDS, default 2 h, by timeout)
# and stopped when the script ends, however it ends. Each run's log goes to .loaded/run-N.log;
# a summary line per run (result, wall-clock seconds) goes to stdout and .loaded/summary.txt.
# Exit status: 0 when every run passed.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
runs=${RUNS:-3}
load=${LOAD:-2}
limit=${LOAD_SECONDS:-7200}
mkdir -p .loaded
: > .loaded/summary.txt

pids=()
stop_load() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
trap stop_load EXIT INT TERM
for _ in $(seq "$load"); do
  timeout "$limit" sh -c 'while :; do :; done' &
  pids+=($!)
done

say() { echo "$*" | tee -a .loaded/summary.txt; }
say "== loaded-test: $runs runs of make test, $load CPU-bound loops on $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD) =="
failed=0
for r in $(seq "$runs"); do
  start=$(date +%s)
  if make test > ".loaded/run-$r.log" 2>&1; then result=pass; else result=FAIL; failed=$((failed + 1)); fi
  secs=$(( $(date +%s) - start ))
  say "run $r: $result in ${secs} s (log .loaded/run-$r.log)"
  if [ "$result" = FAIL ]; then grep -E '^(--- FAIL|FAIL|panic:)|_test.go:[0-9]+:' ".loaded/run-$r.log" | head -20 | sed 's/^/    /' | tee -a .loaded/summary.txt; fi
done
stop_load
say "== $((runs - failed)) of $runs runs passed =="
[ "$failed" -eq 0 ]
