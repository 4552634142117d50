"""torchrun worker (TP = world size). argv[1]: output JSON; argv[2]: a .pt written by the test with, per case, the
ModelConfig dict, the full TP=1 state dict, input ids and the TP=1 logits.

Checks: hybrid logits at this TP vs TP=1; `mil` swap rows on every rank equal that rank's share of the repeated
V/K/Q weights; `rad_zero` swap == skipping the attention layers."""

import json
import sys

import torch

from rad_megatron.checkpoint.hf_llama import split_qkv
from rad_megatron.checkpoint.shard import load_full_state_dict
from rad_megatron.config import ModelConfig
from rad_megatron.distributed import ParallelConfig, destroy_distributed, init_distributed
from rad_megatron.distributed.init import launched_world_size
from rad_megatron.model import build_model, forward_logits
from rad_megatron.model.skip import skip_blocks
from rad_megatron.swap import swap_attention_to_mamba


def _model(case, tp, tp_rank):
    model = build_model(ModelConfig.from_dict(case["config"]), tp=tp).eval()
    load_full_state_dict(model, case["state"], tp, tp_rank)
    return model


def _mil_rows_ok(model, swapped, block, case, tp, rank):
    cfg = model.rad_config
    H, G, d = cfg.num_attention_heads, cfg.num_kv_heads, cfg.kv_channels
    q, k, v = split_qkv(case["state"][f"decoder.layers.{2 * block}.self_attention.linear_qkv.weight"], H, G)
    mixer = swapped.decoder.layers[2 * block].mixer
    if not mixer.shape.mil_layout:
        k, v = (t.view(G, d, -1).repeat_interleave(H // G, 0).reshape(-1, t.shape[-1]) for t in (k, v))
    _, x, B, C, _ = torch.split(mixer.in_proj.weight, mixer.in_proj_sizes)
    return all(torch.equal(a, full.chunk(tp)[rank]) for a, full in ((x, v), (B, k), (C, q)))


if __name__ == "__main__":
    ctx = init_distributed(ParallelConfig(tp=launched_world_size()))
    cases = torch.load(sys.argv[2], weights_only=False)
    result = {}
    for name, case in cases.items():
        model = _model(case, ctx.tp, ctx.tp_rank)
        with torch.no_grad():
            logits = forward_logits(model, case["ids"])
        result[f"{name}.logits_diff"] = (logits - case["logits"]).abs().max().item()
        if case.get("swap_block") is not None:
            b = case["swap_block"]
            ok = _mil_rows_ok(model, swap_attention_to_mamba(model, [b], init="mil"), b, case, ctx.tp, ctx.tp_rank)
            flag = torch.tensor([int(ok)])
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
            result[f"{name}.mil_rows_equal"] = bool(flag.item())
            zero = swap_attention_to_mamba(model, [b], init="rad_zero")
            with torch.no_grad(), skip_blocks(model, [b]):
                result[f"{name}.rad_zero_equals_skip"] = bool(torch.equal(
                    forward_logits(zero, case["ids"]), forward_logits(model, case["ids"])))
    if ctx.is_main:
        with open(sys.argv[1], "w") as f:
            json.dump(result, f)
    destroy_distributed()
