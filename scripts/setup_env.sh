#!/usr/bin/env bash
# Create or reuse a virtual environment with the pinned CPU stack of one supported Python:
#   source scripts/setup_env.sh                        Python 3.11, megatron-core 0.16.1 -> .venv
#   R1HPC_PYTHON=3.12 source scripts/setup_env.sh      Python 3.12, megatron-core 0.19.x -> .venv-py312
# Each venv has its own lock (requirements/cpu-lock*.txt) and re-installs only when setup.py, its lock
# or csrc/ changed (a stamp in the venv holds their hash). Sets VENV and puts its bin/ first on PATH.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY_VERSION="${R1HPC_PYTHON:-3.11}"
case "$PY_VERSION" in
  3.11) LOCK="$ROOT/requirements/cpu-lock.txt"; DEFAULT_VENV="$ROOT/.venv" ;;
  3.12) LOCK="$ROOT/requirements/cpu-lock-py312.txt"; DEFAULT_VENV="$ROOT/.venv-py312" ;;
  *) echo "[setup_env] R1HPC_PYTHON=$PY_VERSION: supported are 3.11 (megatron-core 0.16.1) and 3.12 (0.19.x)" >&2
     exit 2 ;;
esac
VENV="${R1HPC_VENV:-$DEFAULT_VENV}"

# The interpreter: $PYTHON, else pythonX.Y on PATH, else a pyenv installation of X.Y (whose shim may
# be inactive). Each candidate must really be X.Y.
find_python() {
  local pyenv_root
  pyenv_root="$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")"
  local candidates=("${PYTHON:-}" "python$PY_VERSION" "$pyenv_root"/versions/"$PY_VERSION".*/bin/"python$PY_VERSION")
  local c
  for c in "${candidates[@]}"; do
    [ -n "$c" ] || continue
    if "$c" -c "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$PY_VERSION'.split('.'))))" \
         >/dev/null 2>&1; then
      echo "$c"; return 0
    fi
  done
  echo "[setup_env] no Python $PY_VERSION found (tried: ${candidates[*]}); set PYTHON=/path/to/python$PY_VERSION" >&2
  return 1
}

# csrc/ is in the stamp: the compiled sampler is built by the install, so a changed source rebuilds it
stamp_now="$(cat "$ROOT/setup.py" "$LOCK" "$ROOT"/csrc/* | sha256sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ]; then
  PYTHON_FOUND="$(find_python)"
  echo "[setup_env] creating $VENV with $PYTHON_FOUND"
  "$PYTHON_FOUND" -m venv "$VENV"
fi
if [ "$(cat "$VENV/.r1hpc-stamp" 2>/dev/null)" != "$stamp_now" ]; then
  echo "[setup_env] installing the pinned stack of $(basename "$LOCK") (torch, megatron-core, triton) and building csrc/ ..."
  # torch first (its version comes from the lock), then r1hpc without build isolation so that setup.py
  # sees torch and compiles csrc/
  if ! { "$VENV/bin/pip" install -q --disable-pip-version-check -c "$LOCK" torch setuptools \
         && "$VENV/bin/pip" install -q --disable-pip-version-check --no-build-isolation \
           -c "$LOCK" -e "$ROOT[dev]"; } > "$VENV/pip-install.log" 2>&1; then
    tail -n 40 "$VENV/pip-install.log" >&2
    echo "[setup_env] pip install failed (full log: $VENV/pip-install.log)" >&2
    exit 1
  fi
  "$VENV/bin/python" -c "import r1hpc, torch, megatron.core, r1hpc._cpu_sampling, r1hpc._cpu_attention"
  echo "$stamp_now" > "$VENV/.r1hpc-stamp"
fi
export VENV PATH="$VENV/bin:$PATH"
set +euo pipefail
