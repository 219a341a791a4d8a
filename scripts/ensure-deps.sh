#!/usr/bin/env bash
# Makes sure what ChatBroker needs beyond the .NET 10 SDK is installed: RocksDB's shared library.
# On Debian/Ubuntu as root (or with passwordless sudo) it installs it with apt-get; anywhere else it says
# what to install by hand and exits non-zero. Quiet when everything is already there.
set -euo pipefail

have_rocksdb() {
  ldconfig -p 2>/dev/null | grep -qE 'librocksdb\.so(\.[0-9]+)*( |$)' && return 0
  compgen -G '/usr/lib/*/librocksdb.so*' >/dev/null || compgen -G '/usr/lib/librocksdb.so*' >/dev/null \
    || compgen -G '/usr/local/lib/librocksdb.so*' >/dev/null
}

if ! command -v dotnet >/dev/null 2>&1; then
  echo "ChatBroker needs the .NET 10 SDK (dotnet) on PATH: https://dot.net" >&2
  exit 1
fi

if have_rocksdb; then
  exit 0
fi

echo "RocksDB's shared library (librocksdb) is missing; installing it." >&2
if ! command -v apt-get >/dev/null 2>&1; then
  echo "This is not a Debian-like system (no apt-get). Install RocksDB 7.x or later's shared library" >&2
  echo "(librocksdb.so) with your package manager, then run this again." >&2
  exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "Not running as root and sudo needs a password. Install it yourself with:" >&2
    echo "    sudo apt-get update && sudo apt-get install -y librocksdb7.8   # Debian 12" >&2
    echo "(on other releases: apt-cache search --names-only '^librocksdb[0-9]')" >&2
    exit 1
  fi
fi

# The runtime package's name carries the library's version (librocksdb7.8 on Debian 12); find it.
pick_package() {
  apt-cache search --names-only '^librocksdb[0-9][0-9.]*$' 2>/dev/null | awk '{print $1}' | sort -V | tail -n 1
}
pkg=$(pick_package)
if [ -z "$pkg" ]; then
  $SUDO apt-get update -qq >&2
  pkg=$(pick_package)
fi
if [ -z "$pkg" ]; then
  echo "apt knows no librocksdb package. Install RocksDB's shared library by hand, then run this again." >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y -qq "$pkg" >&2; then
  # A stale package list is the usual cause: refresh once and retry.
  $SUDO apt-get update -qq >&2
  $SUDO apt-get install -y -qq "$pkg" >&2
fi

if ! have_rocksdb; then
  echo "Installed $pkg but librocksdb.so is still not found." >&2
  exit 1
fi
echo "Installed $pkg." >&2
