"""`rad teacher-cache`: run the teacher once over a run's training data and store its top-k targets."""

from __future__ import annotations

import argparse


def add_parser(sub):
    p = sub.add_parser("teacher-cache", help="store the teacher's top-k targets for a run's training data, so that "
                                             "`rad distill ... distill.teacher.cache=PATH` needs no teacher ranks")
    p.add_argument("--config", required=True, help="the run's YAML config (the same one `rad distill` will use)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. distill.train.stream.top_k=32")
    p.add_argument("--out", default=None, help="cache folder (default: the config's distill.teacher.cache)")
    p.add_argument("--replicas", type=int, default=1,
                   help="student data-parallel replicas the run will use (samples = steps x replicas x grad_accum x "
                        "micro_batch_size)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="stored top-k values (float32 equals the live stream bit for bit; bfloat16 halves them)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted cache, or extend a finished one")
    p.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)  # an interruption, for tests
    p.set_defaults(run="rad_megatron.commands.teacher_cache:run")


def run(args) -> int:
    from rad_megatron.commands.common import print_json_main
    from rad_megatron.distill.teacher_cache import CacheJob, cache_folder, run_teacher_cache
    from rad_megatron.settings import load_run_config

    cfg = load_run_config(args.config, args.overrides)
    job = CacheJob(out=cache_folder(cfg, args.out), replicas=args.replicas, dtype=args.dtype, resume=args.resume,
                   stop_after=args.stop_after)
    ctx, result = run_teacher_cache(cfg, job)
    print_json_main(ctx, result)
    return 0
