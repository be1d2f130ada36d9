#!/usr/bin/env bash
# Create or reuse the project's virtual environment (.venv) with the pinned CPU stack.
# Re-installs only when setup.py or the lock file changed (a stamp holds their hash).
# Usage: source scripts/setup_env.sh   (sets VENV and puts .venv/bin first on PATH)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${R1HPC_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
stamp_now="$(cat "$ROOT/setup.py" "$ROOT/requirements/cpu-lock.txt" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup_env] creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
if [ "$(cat "$VENV/.r1hpc-stamp" 2>/dev/null)" != "$stamp_now" ]; then
  echo "[setup_env] installing pinned CPU stack (torch CPU wheel, megatron-core 0.16.1, triton) ..."
  if ! "$VENV/bin/pip" install -q --disable-pip-version-check -c "$ROOT/requirements/cpu-lock.txt" \
      "torch==2.13.0" -e "$ROOT[dev]" > "$VENV/pip-install.log" 2>&1; then
    tail -n 40 "$VENV/pip-install.log" >&2
    echo "[setup_env] pip install failed (full log: $VENV/pip-install.log)" >&2
    exit 1
  fi
  "$VENV/bin/python" -c "import r1hpc, torch, megatron.core" 
  echo "$stamp_now" > "$VENV/.r1hpc-stamp"
fi
export VENV PATH="$VENV/bin:$PATH"
set +euo pipefail
