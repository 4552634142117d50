"""torchrun worker, TP = world size with Megatron's sequence parallelism. argv[1]: output JSON; argv[2]: a .pt written
by the test with, per case, the ModelConfig dict, the full TP=1 state dict and, from TP=1: the loss and gradients of
a training batch, the logits and teacher top-k of a batch whose length TP does not divide.

Per case: the SP model's loss and, after Megatron's gradient finalisation (through the trainer's StageOptimizer:
Megatron DDP + finalize_model_grads), every rank's gradients against its shard of the TP=1 gradients; the norms'
gradients before finalisation (partial: each rank saw only its part of the sequence); forward_logits and
teacher_targets at the odd length (padded inside); the refusal of cached decoding."""

import json
import sys

import torch

from rad_megatron.checkpoint.shard import load_full_state_dict, shard_state_dict
from rad_megatron.config import ModelConfig
from rad_megatron.distill.optim import OptimConfig, StageOptimizer
from rad_megatron.distill.stream import StreamConfig, teacher_targets
from rad_megatron.distributed import ParallelConfig, destroy_distributed, init_distributed
from rad_megatron.distributed.cpu import megatron_cuda_on_cpu
from rad_megatron.distributed.init import launched_world_size
from rad_megatron.errors import RadError
from rad_megatron.model import build_model, forward_logits
from rad_megatron.model.forward import position_ids_for


def _max_all_ranks(x: float) -> float:
    t = torch.tensor([x], dtype=torch.float64)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return t.item()


def _train_check(model, case, ctx):
    from megatron.core.distributed import finalize_model_grads

    opt = StageOptimizer(model, OptimConfig(), 1e-3, steps=1, dp=1)
    opt.zero_grad()
    ids, labels = case["ids"], case["labels"]
    loss = opt.ddp(input_ids=ids, position_ids=position_ids_for(ids), attention_mask=None, labels=labels).mean()
    loss.backward()
    expected = shard_state_dict(case["grads"], model.rad_config, ctx.tp, ctx.tp_rank)
    params = dict(model.named_parameters())
    norms = [n for n, p in params.items() if getattr(p, "sequence_parallel", False)]
    before = max((params[n].main_grad - expected[n]).abs().max().item() for n in norms)
    with megatron_cuda_on_cpu():
        finalize_model_grads([opt.ddp])
    after = max((p.main_grad - expected[n]).abs().max().item() for n, p in params.items())
    return {"loss_diff": _max_all_ranks(abs(loss.item() - case["loss"])), "grad_diff": _max_all_ranks(after),
            "norm_grad_diff_before_finalize": _max_all_ranks(before), "sp_marked_norms": len(norms)}


def _inference_check(model, case):
    with torch.no_grad():
        logits = forward_logits(model, case["odd_ids"])
        vals, idx, _, _ = teacher_targets(model, case["odd_ids"], case["odd_labels"],
                                          torch.ones_like(case["odd_ids"], dtype=torch.float32),
                                          StreamConfig(top_k=8))
    try:
        forward_logits(model, case["odd_ids"][:, :1], inference_context=object())
        refused = False
    except RadError:
        refused = True
    return {"odd_length": case["odd_ids"].shape[1], "logits_diff": (logits - case["logits"]).abs().max().item(),
            "topk_values_diff": (vals - case["topk_values"]).abs().max().item(),
            "topk_indices_equal": bool(torch.equal(idx, case["topk_indices"])),
            "topk_values_fp32": vals.dtype == torch.float32, "decode_refused": refused}


if __name__ == "__main__":
    ctx = init_distributed(ParallelConfig(tp=launched_world_size()))
    cases = torch.load(sys.argv[2], weights_only=False)
    result = {}
    for name, case in cases.items():
        model = build_model(ModelConfig.from_dict(case["config"]), tp=ctx.tp, sequence_parallel=True)
        load_full_state_dict(model, case["state"], ctx.tp, ctx.tp_rank)
        mixers = [layer.mixer for layer in model.decoder.layers if hasattr(layer, "mixer")]
        result[name] = {"sequence_parallel": model.config.sequence_parallel,
                        # in_proj all-gathers the sequence, out_proj reduce-scatters it (Megatron's linears under SP)
                        "mixer_linears_sp": bool(mixers) and all(m.in_proj.sequence_parallel
                                                                 and m.out_proj.sequence_parallel for m in mixers),
                        **_inference_check(model.eval(), case), **_train_check(model.train(), case, ctx)}
    if ctx.is_main:
        with open(sys.argv[1], "w") as f:
            json.dump(result, f)
    destroy_distributed()
