#!/usr/bin/env bash
# Runs a command with loopback-only networking: in a new network namespace whose only interface is lo
# (127.0.0.1 and ::1), so nothing it starts (a browser looking up update servers, say) can reach beyond
# this machine. Used by test.sh for the browser tests (tests/ChatBroker.Web.Tests).
#   scripts/loopback-only.sh dotnet test tests/ChatBroker.Web.Tests -c Release --no-build
# As root: unshare -n. Otherwise a user namespace as well (unshare -rn), where the kernel allows it.
set -euo pipefail
if [ "$#" -eq 0 ]; then
  echo "usage: $0 COMMAND [ARGS...]" >&2
  exit 2
fi
if ! command -v unshare >/dev/null 2>&1 || ! command -v ip >/dev/null 2>&1; then
  echo "loopback-only.sh needs unshare (util-linux) and ip (iproute2): apt-get install util-linux iproute2" >&2
  exit 1
fi
flags=(-n)
[ "$(id -u)" -eq 0 ] || flags=(-r -n)
if ! unshare "${flags[@]}" true 2>/dev/null; then
  echo "loopback-only.sh: cannot create a network namespace (unshare ${flags[*]} failed): run as root," >&2
  echo "or enable unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1)." >&2
  exit 1
fi
# The inner shell brings lo up, checks that nothing but lo is there, then becomes the command.
exec unshare "${flags[@]}" -- bash -c '
  set -euo pipefail
  ip link set lo up
  if ip -o link show | grep -qv ": lo:"; then
    echo "loopback-only.sh: the new namespace has interfaces besides lo" >&2
    exit 1
  fi
  exec "$@"
' loopback-only "$@"
