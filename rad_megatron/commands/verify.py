"""`rad verify`: our Megatron model against transformers' Llama on the same text, at the launch's TP size.

Prints JSON on the last line: max_abs_logit_diff, greedy_tokens_equal (for --tokens generated tokens), tp.
Exit 1 when the difference exceeds --tol or the greedy tokens differ.
"""

from __future__ import annotations

import torch

from rad_megatron.commands.common import print_json_main, resolve_on_main_first, start
from rad_megatron.inference.greedy import greedy_recompute
from rad_megatron.model.forward import forward_logits


@torch.no_grad()
def _hf_greedy(hf, ids, n):
    for _ in range(n):
        ids = torch.cat([ids, hf(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def run(args) -> int:
    ctx = start(args.tp)
    source = resolve_on_main_first(args.hf)
    model = _load_ours(args, source, ctx)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(source.folder)
    ids = torch.tensor([tok(args.text)["input_ids"]])
    with torch.no_grad():  # both models on the rank's device (the same GPU where there is one), fp32
        ours = forward_logits(model, ids.to(ctx.device)).cpu()
    ours_tokens = greedy_recompute(model, ids.to(ctx.device), args.tokens).cpu()
    result = None
    if ctx.is_main:
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(source.folder, dtype=torch.float32).to(ctx.device).eval()
        with torch.no_grad():
            ref = hf(ids.to(ctx.device)).logits.cpu()
        diff = (ours - ref).abs().max().item()
        hf_tokens = _hf_greedy(hf, ids.to(ctx.device), args.tokens).cpu()
        equal = bool(torch.equal(ours_tokens, hf_tokens))
        result = {"max_abs_logit_diff": diff, "greedy_tokens_equal": equal, "tp": ctx.tp,
                  "tokens": args.tokens, "tol": args.tol, "device": str(ctx.device),
                  "completion": tok.decode(ours_tokens[0, ids.shape[1]:])}
    print_json_main(ctx, result)
    ok = result is None or (result["max_abs_logit_diff"] <= args.tol and result["greedy_tokens_equal"])
    return 0 if ok else 1


def _load_ours(args, source, ctx):
    if args.ckpt:
        from rad_megatron.checkpoint.store import load_model

        return load_model(args.ckpt, tp=ctx.tp).to(ctx.device).eval()
    from rad_megatron.checkpoint.hf_import import model_from_hf

    return model_from_hf(source, tp=ctx.tp, tp_rank=ctx.tp_rank)[0].to(ctx.device)
