#!/usr/bin/env bash
# Issue 21's table, reproducible: ChatBroker (durability async and sync, native protocol) against mosquitto 2.0 from Debian
# (MQTT 3.1.1 QoS 1, in memory, started by scripts/mosquitto.sh), the same load on each, INTERLEAVED: round 1 runs
# async, sync, mosquitto, round 2 the same again, ... so the machine's noise falls on all three (docs/performance.md,
# "Issue 21"). Two scenarios, each interleaved on its own:
#   paced:       pairs --rate RATE (evenly spaced: one message every 1/RATE s, phase-shifted over the pairs), QoS 1
#   closed loop: pairs --window WINDOW (every pair keeps WINDOW messages in flight)
# ChatBroker's CPU comes from its /metrics (process_cpu_time_seconds_total), mosquitto's from /proc/PID/stat
# (--peer-pid), both over the measured interval only. Stalls (deliveries over STALL_MS) are printed per run by the
# harness, with the broker's GC / thread-pool / RocksDB LOG evidence; see the .log files in $OUT.
#
#   LoadTests/run-paced-compare.sh     ROUNDS=3 RATE=10000 PAIRS=100 BODY=256 DURATION=20 WARMUP=3
#                                      CLOSED_DURATION=10 WINDOW=16 STALL_MS=10 SCENARIOS="paced closed"
#                                      BROKERS="async sync mosquitto" OUT=/tmp/chatbroker-paced-compare
#                                      EXTRA="--broker-set k=v" (ChatBroker runs only)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
rounds="${ROUNDS:-3}" rate="${RATE:-10000}" pairs="${PAIRS:-100}" body="${BODY:-256}" duration="${DURATION:-20}"
warmup="${WARMUP:-3}" closed_duration="${CLOSED_DURATION:-10}" window="${WINDOW:-16}" stall_ms="${STALL_MS:-10}"
# storage.rocksdb_info_log: RocksDB logs its flushes and compactions, which the stall report puts next to each stall.
scenarios="${SCENARIOS:-paced closed}" brokers="${BROKERS:-async sync mosquitto}" extra="${EXTRA:---broker-set storage.rocksdb_info_log=true}"
out="${OUT:-${TMPDIR:-/tmp}/chatbroker-paced-compare}"
mkdir -p "$out"
if [ -z "${NO_BUILD:-}" ]; then
  dotnet build Host -c Release --nologo -v quiet -clp:NoSummary >/dev/null
  dotnet build LoadTests -c Release --nologo -v quiet -clp:NoSummary >/dev/null
fi
load=(dotnet LoadTests/bin/Release/net10.0/chatbroker-load.dll pairs --pairs "$pairs" --body-size "$body" --warmup-s "$warmup" --stall-ms "$stall_ms")

mosquitto=""
if [[ " $brokers " == *" mosquitto "* ]]; then
  mosquitto="$(scripts/mosquitto.sh start --state-dir "$out/mosquitto")"
  trap 'scripts/mosquitto.sh stop --state-dir "$out/mosquitto"' EXIT
fi

run() { # scenario broker round
  local scenario="$1" broker="$2" round="$3" args=()
  if [ "$scenario" = paced ]; then args=(--rate "$rate" --duration "$duration"); else args=(--window "$window" --duration "$closed_duration"); fi
  case "$broker" in
    async|sync) args+=(--durability "$broker"); [ -n "$extra" ] && read -r -a more <<<"$extra" && args+=("${more[@]}") ;;
    mosquitto) args+=(--protocol mqtt --mqtt-topics plain --target "$mosquitto" --peer-pid "$(cat "$out/mosquitto/pid")") ;;
  esac
  local name="$scenario-$broker-$round"
  echo "== round $round: $scenario, $broker (load average $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  echo "${load[*]} ${args[*]}" > "$out/$name.cmd"
  cut -d' ' -f1-3 /proc/loadavg > "$out/$name.load"
  "${load[@]}" "${args[@]}" --json "$out/$name.json" > "$out/$name.log" 2>&1 || true
}

for scenario in $scenarios; do
  for round in $(seq 1 "$rounds"); do
    for broker in $brokers; do
      run "$scenario" "$broker" "$round"
    done
  done
