"""How far skipping one attention layer moves the output: mean KL(full || skipped) over prompt tokens. A cheap,
strong redundancy heuristic, and the sanity check for the probe's scores."""

from __future__ import annotations

import torch

from rad_megatron.model.forward import forward_logits
from rad_megatron.model.skip import skip_blocks


@torch.no_grad()
def skip_kl(model, prompts: list[list[int]], skip) -> float:
    total, count = 0.0, 0
    for p in prompts:
        ids = torch.tensor([p], device=next(model.parameters()).device)
        full = forward_logits(model, ids).float().log_softmax(-1)
        with skip_blocks(model, skip):
            part = forward_logits(model, ids).float().log_softmax(-1)
        total += (full.exp() * (full - part)).sum(-1).sum().item()
        count += ids.shape[1]
    return total / count


def per_layer_kl(model, prompts) -> dict[int, float]:
    return {b: skip_kl(model, prompts, [b]) for b in model.rad_config.attention_layers}
