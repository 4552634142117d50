"""DP=2 through Megatron's DDP + distributed optimizer (each replica half of the global batch) equals one process
with torch AdamW + clipping on the whole batch. Writes {"max_diff", "norms", "dp", "distributed"} to argv[1]."""

import json
import sys

import torch


def tiny(seed):
    from rad_megatron.config import ModelConfig
    from rad_megatron.model import build_model

    torch.manual_seed(seed)
    model = build_model(ModelConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=2,
                                    num_attention_heads=2, num_kv_heads=1))
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(("decoder.layers.2.", "decoder.layers.3.")))
    return model


def loss_of(model, ids):
    pos = torch.arange(ids.shape[1]).expand(ids.shape)
    return model(input_ids=ids, position_ids=pos, attention_mask=None).pow(2).mean()


def main(out):
    from rad_megatron.distill.optim import OptimConfig, StageOptimizer
    from rad_megatron.distributed import ParallelConfig, init_distributed

    ctx = init_distributed(ParallelConfig(tp=1, seed=3))
    cfg = OptimConfig(clip_grad=0.008, warmup_steps=2, min_lr_ratio=0.1)
    ours, ref = tiny(0), tiny(0)
    opt = StageOptimizer(ours, cfg, 1e-2, steps=5, dp=ctx.dp)
    params = [p for p in ref.parameters() if p.requires_grad]
    torch_opt = torch.optim.AdamW(params, lr=1e-2, betas=cfg.betas, eps=cfg.eps, weight_decay=0.0)
    from rad_megatron.distill.targeting import Stage
    from rad_megatron.distill.trainer import lr_at

    gen = torch.Generator().manual_seed(11)
    norms = []
    for k in range(5):
        ids = torch.randint(0, 32, (4, 8), generator=gen)  # the global batch, identical on every rank
        half = ids.chunk(ctx.dp)[ctx.dp_rank]
        opt.zero_grad()
        loss_of(opt.ddp, half).backward()
        lr, norm = opt.step()
        torch_opt.zero_grad()
        loss_of(ref, ids).backward()
        ref_norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad).item()
        ref_lr = lr_at(Stage(steps=5, lr=1e-2), cfg, k)
        for g in torch_opt.param_groups:
            g["lr"] = ref_lr
        torch_opt.step()
        norms.append([norm, ref_norm, lr, ref_lr])
    diff = max((a - b).abs().max().item() for a, b in zip(ours.parameters(), ref.parameters()))
    if ctx.rank == 0:
        with open(out, "w") as f:
            json.dump({"max_diff": diff, "norms": norms, "dp": ctx.dp, "distributed": opt.distributed}, f)


if __name__ == "__main__":
    main(sys.argv[1])
