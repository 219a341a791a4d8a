#!/usr/bin/env bash
# Builds the broker as one self-contained file for linux-x64: `chatbroker`, with the .NET runtime, ASP.NET
# Core (the admin endpoint) and RocksDB's native library inside. Nothing else has to be installed on the
# target (glibc >= 2.34, e.g. Debian 12). Usage:
#   scripts/publish.sh [OUTPUT_DIR]        # default: artifacts/publish/linux-x64
# Prints the output directory and the file's size. Extra `dotnet publish` arguments can follow the
# directory, e.g. `scripts/publish.sh out -p:EnableCompressionInSingleFile=true`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/artifacts/publish/linux-x64}"
shift || true
"$root/scripts/ensure-deps.sh"

mkdir -p "$out"
out="$(cd "$out" && pwd)"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT

# IncludeNativeLibrariesForSelfExtract (set in Host/ChatBroker.Host.csproj) puts native libraries, RocksDB's
# among them, into the bundle; the runtime extracts them once, on first start, to
# $DOTNET_BUNDLE_EXTRACT_BASE_DIR (default ~/.net) and loads them from there.
if ! DOTNET_NOLOGO=1 DOTNET_CLI_TELEMETRY_OPTOUT=1 dotnet publish "$root/Host/ChatBroker.Host.csproj" \
    -c Release -r linux-x64 --self-contained -p:PublishSingleFile=true \
    --nologo -v quiet -clp:NoSummary -nodeReuse:false -o "$out" "$@" >"$log" 2>&1; then
  cat "$log" >&2
  echo "publish: dotnet publish failed (output above)" >&2
  exit 1
fi

binary="$out/chatbroker"
if [ ! -x "$binary" ]; then
  echo "publish: $binary was not produced" >&2
  exit 1
fi
bytes=$(stat -c %s "$binary")
echo "$out"
echo "chatbroker: $bytes bytes ($(( (bytes + 524288) / 1048576 )) MiB)"
others=$(find "$out" -maxdepth 1 -type f ! -name chatbroker ! -name '*.pdb' ! -name '*.dbg' -printf '%f ')
if [ -n "$others" ]; then
  # A file the bundle left out would have to be copied with the binary: say so rather than ship it broken.
  echo "publish: besides the binary: $others" >&2
fi
