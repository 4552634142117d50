"""Per-layer decode costs for the speculative cost model, computed once per probe.

`flops` (default): analytic multiply-adds of one decode token at a given context length; deterministic and the same
at every TP size, so probe results do not depend on timing noise. `measured`: wall-clock of each decoder layer over a
few decode steps (forward hooks), for hardware where the analytic split is off (e.g. memory-bound GPU decode).
Costs are returned as fractions of one full-model token, with the embedding and output head included in the total.
"""

from __future__ import annotations

import time
from collections import defaultdict

import torch

from rad_megatron.config import ATTENTION
from rad_megatron.errors import RadError


def flops_costs(cfg, context: int = 512) -> dict:
    D, F, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    H, G, d = cfg.num_attention_heads, cfg.num_kv_heads, cfg.kv_channels
    m = cfg.mamba_shape()
    attn = 2 * D * (H + 2 * G) * d + 2 * H * d * D + 4 * H * d * context
    in_w = 2 * m.num_heads * m.head_dim + 2 * m.d_xb + m.num_groups * m.state_dim + m.num_heads
    mamba = 2 * D * in_w + 2 * m.num_heads * m.head_dim * D + 6 * m.num_heads * m.head_dim * m.state_dim
    mlp = 6 * D * F
    mixers = {b: attn if kind == ATTENTION else mamba for b, kind in enumerate(cfg.layout)}
    total = sum(mixers.values()) + mlp * cfg.num_layers + 2 * D * V
    return {"method": "flops", "context": context,
            "attention": {str(b): c / total for b, c in mixers.items() if cfg.layout[b] == ATTENTION}}


@torch.no_grad()
def measured_costs(model, context: int = 128, steps: int = 16) -> dict:
    from rad_megatron.inference.engine import InferenceSession
    from rad_megatron.model.layout import mixer_layer_index

    cfg = model.rad_config
    spent = defaultdict(float)
    starts = {}
    hooks = []
    for b in cfg.attention_layers:
        layer = model.decoder.layers[mixer_layer_index(b)]
        hooks.append(layer.register_forward_pre_hook(lambda mod, args, b=b: starts.__setitem__(b, time.perf_counter())))
        hooks.append(layer.register_forward_hook(
            lambda mod, args, out, b=b: spent.__setitem__(b, spent[b] + time.perf_counter() - starts[b])))
    device = next(model.parameters()).device
    session = InferenceSession(model, 1, context + steps + 1)
    g = torch.Generator().manual_seed(0)
    session.feed(torch.randint(0, cfg.vocab_size, (1, context), generator=g).to(device))
    spent.clear()
    t0 = time.perf_counter()
    try:
        for _ in range(steps):
            session.feed(torch.randint(0, cfg.vocab_size, (1, 1), generator=g).to(device))
    finally:
        for h in hooks:
            h.remove()
    total = time.perf_counter() - t0
    return {"method": "measured", "context": context, "steps": steps, "ms_per_token": 1000 * total / steps,
            "attention": {str(b): spent[b] / total for b in cfg.attention_layers}}


def layer_costs(model, method: str = "flops") -> dict:
    if method == "flops":
        return flops_costs(model.rad_config)
    if method == "measured":
        return measured_costs(model)
    raise RadError(f"--costs '{method}' is not one of flops, measured")


def draft_cost(costs: dict, skip) -> float:
    """Cost of one draft token with `skip` bypassed, in units of one full-model token."""
    return 1.0 - sum(costs["attention"][str(b)] for b in skip)


def cost_model_throughput(mean_accepted: float, mean_drafted: float, costs: dict, skip) -> float:
    """Tokens per full-model-forward: (accepted + 1) / (K * c_draft(S) + c_verify), c_verify = 1 (one pass)."""
    return (mean_accepted + 1.0) / (mean_drafted * draft_cost(costs, skip) + 1.0)


def expected_throughput(alpha: float, draft_len: int, costs: dict, skip) -> float:
    """The same cost model with speculative sampling's expected tokens per verify pass for a per-token acceptance
    probability alpha and K = draft_len drafts: (1 - alpha^(K+1)) / (1 - alpha) (Leviathan et al. 2023, eq. 1),
    which is K + 1 at alpha = 1."""
    tokens = draft_len + 1.0 if alpha >= 1.0 else (1.0 - alpha ** (draft_len + 1)) / (1.0 - alpha)
    return tokens / (draft_len * draft_cost(costs, skip) + 1.0)
