#!/usr/bin/env bash
# GPU readiness check (bench/gpu_check.py): one run, under 8 minutes on one H100/H200, results in $OUT
# (default ./gpu_check_out): gpu_check.json, gpu_check.md and the logs of the parts that run commands.
#
#   bench/gpu_wheels.sh            # once, on a machine with PyPI: what the device lacks, into .whl/
#   bench/gpu_check.sh             # on the GPU machine (installs .whl/ first, into /tmp/site)
#   bench/gpu_check.sh --dry-run   # anywhere: the same code on CPU at tiny shapes (CI runs this)
#
# Extra arguments go to bench/gpu_check.py (--parts, --budget-s, --steps). PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export OUT="${OUT:-./gpu_check_out}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [[ " $* " != *" --dry-run "* ]] && compgen -G ".whl/*" >/dev/null; then
  SITE=/tmp/site
  # wheels (megatron-core cp312, datasets and its pure-python deps) as they are; no index, no dependency resolution
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
  # mamba-ssm from its sdist without the CUDA extension: its Triton SSD kernels are what the check uses
  # (gpu_check.py imports them without the package __init__, which needs the extension)
  MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE "$PY" -m pip install -q --no-index --no-deps \
    --no-build-isolation --no-compile --no-cache-dir --target "$SITE" .whl/mamba_ssm-*.tar.gz
  # causal-conv1d is CUDA-only: its kernels compile for 6+ GPU architectures (minutes), so only on request
  if [[ "${GPU_CHECK_BUILD_CONV1D:-0}" == 1 ]]; then
    CAUSAL_CONV1D_FORCE_BUILD=TRUE MAX_JOBS="${MAX_JOBS:-16}" "$PY" -m pip install -q --no-index --no-deps \
      --no-build-isolation --no-cache-dir --target "$SITE" .whl/causal_conv1d-*.tar.gz
  fi
  export PYTHONPATH="$PYTHONPATH:$SITE"
fi
exec "$PY" bench/gpu_check.py --out "$OUT" "$@"
