#!/usr/bin/env bash
# Runs the whole test suite: checks for the .NET SDK, installs the test-only tools (etcd and python3-grpcio
# for the cluster tests, Debian's headless Chromium for the browser tests), builds the solution in Release
# and runs every test project. Prints one closing line "tests: N passed, N failed, N skipped".
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$root"
scripts/ensure-deps.sh
scripts/ensure-test-deps.sh
dotnet build ChatBroker.sln -c Release --nologo -v quiet -clp:NoSummary
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
# Every project but the browser tests, which run below with loopback-only networking.
dotnet test ChatBroker.sln -c Release --no-build --nologo --filter "FullyQualifiedName!~ChatBroker.Web.Tests." 2>&1 | tee "$log" || status=$?
# Browser tests (tests/ChatBroker.Web.Tests: Playwright driving Debian's Chromium) in a network namespace with only
# lo, so nothing the browser does can leave the machine (scripts/loopback-only.sh).
scripts/loopback-only.sh dotnet test tests/ChatBroker.Web.Tests -c Release --no-build --nologo 2>&1 | tee -a "$log" || status=$?
CHATBROKER_CMD="dotnet $root/Host/bin/Release/net10.0/chatbroker.dll" clients/js/test.sh 2>&1 | tee -a "$log" || status=$?   # JavaScript client; node prints "# pass N", "# fail N", ...
# Sum the per-project summaries ("Passed!  - Failed: 0, Passed: 12, Skipped: 0, Total: 12, ...").
awk '/(Passed|Failed)! +- Failed: /{
       for (i = 1; i <= NF; i++) { gsub(",", "", $(i+1));
         if ($i == "Failed:") f += $(i+1); if ($i == "Passed:") p += $(i+1); if ($i == "Skipped:") s += $(i+1) } }
     /^# (pass|fail|cancelled|skipped) [0-9]+$/ { if ($2 == "pass") p += $3; else if ($2 == "skipped") s += $3; else f += $3 }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit $status
