#!/usr/bin/env bash
# The one-call GPU check for a bare lent GPU machine (Python 3.12, CUDA torch, triton, nvcc,
# transformers; no network, no megatron-core, no Transformer Engine). docs/kernels.md.
#   bash scripts/gpu_kit.sh prepare [--dry-run]     here: the cp312 wheels r1hpc needs and the image
#                                                   lacks -> .gpu_kit/wheels (git-ignored), < 60 MiB
#   bash scripts/gpu_kit.sh run OUT_DIR [--dry-run] there: install the wheels into a target dir, build
#                                                   the CUDA sampler, run benchmarks/gpu_check.py --quick
#                                                   and the @gpu tests; JSON results under OUT_DIR
# --dry-run prints the plan (and checks it) without downloading, installing or needing CUDA.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KIT="$ROOT/.gpu_kit"
WHEELS="$KIT/wheels"
LIMIT_MIB=60
LOCK="$ROOT/requirements/cpu-lock-py312.txt"
# what the image lacks, at the versions of the Python 3.12 lock
NEEDED=(megatron-core math-verify latex2sympy2_extended antlr4-python3-runtime submitit pytest pluggy iniconfig pygments)

pins() {
  local name pin
  for name in "${NEEDED[@]}"; do
    pin="$(grep -i "^${name}==" "$LOCK" || true)"
    [ -n "$pin" ] || { echo "[gpu_kit] $name is not pinned in $LOCK" >&2; return 1; }
    echo "$pin"
  done
}

prepare() {
  local dry="${1:-}"
  mapfile -t specs < <(pins)
  local cmd=(python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
             --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d "$WHEELS" "${specs[@]}")
  echo "[gpu_kit] prepare: ${specs[*]}"
  if [ "$dry" = "--dry-run" ]; then
    echo "[gpu_kit] would run: ${cmd[*]}"
    return 0
  fi
  rm -rf "$WHEELS" && mkdir -p "$WHEELS"
  "${cmd[@]}"
  local bytes
  bytes="$(du -cb "$WHEELS"/*.whl | tail -1 | cut -f1)"
  echo "[gpu_kit] $(ls "$WHEELS" | wc -l) wheels, $((bytes / 1048576)) MiB in $WHEELS"
  if [ "$bytes" -ge $((LIMIT_MIB * 1048576)) ]; then
    echo "[gpu_kit] the wheels exceed ${LIMIT_MIB} MiB: they cannot travel with a device call" >&2
    return 1
  fi
}

run() {
  local out="${1:?usage: gpu_kit.sh run OUT_DIR [--dry-run]}" dry="${2:-}"
  local site="$KIT/site"
  local steps=(
    "python3 -m pip install --no-deps --no-index --target $site $WHEELS/*.whl"
    "python3 setup.py build_ext --inplace"
    "python3 benchmarks/gpu_check.py --quick --out $out/gpu_check.json"
    "python3 -m pytest -m gpu -q -p no:cacheprovider --junitxml=$out/gpu_tests.xml"
  )
  if [ "$dry" = "--dry-run" ]; then
    local missing=0 name
    for name in "${NEEDED[@]}"; do
      compgen -G "$WHEELS/$(echo "${name}" | tr '-' '_')-*.whl" >/dev/null || { echo "[gpu_kit] no wheel of $name yet (run prepare)"; missing=1; }
    done
    printf '[gpu_kit] would run: %s\n' "${steps[@]}"
    echo "[gpu_kit] FP8: not run: Transformer Engine unavailable"
    [ -f "$ROOT/benchmarks/gpu_check.py" ] && [ -f "$ROOT/setup.py" ]
    return $missing
  fi
  mkdir -p "$out"
  cd "$ROOT"
  export PYTHONPATH="$site:$ROOT${PYTHONPATH:+:$PYTHONPATH}" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
  local rc=0 i=0 status=()
  for step in "${steps[@]}"; do
    i=$((i + 1))
    echo "[gpu_kit] step $i: $step"
    if bash -c "$step" > "$out/step$i.log" 2>&1; then status+=("\"$step\": 0"); else status+=("\"$step\": $?"); rc=1; fi
  done
  { echo "{"; printf '  %s,\n' "${status[@]}"; echo '  "fp8": "not run: Transformer Engine unavailable"'; echo "}"; } > "$out/kit.json"
  cat "$out/kit.json"
  return $rc
}

case "${1:-}" in
  prepare) prepare "${2:-}" ;;
  run) shift; run "$@" ;;
  *) echo "usage: bash scripts/gpu_kit.sh prepare [--dry-run] | run OUT_DIR [--dry-run]" >&2; exit 2 ;;
esac
