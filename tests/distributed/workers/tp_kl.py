"""torchrun worker at TP=2: the TP-aware (vocab-parallel) losses on sharded logits equal the full-vocabulary
losses computed on one rank."""

import json
import sys

import torch
import torch.nn.functional as F

from rad_megatron.distill.losses import LossWeights, distill_loss
from rad_megatron.distributed import ParallelConfig, destroy_distributed, init_distributed

if __name__ == "__main__":
    ctx = init_distributed(ParallelConfig(tp=2))
    from megatron.core import parallel_state

    group = parallel_state.get_tensor_model_parallel_group()
    g = torch.Generator().manual_seed(0)
    V = 40
    t, s = torch.randn(2, 6, V, generator=g) * 2, torch.randn(2, 6, V, generator=g) * 2
    labels, mask = torch.randint(0, V, (2, 6), generator=g), torch.ones(2, 6)
    w = LossWeights(fkl=1.0, rkl=0.5, ce=0.3, temperature=1.5)
    out = {}
    for k in (V, 7):
        vals, idx = F.log_softmax(t / 1.5, -1).topk(k, -1)
        full, terms_full = distill_loss(s, vals, idx, labels, mask, w, None, 0)
        local = s.chunk(2, -1)[ctx.tp_rank].clone().requires_grad_(True)
        sharded, terms = distill_loss(local, vals, idx, labels, mask, w, group, ctx.tp_rank * V // 2)
        sharded.backward()
        sref = s.clone().requires_grad_(True)
        distill_loss(sref, vals, idx, labels, mask, w, None, 0)[0].backward()
        gdiff = (local.grad - sref.grad.chunk(2, -1)[ctx.tp_rank]).abs().max().item()
        grad_ok = gdiff < 1e-6
        out[f"k{k}"] = {"diff": abs(full.item() - sharded.item()), "grad_ok": bool(grad_ok),
                        "fkl_diff": abs(terms["fkl"] - terms_full["fkl"])}
    if ctx.is_main:
        with open(sys.argv[1], "w") as f:
            json.dump(out, f)
    destroy_distributed()
