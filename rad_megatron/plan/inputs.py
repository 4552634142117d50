"""The allocation and hardware `rad plan` is given on its command line, typed and bounded like every config section
(rad_megatron.validation), so a bad flag is one line naming it."""

from __future__ import annotations

from dataclasses import dataclass, field

from rad_megatron.validation import rules


@dataclass
class PlanInputs:
    """What `rad plan` sizes a run config against."""

    nodes: int = field(default=1, metadata=rules(ge=1))
    """Nodes in the allocation."""
    gpus_per_node: int = field(default=8, metadata=rules(ge=1))
    """GPUs per node."""
    gpu_mem_gib: float = field(default=80.0, metadata=rules(gt=0))
    """Memory of one GPU (GiB)."""
    reserve_gib: float = field(default=2.0, metadata=rules(ge=0))
    """Per-GPU memory not modelled: CUDA context, NCCL buffers, allocator slack (GiB)."""
    mfu: float = field(default=0.4, metadata=rules(gt=0, le=1))
    """Model FLOPs utilisation assumed for the step time."""
    peak_tflops: float = field(default=989.0, metadata=rules(gt=0))
    """Peak dense TFLOP/s per GPU."""
    kernels: str = field(default="gpu", metadata=rules(choices=("gpu", "cpu")))
    """gpu: Transformer Engine, flash attention, mamba_ssm, fused Adam; cpu: rad_megatron's torch paths."""
