# rad_megatron for GPU clusters (A100 = sm_80, H100/H200 = sm_90).
#
#   docker build -t rad_megatron .
#   docker run --gpus all --ipc=host rad_megatron verify --tokens 32
#   docker run --gpus all --ipc=host --entrypoint launch/run.sh rad_megatron distill configs/demo_smollm2.yaml
#
# Base: NGC PyTorch 25.09 (Python 3.12, PyTorch 2.9, CUDA 13.0, NCCL, Transformer Engine), the image Megatron-LM
# pins for its LTS CI (docker/.ngc_version.lts). Its pip constraint file (/etc/pip/constraint.txt) keeps every
# preinstalled package, torch first, at the version NVIDIA built and tested; nothing below replaces them.
FROM nvcr.io/nvidia/pytorch:25.09-py3

ARG MCORE_VERSION=0.19.2
ARG MAMBA_VERSION=2.3.2.post1
ARG CAUSAL_CONV1D_VERSION=1.7.0
# used only when the base image lacks them
ARG TE_VERSION=2.8.0
ARG APEX_REF=master

# the kernels are compiled here, for these GPUs only (mamba-ssm and causal-conv1d add their own -gencode list, which
# covers both); FORCE_BUILD skips their prebuilt-wheel download, which would not match this torch build
ENV TORCH_CUDA_ARCH_LIST="8.0;9.0" \
    MAMBA_FORCE_BUILD=TRUE \
    CAUSAL_CONV1D_FORCE_BUILD=TRUE \
    MAX_JOBS=8 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN pip install "megatron-core==${MCORE_VERSION}"

# --no-build-isolation: build against the image's torch and CUDA instead of a freshly downloaded torch
RUN pip install --no-build-isolation "causal-conv1d==${CAUSAL_CONV1D_VERSION}" \
 && pip install --no-build-isolation "mamba-ssm==${MAMBA_VERSION}"

RUN python -c "import transformer_engine.pytorch" 2>/dev/null \
 || pip install --no-build-isolation "transformer_engine[pytorch]==${TE_VERSION}"

RUN python -c "import apex" 2>/dev/null \
 || pip install --no-build-isolation --config-settings "--build-option=--cpp_ext" \
      --config-settings "--build-option=--cuda_ext" "git+https://github.com/NVIDIA/apex.git@${APEX_REF}"

# rad_megatron last, so code changes rebuild only this layer; an editable install keeps launch/ and configs/ usable
WORKDIR /opt/rad_megatron
COPY . .
RUN pip install --no-build-isolation -e . \
 && python -c "import importlib.util as u; missing = [m for m in ('megatron.core', 'mamba_ssm', 'causal_conv1d', \
'transformer_engine', 'apex', 'rad_megatron') if u.find_spec(m) is None]; assert not missing, missing"

ENTRYPOINT ["rad"]
CMD ["--help"]
