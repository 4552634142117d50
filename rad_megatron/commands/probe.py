"""`rad probe`: which attention layers are redundant, measured by self-speculative decoding."""

from __future__ import annotations

import json
from pathlib import Path

from rad_megatron.errors import RadError


def run(args) -> int:
    from rad_megatron.commands.common import load_model_and_tokenizer
    from rad_megatron.data.prompts import encode_prompts, read_prompts
    from rad_megatron.distributed import ParallelConfig, init_distributed
    from rad_megatron.probe.report import plot_probe, write_json_atomic
    from rad_megatron.probe.run import evaluate_set, run_probe
    from rad_megatron.probe.score import ProbeSettings
    from rad_megatron.probe.search import Replicas

    out = Path(args.out)
    if out.exists() and not args.force:
        raise RadError(f"refusing to overwrite '{out}'; choose another --out or pass --force")
    if out.suffix != ".json":
        raise RadError(f"--out {out}: give a .json path (the PNG is written beside it)")
    texts = read_prompts(args.prompts, limit=args.num_prompts)  # before the model: bad input fails fast
    ctx = init_distributed(ParallelConfig(tp=args.tp, seed=args.seed))
    model, tok = load_model_and_tokenizer(args, ctx)
    prompts = encode_prompts(tok, texts, chat=args.chat)
    settings = ProbeSettings(draft_len=args.draft_len, max_new_tokens=args.max_new_tokens,
                             confidence=args.confidence, eos_id=None if args.no_eos else tok.eos_token_id)
    if args.skip_set is not None:
        result = evaluate_set(model, prompts, [int(x) for x in args.skip_set.split(",") if x], settings, args.costs)
        if ctx.is_main:
            print(json.dumps(result))
        return 0
    replicas = Replicas(dp=ctx.dp, dp_rank=ctx.dp_rank, is_main=ctx.is_main)
    report = run_probe(model, prompts, args.k, args.trials, settings, replicas, objective=args.objective,
                       costs=args.costs, seed=args.seed)
    report["settings"].update(prompts=args.prompts, source=args.ckpt or model.rad_meta.get("source"))
    if ctx.is_main:
        write_json_atomic(out, report)
        plot_probe(report, out.with_suffix(".png"))
        c = report["chosen"]
        print(f"chosen skip set {c['skip']}: acceptance {c['acceptance']:.3f}, alpha {c['expected_acceptance']:.3f}, "
              f"mean accepted "
              f"{c['mean_accepted']:.2f}, cost-model throughput {c['throughput']:.3f} tok/forward "
              f"(no skip: {report['baseline_no_skip']['throughput']:.3f}); wrote {out} and "
              f"{out.with_suffix('.png')}")
    return 0


def add_parser(sub):
    p = sub.add_parser("probe", help="score attention layers by self-speculative acceptance; search skip sets")
    p.add_argument("--ckpt", default=None, help="rad_megatron checkpoint")
    p.add_argument("--hf", default=None, help="or an HF Llama / MIL folder or .gguf (default: SmolLM2-135M-Instruct)")
    p.add_argument("--prompts", required=True, help=".jsonl (question|prompt|text field), .txt, or a hub dataset")
    p.add_argument("--num-prompts", type=int, default=8, help="use the first N prompts")
    p.add_argument("--chat", action=argparse_bool(), default=True, help="apply the chat template")
    p.add_argument("--k", type=int, default=4, help="size of the skip set to search")
    p.add_argument("--trials", type=int, default=16, help="Bayesian-optimisation trials (skip sets evaluated)")
    p.add_argument("--draft-len", type=int, default=4, help="K: draft tokens per verify step")
    p.add_argument("--confidence", type=float, default=None, help="adaptive draft exit threshold (default: fixed K)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens generated per prompt")
    p.add_argument("--objective", default="throughput",
                   choices=["throughput", "expected_throughput", "tokens_per_s", "acceptance"],
                   help="throughput: cost model with greedy acceptance; expected_throughput: the same with speculative "
                        "sampling's acceptance probability alpha (continuous, no ties at the ceiling)")
    p.add_argument("--costs", default="flops", choices=["flops", "measured"], help="per-layer cost model")
    p.add_argument("--skip-set", default=None, help="evaluate this one comma-separated skip set and print JSON")
    p.add_argument("--no-eos", action="store_true", help="do not stop at the end-of-sequence token")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size; the other ranks are data-parallel")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="probe.json path (a PNG is written beside it)")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    p.set_defaults(run="rad_megatron.commands.probe:run")


def argparse_bool():
    import argparse

    return argparse.BooleanOptionalAction
