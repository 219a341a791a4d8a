#!/usr/bin/env bash
# Runs every load scenario of docs/performance.md ("Load tests") once, each bounded to well under a minute,
# writing <scenario>.json and <scenario>.html per run into OUT (default: a new directory under /tmp).
# Usage: LoadTests/run-report.sh [OUT]
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-/tmp/chatbroker-load-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$out"
# The harness starts the broker from Host's build output (it does not reference Host): build both.
dotnet build -c Release Host -v quiet -nologo >/dev/null || exit 1
dotnet build -c Release LoadTests -v quiet -nologo >/dev/null || exit 1
load() { dotnet LoadTests/bin/Release/net10.0/chatbroker-load.dll "$@"; }
status=0
run() {
  local name="$1"; shift
  echo "=== $name: $*"
  load "$@" --json "$out/$name.json" --html "$out/$name.html" > "$out/$name.txt" 2>&1 || status=1
  grep -E '^(messages|connections|connect/|latency|target|RESULT|sent )' "$out/$name.txt"
}
run pairs-sync         pairs --pairs 100 --window 4 --body-size 256 --duration 20 --durability sync
run pairs-async        pairs --pairs 100 --window 4 --body-size 256 --duration 20 --durability async
run pairs-rate-async   pairs --pairs 100 --rate 10000 --body-size 256 --duration 20 --durability async
run pairs-rate-sync    pairs --pairs 100 --rate 10000 --body-size 256 --duration 20 --durability sync
run connections        connections --connections 15000 --processes 2 --sources 16
run fanout-sync        fanout --members 1024 --window 16 --duration 10 --durability sync
run resume-sync        resume --count 200000 --body-size 256 --durability sync
run resume-async       resume --count 200000 --body-size 256 --durability async
run churn              churn --rate 2000 --duration 20 --sources 16
echo "results in $out"
exit $status
