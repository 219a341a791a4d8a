#!/usr/bin/env bash
# Interleaved A/B of broker builds under one harness command (docs/performance.md "Issue 21": how each change
# was measured). Each build is a copy of Host/bin/Release/net10.0 (the harness starts it through CHATBROKER_DLL);
# rounds run A, B, A, B, ... so the machine's noise falls on both. Prints one line per run and the medians.
# Each run starts in its build's directory (no broker.toml there: the defaults, plus the harness's settings).
#
#   cp -r Host/bin/Release/net10.0 /tmp/build-a    # before the change; then rebuild and copy to /tmp/build-b
#   LoadTests/run-ab.sh /tmp/build-a /tmp/build-b -- pairs --pairs 100 --rate 10000 --duration 15 --durability sync
#   ROUNDS=4 OUT=/tmp/chatbroker-ab
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
builds=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do builds+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
[ ${#builds[@]} -ge 2 ] && [ $# -gt 0 ] || { echo "usage: run-ab.sh BUILD_DIR_A BUILD_DIR_B [...] -- <harness arguments>" >&2; exit 2; }
rounds="${ROUNDS:-4}" out="${OUT:-${TMPDIR:-/tmp}/chatbroker-ab}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
for round in $(seq 1 "$rounds"); do
  i=0
  for b in "${builds[@]}"; do
    name="$(printf '%s' "ABCDEFGH" | cut -c$((i + 1)))"; i=$((i + 1))
    # From the build's directory: a broker reads ./broker.toml, and the checkout's may name settings an older build lacks.
    (cd "$b" && CHATBROKER_DLL="$b/chatbroker.dll" dotnet "$root/LoadTests/bin/Release/net10.0/chatbroker-load.dll" "$@" --json "$out/$name-$round.json" > "$out/$name-$round.log" 2>&1) || true
    python3 - "$out/$name-$round.json" "$name" "$round" "$(cut -d' ' -f1 /proc/loadavg)" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); f = r["figures"]; l = r["latency_ms"]
print(f"round {sys.argv[3]} {sys.argv[2]}: {r['throughput_per_s']:,.0f}/s  p50 {l['p50_ms']:.3f}  p99 {l['p99_ms']:.2f}  max {l['max_ms']:.1f} ms  "
      f"broker {f.get('broker_cpu_us_per_message', 0):.1f} µs/msg  worst second {f.get('worst_second_max_ms', 0):.1f} ms  "
      f"alloc {f.get('broker_allocated_bytes_per_message', 0):.0f} B/msg  (load {sys.argv[4]})", flush=True)
PY
  done
done
python3 - "$out" "${#builds[@]}" "$rounds" <<'PY'
import json, statistics, sys, os
out, n, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for k in range(n):
    name = "ABCDEFGH"[k]
    rs = [json.load(open(f"{out}/{name}-{r}.json")) for r in range(1, rounds + 1) if os.path.exists(f"{out}/{name}-{r}.json")]
    med = lambda xs: statistics.median(xs) if xs else float("nan")
    print(f"median {name}: broker {med([x['figures'].get('broker_cpu_us_per_message', 0) for x in rs]):.1f} µs/msg  "
          f"p50 {med([x['latency_ms']['p50_ms'] for x in rs]):.3f}  p99 {med([x['latency_ms']['p99_ms'] for x in rs]):.2f} ms  "
          f"worst second {med([x['figures'].get('worst_second_max_ms', 0) for x in rs]):.1f} ms  {med([x['throughput_per_s'] for x in rs]):,.0f}/s")
PY
