#!/usr/bin/env bash
# Download, on a machine that reaches PyPI, what the GPU machine lacks for bench/gpu_check.sh into the git-ignored
# .whl/ (each file well under 64 MiB; 3.5 MiB in all): megatron-core 0.19.2 (cp312 manylinux wheel), datasets 5.2.0
# with dill and multiprocess (pure python), and the mamba-ssm and causal-conv1d sdists (built there by gpu_check.sh).
# The device already has torch, triton, transformers, einops, numpy, pyarrow, pandas, xxhash, fsspec, safetensors.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl megatron-core==0.19.2 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
# sdists: pip prepares their metadata, which runs setup.py (it imports torch: use a Python that has it); without
# these variables it would try to build CUDA code
MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE CAUSAL_CONV1D_FORCE_BUILD=TRUE \
  "$PY" -m pip download -q --no-deps --no-binary=:all: --no-build-isolation -d .whl \
  mamba-ssm==2.3.2.post1 causal-conv1d==1.7.0
ls -l .whl
