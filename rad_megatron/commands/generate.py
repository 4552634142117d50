"""`rad generate`: import a Llama into the Megatron hybrid and complete a prompt greedily."""

from __future__ import annotations

import torch

from rad_megatron.commands.common import resolve_on_main_first, start
from rad_megatron.inference.greedy import greedy_recompute


def run(args) -> int:
    ctx = start(args.tp)
    source = resolve_on_main_first(args.hf)
    from transformers import AutoTokenizer

    from rad_megatron.checkpoint.hf_import import model_from_hf

    model = model_from_hf(source, tp=ctx.tp, tp_rank=ctx.tp_rank)[0].to(ctx.device)
    tok = AutoTokenizer.from_pretrained(source.folder)
    if args.chat and tok.chat_template:
        text = tok.apply_chat_template([{"role": "user", "content": args.prompt}], tokenize=False,
                                       add_generation_prompt=True)
    else:
        text = args.prompt
    ids = torch.tensor([tok(text)["input_ids"]], device=ctx.device)
    out = greedy_recompute(model, ids, args.max_new_tokens, eos_id=tok.eos_token_id)
    if ctx.is_main:
        completion = tok.decode(out[0, ids.shape[1]:].tolist(), skip_special_tokens=True)
        print(f"prompt: {args.prompt}\ncompletion: {completion}")
    return 0
