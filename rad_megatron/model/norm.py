"""The local spec's RMSNorm: statistics in fp32 at any parameter dtype, and ready for Megatron's sequence parallelism.

Megatron-Core's `WrappedTorchNorm` (what its local spec uses without Apex) asserts `not config.sequence_parallel`, and
its TE-only `HybridStack.final_norm` needs Transformer Engine. This norm takes the place of both:
  * bf16: the input is upcast, normalised and scaled by the weight in fp32, and cast back (as TE's RMSNorm does), so
    a bf16 model's norm statistics never round in bf16;
  * sequence parallelism: under SP each TP rank normalises its own slice of the sequence with a full, replicated
    weight, so each rank's weight gradient covers only its tokens. The weight is marked `sequence_parallel`, and
    Megatron's `finalize_model_grads` then all-reduces its gradient over the TP group (as TE's and Apex's norms do).
The state-dict key is `weight`, as with torch's RMSNorm, so checkpoints are unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rad_megatron.errors import RadError


class RMSNorm(nn.Module):
    """Megatron's norm-builder signature (config, hidden_size, eps, ...), so ModuleSpecs and HybridStack build it."""

    def __init__(self, config, hidden_size: int, eps: float = 1e-5, persist_layer_norm: bool = False,
                 zero_centered_gamma: bool = False, normalization: str = "RMSNorm"):
        super().__init__()
        if config.normalization != "RMSNorm" or config.layernorm_zero_centered_gamma:
            raise RadError(f"the local spec's norm is RMSNorm without zero-centred gamma; model.normalization="
                           f"{config.normalization} is not supported")
        self.hidden_size, self.eps = hidden_size, eps
        device = "cuda" if torch.cuda.is_available() and not config.use_cpu_initialization else "cpu"
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=config.params_dtype))
        self.weight.sequence_parallel = bool(config.sequence_parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # contiguous_format: the cast back would keep the input's strides, and a [s, 1, h] tensor whose size-1 batch
        # dimension has a stray stride makes the next torch.matmul (Megatron's frozen-weight linear) expand the
        # weight to [s, h, out] for a bmm on CPU - a transient of tokens x weight bytes (384 MiB at 256 x 1024 x 768)
        # where a single mm needs none. A no-op in fp32 (the result is already dense).
        y = F.rms_norm(x.float(), (self.hidden_size,), self.weight.float(), self.eps)
        return y.to(x.dtype, memory_format=torch.contiguous_format)
