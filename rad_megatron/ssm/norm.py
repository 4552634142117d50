"""Gated RMSNorm of Mamba-2 (norm after the gate, per group), in torch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def gated_rms_norm(y, z, weight, group_size: int, eps: float = 1e-5):
    """RMSNorm_group(y * silu(z)) * weight, computed in fp32 and cast back to y's dtype."""
    dtype = y.dtype
    g = y.float()
    if z is not None:
        g = g * F.silu(z.float())
    shape = g.shape
    g = g.reshape(*shape[:-1], shape[-1] // group_size, group_size)
    g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + eps)
    return (g.reshape(shape) * weight.float()).to(dtype)


class GatedRMSNorm(nn.Module):
    """Parameter holder with the same state-dict key ('weight') as mamba_ssm's RMSNormGated."""

    def __init__(self, hidden_size: int, group_size: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.group_size, self.eps = group_size, eps
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))

    def forward(self, y, z=None):
        return gated_rms_norm(y, z, self.weight, self.group_size, self.eps)
