"""`rad generate`: complete a prompt with a checkpoint or HF model on the cached engine, plainly or speculatively.

  rad generate --ckpt C [--prompt TEXT] [--temperature T --top-k K --top-p P --seed S]
  rad generate --ckpt C --speculative --skip 3,7,12 [--draft-len K]        self-speculative (skip set drafts)
  rad generate --ckpt C --speculative --draft-ckpt D [--draft-len K]       a separate draft model (same tokenizer)

Speculative output is token-identical to plain greedy decoding at temperature 0 and distributed as plain sampling
otherwise (inference/spec_generate.py). The last line is JSON: the completion's token count and, when speculative,
the acceptance statistics.
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace

from rad_megatron.errors import RadError


def add_parser(sub):
    p = sub.add_parser("generate", help="complete a prompt (greedy or sampled), optionally by speculative decoding")
    p.add_argument("--ckpt", default=None, help="rad_megatron checkpoint")
    p.add_argument("--hf", default=None, help="or an HF Llama / MIL / GraniteMoeHybrid folder or .gguf "
                                              "(neither: SmolLM2-135M-Instruct)")
    p.add_argument("--prompt", default="What is 2+3? Answer briefly.", help="user message")
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=True, help="apply the chat template")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--speculative", action="store_true", help="draft with --skip or a --draft-* model, verify at once")
    p.add_argument("--skip", default=None, help="self-speculative: attention layers the draft bypasses, e.g. 3,7,12")
    p.add_argument("--draft-ckpt", default=None, help="a separate draft model (rad_megatron checkpoint)")
    p.add_argument("--draft-hf", default=None, help="or a separate draft model as an HF folder")
    p.add_argument("--draft-len", type=int, default=4, help="tokens drafted per verify forward (>= 1)")
    p.add_argument("--rollback", default="snapshot", choices=["snapshot", "recompute"],
                   help="Mamba state rollback on rejection (docs/results/speculative.md measures both)")
    p.add_argument("--tp", type=int, default=None, help="tensor-parallel size (default: the launched world size)")
    p.set_defaults(run="rad_megatron.commands.generate:run")


def check_args(args) -> None:
    """Every flag combination that cannot work, refused before a model is loaded."""
    drafts = [name for name, v in (("--skip", args.skip), ("--draft-ckpt", args.draft_ckpt),
                                   ("--draft-hf", args.draft_hf)) if v is not None]
    if args.max_new_tokens < 1:
        raise RadError(f"--max-new-tokens {args.max_new_tokens}: generate at least one token")
    if args.draft_len < 1:
        raise RadError(f"--draft-len {args.draft_len}: the draft length must be >= 1")
    if drafts and not args.speculative:
        raise RadError(f"{drafts[0]} drafts for speculative decoding: add --speculative")
    if args.speculative and len(drafts) != 1:
        raise RadError("--speculative needs exactly one draft: --skip LAYERS (self-speculative), --draft-ckpt or "
                       "--draft-hf" + (f"; got {' and '.join(drafts)}" if drafts else ""))


def run(args) -> int:
    import torch

    from rad_megatron.commands.common import load_model_and_tokenizer, print_json_main, start
    from rad_megatron.inference.engine import SamplingConfig, generate

    check_args(args)
    ctx = start(args.tp)
    model, tok = load_model_and_tokenizer(args, ctx)
    drafter = _drafter(args, ctx, tok) if args.speculative else None
    if args.chat and tok.chat_template:
        text = tok.apply_chat_template([{"role": "user", "content": args.prompt}], tokenize=False,
                                       add_generation_prompt=True)
    else:
        text = args.prompt
    ids = tok(text)["input_ids"]
    sampling = SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    report = {}
    with torch.no_grad():
        if drafter is None:
            out = generate(model, [ids], args.max_new_tokens, eos_id=tok.eos_token_id, sampling=sampling)[0]
        else:
            from rad_megatron.inference.spec_generate import speculative_decode

            out, stats = speculative_decode(model, ids, args.max_new_tokens, drafter, k=args.draft_len,
                                            sampling=sampling, eos_id=tok.eos_token_id, rollback=args.rollback)
            report = {"speculative": stats.summary(), "rollback": args.rollback, "draft_len": args.draft_len}
    if ctx.is_main:
        print(f"prompt: {args.prompt}\ncompletion: {tok.decode(out, skip_special_tokens=True)}")
    print_json_main(ctx, {"new_tokens": len(out), **report})
    return 0


def _drafter(args, ctx, tok):
    from rad_megatron.commands.common import load_model_and_tokenizer
    from rad_megatron.inference.draft import ModelDraft, SelfDraft, check_same_tokenizer

    if args.skip is not None:
        from rad_megatron.commands.swap import parse_layers

        return SelfDraft(parse_layers(args.skip))
    draft, draft_tok = load_model_and_tokenizer(SimpleNamespace(ckpt=args.draft_ckpt, hf=args.draft_hf), ctx)
    check_same_tokenizer(tok, draft_tok, args.draft_ckpt or args.draft_hf)
    return ModelDraft(draft, args.rollback)
