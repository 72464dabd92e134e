#!/usr/bin/env bash
# The main job: set up this host, build real Debian 12 caches from the host's Debian mirror,
# then create and start VPS 101 from one and show its processes, as in OpenVZ's slides.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-host.sh
export PATH="$PWD/.venv/bin:$PATH"

vzpkgcache debian-12-x86_64-minimal debian-12-x86_64-default
vzpkgls -c -l

# Idempotent: an existing VPS 101 is reused, a running one left running.
if vzctl status 101 | grep -q deleted; then
  vzctl create 101 --ostemplate debian-12 --hostname ct101
fi
if ! vzctl status 101 | grep -q running; then
  vzctl start 101
fi
sleep 2  # let init start its services
vzctl exec 101 ps ax
vzlist -a
cat >&2 <<'TXT'

VPS 101 is running. Next:
  vzctl enter 101        # a shell inside it (exit to leave)
  vzctl stop 101         # shut it down
  vzctl destroy 101      # remove it
TXT
