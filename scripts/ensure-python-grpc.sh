#!/usr/bin/env bash
# Makes sure Debian's python3 has grpcio and protobuf: the mesh test calls the mesh service from a
# standard gRPC client (python grpcio) to show that it speaks plain gRPC. Installs python3-grpcio and
# python3-protobuf with apt-get when missing (root or passwordless sudo); otherwise says what to
# install and exits non-zero. Quiet when everything is already there.
set -euo pipefail

python=/usr/bin/python3
have_python_grpc() {
  [ -x "$python" ] && "$python" -c 'import grpc, google.protobuf' >/dev/null 2>&1
}

if have_python_grpc; then
  exit 0
fi

packages="python3 python3-grpcio python3-protobuf"
echo "Python's grpcio/protobuf (for the mesh test's standard gRPC client) are missing; installing $packages." >&2
if ! command -v apt-get >/dev/null 2>&1; then
  echo "This is not a Debian-like system (no apt-get). Install python3 with the grpcio and protobuf modules" >&2
  echo "as $python, then run this again." >&2
  exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "Not running as root and sudo needs a password. Install them yourself with:" >&2
    echo "    sudo apt-get update && sudo apt-get install -y $packages" >&2
    exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
# Another installer (a parallel test script, unattended upgrades) may hold the dpkg lock for a while.
apt_get() { $SUDO apt-get -o DPkg::Lock::Timeout=300 "$@"; }
# shellcheck disable=SC2086
if ! apt_get install -y -qq $packages >&2; then
  # A stale package list is the usual cause: refresh once and retry.
  apt_get update -qq >&2
  # shellcheck disable=SC2086
  apt_get install -y -qq $packages >&2
fi

if ! have_python_grpc; then
  echo "Installed $packages but '$python -c \"import grpc, google.protobuf\"' still fails." >&2
  exit 1
fi
echo "Installed $packages." >&2
