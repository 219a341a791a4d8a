#!/usr/bin/env bash
# Makes sure what ChatBroker needs to build and run is there: only the .NET 10 SDK. RocksDB's native
# library comes with the build from the RocksDB NuGet package (Storage/ChatBroker.Storage.csproj).
set -euo pipefail

if ! command -v dotnet >/dev/null 2>&1; then
  echo "ChatBroker needs the .NET 10 SDK (dotnet) on PATH: https://dot.net" >&2
  exit 1
fi
