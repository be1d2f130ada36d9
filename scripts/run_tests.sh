#!/usr/bin/env bash
# The whole test suite on a fresh machine: system packages, venv, then pytest.
# Extra arguments go to pytest (e.g. scripts/run_tests.sh tests/rewards -x).
set -eo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/install_system_deps.sh"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
exec python -m pytest "$@"
