#!/usr/bin/env bash
# Makes sure what the test suite needs beyond scripts/ensure-deps.sh is installed: etcd (Debian's
# etcd-server) for the cluster tests. On Debian/Ubuntu as root (or with passwordless sudo) it installs it
# with apt-get; anywhere else it says what to install and exits non-zero. Quiet when all is there.
set -euo pipefail

if command -v etcd >/dev/null 2>&1; then
  exit 0
fi

echo "etcd is missing (the cluster tests start their own); installing Debian's etcd-server." >&2
if ! command -v apt-get >/dev/null 2>&1; then
  echo "This is not a Debian-like system (no apt-get). Install etcd 3.4 or later so that 'etcd' is on PATH," >&2
  echo "then run this again." >&2
  exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "Not running as root and sudo needs a password. Install it yourself with:" >&2
    echo "    sudo apt-get update && sudo apt-get install -y etcd-server" >&2
    exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y -qq etcd-server >&2; then
  # A stale package list is the usual cause: refresh once and retry.
  $SUDO apt-get update -qq >&2
  $SUDO apt-get install -y -qq etcd-server >&2
fi

# Where systemd runs, the package enables and starts a system etcd on 2379: the tests do not use it, so
# stop it rather than leave a service running that nobody asked for.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  $SUDO systemctl disable --now etcd.service >/dev/null 2>&1 || true
fi

if ! command -v etcd >/dev/null 2>&1; then
  echo "Installed etcd-server but 'etcd' is still not on PATH." >&2
  exit 1
fi
echo "Installed etcd-server ($(etcd --version | head -n 1))." >&2