done

python3 - "$out" "$rounds" "$rate" "$pairs" "$body" "$window" "$scenarios" "$brokers" <<'PY'
import json, os, statistics, sys
out, rounds, rate, pairs, body, window, scenarios, brokers = sys.argv[1:9]
rounds = int(rounds)
names = {"async": "ChatBroker async", "sync": "ChatBroker sync", "mosquitto": "mosquitto 2.0 (in memory)"}
brokers = brokers.split()
def load(s, b, r):
    p = f"{out}/{s}-{b}-{r}.json"
    return json.load(open(p)) if os.path.exists(p) else None
def rng(vals, fmt):
    vals = [v for v in vals if v is not None]
    if not vals: return "n/a"
    lo, hi = min(vals), max(vals)
    return fmt(lo) if abs(hi - lo) < 1e-9 else f"{fmt(lo)}–{fmt(hi)}"
def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None
f1 = lambda v: f"{v:.1f}"; f2 = lambda v: f"{v:.2f}"; f0 = lambda v: f"{v:,.0f}"
for s in scenarios.split():
    runs = {b: [load(s, b, r) for r in range(1, rounds + 1)] for b in brokers}
    print()
    if s == "paced":
        print(f"**{int(float(rate)):,} msg/s evenly paced**, {pairs} pairs, {body}-byte bodies, QoS 1, {rounds} interleaved rounds (range over the rounds; quietest = the round with the lowest p99)")
    else:
        print(f"**closed loop**, {pairs} pairs × {window} in flight, {body}-byte bodies, QoS 1, {rounds} interleaved rounds (range over the rounds)")
    print()
    print("| " + " | ".join([""] + [names.get(b, b) for b in brokers]) + " |")
    print("|---" * (len(brokers) + 1) + "|")
    def row(label, cell):
        print("| " + " | ".join([label] + [cell([x for x in runs[b] if x]) for b in brokers]) + " |")
    cpu = lambda rs: rng([x["figures"].get("broker_cpu_us_per_message") for x in rs], f1) + (f" (median {med([x['figures'].get('broker_cpu_us_per_message') for x in rs]):.1f})" if rs and med([x['figures'].get('broker_cpu_us_per_message') for x in rs]) is not None else "")
    if s == "closed":
        row("delivered msg/s", lambda rs: rng([x["throughput_per_s"] for x in rs], f0))
    row("broker CPU per message (µs)", cpu)
    def quiet(rs):
        if not rs: return "n/a"
        q = min(rs, key=lambda x: x["latency_ms"]["p99_ms"])
        return f"{q['latency_ms']['p50_ms']:.2f} / {q['latency_ms']['p99_ms']:.2f} ms"
    row("p50 / p99 (quietest round)", quiet)
    row("p50 range (ms)", lambda rs: rng([x["latency_ms"]["p50_ms"] for x in rs], f2))
    row("p99 range (ms)", lambda rs: rng([x["latency_ms"]["p99_ms"] for x in rs], f2))
    if s == "paced":
        row("worst second's max (ms)", lambda rs: rng([x["figures"].get("worst_second_max_ms") for x in rs], f1))
        row("seconds with max over the stall threshold", lambda rs: rng([x["figures"].get("seconds_over_stall_threshold") for x in rs], f0))
    row("lost / gaps / dups / errors", lambda rs: " ".join(f"{x['lost']}/{x['gaps']}/{x['duplicates']}/{x['errors']}" for x in rs) or "n/a")
    row("harness CPU (cores)", lambda rs: rng([x["figures"].get("harness_cpu_cores") for x in rs], f2))
    loads = []
    for r in range(1, rounds + 1):
        for b in brokers:
            p = f"{out}/{s}-{b}-{r}.load"
            if os.path.exists(p): loads.append(open(p).read().split()[0])
    print()
    print(f"load average at each run's start: {' '.join(loads)}")
cmds = sorted(f for f in os.listdir(out) if f.endswith("-1.cmd"))
print()
print("commands (round 1; the others are the same):")
for c in cmds:
    print("    " + open(f"{out}/{c}").read().strip())
PY
