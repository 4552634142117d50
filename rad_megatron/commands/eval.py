"""`rad eval`: GSM8K / CRUX-O (or any lm-eval task) on a rad_megatron checkpoint or HF model, through lm-eval."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rad_megatron.errors import RadError

DEFAULT_DATA = {"gsm8k": "../shared/data/gsm8k/test.jsonl", "cruxeval": "../shared/data/cruxeval/cruxeval.jsonl"}


def run(args) -> int:
    from rad_megatron.eval import run as ev

    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not args.force:
        raise RadError(f"refusing to overwrite '{out}'; choose another --out or pass --force")
    if args.limit is not None and args.limit < 1:
        raise RadError(f"--limit {args.limit}: give a positive number of documents per task")
    tasks = ev.parse_tasks(args.tasks)
    sources = {"gsm8k": args.gsm8k_data, "cruxeval": args.cruxeval_data}
    ev.check_inputs(tasks, sources, args.confirm_run_unsafe_code)
    manager = ev.task_manager(tasks, sources, args.include_path)  # unknown task names fail before the model loads

    from rad_megatron.eval.lm import RadLM

    lm = RadLM(ckpt=args.ckpt, hf=args.hf, tp=args.tp, batch_size=args.batch_size, seed=args.seed)
    has_template = bool(getattr(lm.tokenizer, "chat_template", None))
    if args.chat and not has_template:
        raise RadError("--chat: this tokenizer has no chat template; run with --no-chat")
    chat = has_template if args.chat is None else args.chat
    gen_kwargs = {"max_gen_toks": args.max_gen_toks} if args.max_gen_toks else None
    results = ev.evaluate(lm, tasks, manager, limit=args.limit, num_fewshot=args.num_fewshot, chat=chat,
                          confirm_unsafe=args.confirm_run_unsafe_code, log_samples=True,
                          gen_kwargs=gen_kwargs, seed=args.seed)
    if not lm.ctx.is_main or results is None:
        return 0
    if not args.log_samples:  # logged anyway: lm-eval needs them for metric-only ('bypass') tasks
        results.pop("samples", None)
    results["rad"] = {"tasks": tasks, "data": sources, "chat": chat, "limit": args.limit,
                      "batch_size": lm.batch_size, **lm.get_model_info()}
    if out is not None:
        ev.write_results(out, results)
    from lm_eval.utils import make_table

    print(make_table(results))
    print(json.dumps({"results": ev.summary(results), "out": str(out) if out else None}), flush=True)
    return 0


def add_parser(sub):
    p = sub.add_parser("eval", help="GSM8K / CRUX-O (or lm-eval tasks) through lm-eval on the Megatron model")
    p.add_argument("--ckpt", default=None, help="rad_megatron checkpoint")
    p.add_argument("--hf", default=None, help="or an HF Llama / MIL folder or .gguf (default: SmolLM2-135M-Instruct)")
    p.add_argument("--tasks", default="gsm8k,cruxeval",
                   help="comma-separated: gsm8k, cruxeval (CRUX-O), or lm-eval task names")
    p.add_argument("--include-path", action="append", default=[],
                   help="another folder of lm-eval task yamls (repeatable)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N documents of each task")
    p.add_argument("--gsm8k-data", default=DEFAULT_DATA["gsm8k"],
                   help="GSM8K test .jsonl (question, answer), or 'hub' for openai/gsm8k")
    p.add_argument("--cruxeval-data", default=DEFAULT_DATA["cruxeval"],
                   help="CRUXEval .jsonl (code, input, output), or 'hub' for cruxeval-org/cruxeval")
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                   help="wrap prompts in the tokenizer's chat template (default: when the tokenizer has one)")
    p.add_argument("--num-fewshot", type=int, default=None, help="override the tasks' few-shot count (default 0)")
    p.add_argument("--max-gen-toks", type=int, default=None, help="override the tasks' generation budget")
    p.add_argument("--batch-size", type=int, default=8, help="requests per forward / generation batch")
    p.add_argument("--confirm-run-unsafe-code", action="store_true",
                   help="allow tasks that execute model-written code (CRUX-O), in a limited subprocess")
    p.add_argument("--log-samples", action="store_true", help="keep every prompt, response and score in --out")
    p.add_argument("--tp", type=int, default=None, help="tensor-parallel size (default: the launched world size)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--out", default=None, help="results .json (written atomically; refused if it exists)")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    p.set_defaults(run="rad_megatron.commands.eval:run")
