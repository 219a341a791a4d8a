#!/usr/bin/env bash
# One run, three brokers, the same pairs scenario (docs/performance.md "MQTT side by side"):
#   1. ChatBroker, native protocol (pairs),
#   2. ChatBroker's MQTT listener, chat topics: every message a durable SEND before its PUBACK (pairs --protocol mqtt),
#   3. mosquitto 2.0 from Debian, plain topics, its defaults (in memory), started on a loopback port by scripts/mosquitto.sh
#      (pairs --protocol mqtt --target ...).
# then `fanout` over MQTT (one topic, FANOUT_MEMBERS subscribers) on ChatBroker's general topic space and on mosquitto.
# Each broker runs alone in turn on this machine; the harness is the same process type with the same options. Prints
# a markdown table (throughput, latency percentiles, ratio to mosquitto); the JSON results stay in $OUT.
#
# ROUNDS > 1 repeats the pairs sequence (native, MQTT, mosquitto; native, MQTT, mosquitto; ...) interleaved, so a
# change in the machine's speed shows as a spread between rounds instead of a bias against one broker; one table row
# per broker and round, and the ratio to mosquitto of the same round.
#
#   LoadTests/run-mqtt-compare.sh            ROUNDS=1 PAIRS=100 WINDOW=16 BODY=256 DURATION=20 WARMUP=3 FANOUT_MEMBERS=200 OUT=/tmp/chatbroker-mqtt-compare
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
rounds="${ROUNDS:-1}" pairs="${PAIRS:-100}" members="${FANOUT_MEMBERS:-200}" window="${WINDOW:-16}" body="${BODY:-256}" duration="${DURATION:-20}" warmup="${WARMUP:-3}"
out="${OUT:-${TMPDIR:-/tmp}/chatbroker-mqtt-compare}"
mkdir -p "$out"
dotnet build Host -c Release --nologo -v quiet -clp:NoSummary >/dev/null
dotnet build LoadTests -c Release --nologo -v quiet -clp:NoSummary >/dev/null
load=(dotnet LoadTests/bin/Release/net10.0/chatbroker-load.dll pairs --pairs "$pairs" --window "$window" --body-size "$body" --duration "$duration" --warmup-s "$warmup")

mosquitto="$(scripts/mosquitto.sh start --state-dir "$out/mosquitto")"
trap 'scripts/mosquitto.sh stop --state-dir "$out/mosquitto"' EXIT

for round in $(seq 1 "$rounds"); do
  echo "== round $round: ChatBroker native" >&2
  "${load[@]}" --json "$out/native-$round.json" > "$out/native-$round.log" 2>&1 || true
  echo "== round $round: ChatBroker MQTT (chat topics, durable)" >&2
  "${load[@]}" --protocol mqtt --mqtt-topics chat --json "$out/mqtt-$round.json" > "$out/mqtt-$round.log" 2>&1 || true
  echo "== round $round: mosquitto $mosquitto (plain topics)" >&2
  "${load[@]}" --protocol mqtt --mqtt-topics plain --target "$mosquitto" --json "$out/mosquitto-$round.json" > "$out/mosquitto-$round.log" 2>&1 || true
done

fanout=(dotnet LoadTests/bin/Release/net10.0/chatbroker-load.dll fanout --protocol mqtt --members "$members" --window "$window" --body-size "$body" --duration "$duration" --warmup-s "$warmup")
echo "== fanout: ChatBroker MQTT (general topic space)" >&2
"${fanout[@]}" --json "$out/fanout-chatbroker.json" > "$out/fanout-chatbroker.log" 2>&1 || true
echo "== fanout: mosquitto" >&2
"${fanout[@]}" --target "$mosquitto" --json "$out/fanout-mosquitto.json" > "$out/fanout-mosquitto.log" 2>&1 || true

python3 - "$out" "${load[*]}" "$mosquitto" "${fanout[*]}" "$rounds" <<'PY'
import json, sys
out, command, mosquitto, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[5])
rows = [("ChatBroker native", "native"), ("ChatBroker MQTT (chat topics, QoS 1, durable)", "mqtt"), ("mosquitto 2.0.11 (QoS 1, in memory)", "mosquitto")]
print(f"command: `{command}` (+ `--protocol mqtt --mqtt-topics chat`; + `--protocol mqtt --mqtt-topics plain --target {mosquitto}`)")
print()
print("| round | broker | delivered msg/s | vs mosquitto | p50 ms | p99 ms | p99.9 ms | max ms | lost/gaps/dups | broker CPU µs/msg |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
for rnd in range(1, rounds + 1):
    res = {k: json.load(open(f"{out}/{k}-{rnd}.json")) for _, k in rows}
    base = res["mosquitto"]["throughput_per_s"] or 1
    for name, k in rows:
        r = res[k]
        l = r["latency_ms"]
        cpu = r["figures"].get("broker_cpu_us_per_message", "n/a")
        print(f"| {rnd} | {name} | {r['throughput_per_s']:,.0f} | {r['throughput_per_s'] / base:.2f}x | {l['p50_ms']:.2f} | {l['p99_ms']:.2f} | {l['p999_ms']:.2f} | {l['max_ms']:.2f} | {r['lost']}/{r['gaps']}/{r['duplicates']} | {cpu} |")
print()
print(f"fanout: `{sys.argv[4]}` (+ `--target {mosquitto}`)")
print()
print("| broker | deliveries/s | vs mosquitto | p50 ms | p99 ms | p99.9 ms | max ms | gaps/dups |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
fan = {k: json.load(open(f"{out}/fanout-{k}.json")) for k in ("chatbroker", "mosquitto")}
fbase = fan["mosquitto"]["throughput_per_s"] or 1
for name, k in (("ChatBroker MQTT (general topic space, QoS 1)", "chatbroker"), ("mosquitto 2.0.11 (QoS 1)", "mosquitto")):
    r = fan[k]
    l = r["latency_ms"]
    print(f"| {name} | {r['throughput_per_s']:,.0f} | {r['throughput_per_s'] / fbase:.2f}x | {l['p50_ms']:.2f} | {l['p99_ms']:.2f} | {l['p999_ms']:.2f} | {l['max_ms']:.2f} | {r['gaps']}/{r['duplicates']} |")
PY
