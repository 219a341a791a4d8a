#!/usr/bin/env bash
# A paced pairs run under `perf sched record`, then every stall the harness reported (deliveries over --stall-ms)
# put next to what the two cores were doing in its window: how busy they were, which threads ran and which
# waited for a CPU (docs/performance.md, "Issue 21", third session of 2026-12-07). Needs perf (apt install
# linux-perf) and root; the recording is ~10 MB per second of run.
#
#   LoadTests/run-sched.sh [OUT] -- <harness arguments>
#   LoadTests/run-sched.sh /tmp/sched60 -- pairs --pairs 100 --body-size 256 --warmup-s 3 --stall-ms 10 \
#       --rate 10000 --duration 60 --durability async --broker-set storage.rocksdb_info_log=true
#
# OUT gets run.log and run.json (the harness's), sched.data, timehist.txt and stalls.txt (the report, also printed):
# per stall its time, length, the CPU use of both cores in it, and per thread (name@pid) the time it ran and the
# time it was runnable but waiting for a CPU (with its longest single wait).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${TMPDIR:-/tmp}/chatbroker-sched"
if [ $# -gt 0 ] && [ "$1" != "--" ]; then
  out="$1"
  shift
fi
[ "${1:-}" = "--" ] && shift
if ! command -v perf >/dev/null; then
  echo "run-sched.sh: perf is missing (apt-get install linux-perf)" >&2
  exit 1
fi
mkdir -p "$out"
cd "$root"
duration=60
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  [ "${args[$i]}" = "--duration" ] && duration="${args[$((i + 1))]}"
done

# perf records CLOCK_MONOTONIC; the harness reports stalls in UTC: one reading of both maps one onto the other.
python3 -c "import time; print(time.clock_gettime(time.CLOCK_MONOTONIC), time.time())" > "$out/clock"
dotnet LoadTests/bin/Release/net10.0/chatbroker-load.dll "${args[@]}" --json "$out/run.json" > "$out/run.log" 2>&1 &
harness=$!
# The broker's start and the warm-up come first; recording a little longer than the run costs nothing.
perf sched record -k CLOCK_MONOTONIC -o "$out/sched.data" -- sleep "$((duration + 10))" > "$out/perf.log" 2>&1
wait "$harness" || true
python3 "$root/LoadTests/sched_stalls.py" "$out" | tee "$out/stalls.txt"
