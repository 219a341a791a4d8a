#!/usr/bin/env bash
# Runs the JavaScript client's tests (node's test runner) against a real broker started by the tests.
# Installs the node dependencies (npm ci) when node_modules is missing. The broker command is
# CHATBROKER_CMD when set (e.g. "dotnet /path/chatbroker.dll"); otherwise Host (the broker executable) is built
# in Release and run from Host/bin/Release/net10.0. Ends with node's "# pass N" / "# fail N" lines.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  # Test-only tools come from apt, like etcd (scripts/ensure-test-deps.sh). Debian 12's nodejs is 18.
  if command -v apt-get >/dev/null && [[ "$(id -u)" -eq 0 ]]; then
    echo "clients/js: node/npm missing; installing Debian's nodejs and npm" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq nodejs npm >&2 || { apt-get update -qq >&2 && apt-get install -y -qq nodejs npm >&2; }
  else
    echo "clients/js: node and npm are needed for the JavaScript client tests (Node 18 or later, developed on 20):" >&2
    echo "    sudo apt-get install nodejs npm" >&2
    exit 1
  fi
fi
if (( $(node -p 'process.versions.node.split(".")[0]') < 18 )); then
  echo "clients/js: Node 18 or later is needed (node --test), found $(node --version)" >&2
  exit 1
fi
cd "$here"
if [[ ! -d node_modules ]]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
if [[ -z "${CHATBROKER_CMD:-}" ]]; then
  "$root/scripts/ensure-deps.sh"
  dotnet build "$root/Host/ChatBroker.Host.csproj" -c Release --nologo -v quiet -clp:NoSummary >&2
  export CHATBROKER_CMD="dotnet $root/Host/bin/Release/net10.0/chatbroker.dll"
fi
exec node --test --test-reporter=tap test/*.test.js
