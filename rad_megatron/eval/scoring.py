"""Batched log-likelihood of continuations on the hybrid model: one forward per batch, right-padded.

Right padding is exact for a causal model: padding positions come after every scored position, and neither
attention (causal mask) nor the Mamba scan (causal recurrence) lets a later position change an earlier one.
"""

from __future__ import annotations

import torch

from rad_megatron.model.forward import forward_logits


def window(context: list[int], continuation: list[int], max_length: int) -> list[int]:
    """The model input for one request: context + continuation minus its last token, cut from the left to fit."""
    return (context + continuation)[-(max_length + 1):][:-1]


@torch.no_grad()
def score_batch(model, pairs: list[tuple[list[int], list[int]]], max_length: int,
                pad_id: int = 0) -> list[tuple[float, bool]]:
    """(sum of log p(continuation | context), whether greedy decoding yields the continuation) per pair."""
    inputs = [window(ctx, cont, max_length) for ctx, cont in pairs]
    width = max(len(x) for x in inputs)
    device = next(model.parameters()).device
    batch = torch.full((len(inputs), width), pad_id, dtype=torch.long, device=device)
    for i, x in enumerate(inputs):
        batch[i, : len(x)] = torch.tensor(x, dtype=torch.long)
    logits = forward_logits(model, batch)
    out = []
    for i, ((_, cont), x) in enumerate(zip(pairs, inputs)):
        n, c = len(x), len(cont)
        logprobs = torch.log_softmax(logits[i, n - c: n].float(), dim=-1)
        target = torch.tensor(cont, dtype=torch.long, device=device)
        total = logprobs.gather(-1, target[:, None]).double().sum().item()  # long texts: no float32 sum drift
        out.append((float(total), bool((logprobs.argmax(-1) == target).all())))
    return out
