#!/usr/bin/env bash
# The main job on a fresh machine: venv, then the tiny run on the CPU.
# Extra arguments are config overrides (key.sub=value).
set -eo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
r1hpc info
exec r1hpc train configs/tiny_r1zero.yaml "$@"
