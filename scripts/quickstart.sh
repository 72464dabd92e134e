#!/usr/bin/env bash
# The main job: set up this host, build a real Debian 12 cache from the host's Debian mirror,
# and list what is cached.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-host.sh
export PATH="$PWD/.venv/bin:$PATH"

vzpkgls
vzpkgcache debian-12-x86_64-minimal
vzpkgls -c -l
