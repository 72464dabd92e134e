#!/usr/bin/env bash
# The whole test suite: lint, types, unit tests and (as root) integration tests with real tools.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -x .venv/bin/pytest ]]; then
  echo "run-tests.sh: no .venv: run 'bash scripts/setup-host.sh' first" >&2
  exit 1
fi
export PATH="$PWD/.venv/bin:$PATH"
echo "== ruff" >&2
ruff check vzpkg tests bench
ruff format --check vzpkg tests bench
echo "== mypy" >&2
mypy
echo "== pytest" >&2
exec pytest -p no:cacheprovider "$@"
