"""Reference greedy decoding by full recomputation (no cache): slow but obviously right; the yardstick the cached
engine and speculative decoding are compared against."""

from __future__ import annotations

import torch

from rad_megatron.model.forward import forward_logits


@torch.no_grad()
def greedy_recompute(model, input_ids: torch.Tensor, max_new_tokens: int, eos_id: int | None = None) -> torch.Tensor:
    """[b, s] -> [b, s + n] by argmax over full-vocabulary logits; stops early once every row has emitted eos."""
    ids = input_ids
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    for _ in range(max_new_tokens):
        nxt = forward_logits(model, ids)[:, -1].argmax(-1)
        if eos_id is not None:
            nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
            done |= nxt == eos_id
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        if eos_id is not None and bool(done.all()):
            break
    return ids
