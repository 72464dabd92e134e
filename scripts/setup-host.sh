#!/usr/bin/env bash
# Install everything vzpkg and its tests need on a Debian 12 host, idempotently:
# Debian packages (bootstrap tools, runtime, rpm tooling for the rpm fixture tests) and a
# virtualenv in .venv with vzpkg installed in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
  echo "setup-host.sh: run as root (it installs Debian packages)" >&2
  exit 12
fi

packages=(
  # cache building (Debian family)
  mmdebstrap debootstrap debian-archive-keyring gnupg gpgv tar zstd util-linux
  # rpm family and its test fixtures
  rpm dnf createrepo-c
  # runtime
  runc tini busybox-static uidmap iproute2
  # the shipped systemd units are checked with systemd-analyze
  systemd
  # python
  python3 python3-venv python3-pip
  # the security tests build their attack tool (tests/security/attack.c) statically
  gcc libc6-dev
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup-host.sh: installing ${missing[*]}" >&2
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Debian's own python3 (not whatever python3 is first on PATH): it is what a fresh host has.
if [[ ! -x .venv/bin/python ]]; then
  /usr/bin/python3 -m venv .venv
fi
# Editable in compat mode: a plain path entry in a .pth file. The default mode imports an
# import-hook module at every interpreter start (~8 ms on each vzctl command).
.venv/bin/python -m pip install -q --disable-pip-version-check \
  --config-settings editable_mode=compat -e '.[test]'
# Bytecode now, as an installed package has it: with PYTHONDONTWRITEBYTECODE set (or a
# read-only checkout) every command would otherwise compile vzpkg again (~20 ms each).
# Python still checks each .pyc against its source, so edits never run stale code.
.venv/bin/python -m compileall -q vzpkg
echo "setup-host.sh: ready; the tools are in $(pwd)/.venv/bin" >&2
