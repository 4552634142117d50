"""`rad study`: RAD's layer choice against baseline choices (study.strategies) under identical distillation budgets;
writes the report (<report_name>.{md,png,jsonl} and _probe.json) into the study folder. Running the same command again
continues an interrupted study; --max-runs 0 only rewrites the report from the runs finished so far."""

from __future__ import annotations

import shlex


def add_parser(sub):
    p = sub.add_parser("study", help="convergence study: RAD's layer choice against baselines, same budget each")
    p.add_argument("--config", required=True, help="study YAML (configs/study_smollm2.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=20 seeds=[0]")
    p.add_argument("--quick", action="store_true", help="apply the config's `quick:` preset (minutes, not an hour)")
    p.add_argument("--out", default=None, help="study folder (overrides the config's `out`)")
    p.add_argument("--max-runs", type=int, default=None,
                   help="train at most N runs now, then write the report (0: only rewrite the report from the "
                        "finished runs, also while another process trains into the same folder)")
    p.add_argument("--force", action="store_true", help="delete a study folder made with other settings")
    p.add_argument("--restore", default=None, metavar="REPORT",
                   help="first seed the folder from a published report made with the same config (its path without "
                        "the suffix, e.g. docs/results/convergence_v2): its runs count as finished, its probe evidence "
                        "is reused")
    p.set_defaults(run="rad_megatron.commands.study:run")


def run(args) -> int:
    from rad_megatron.errors import RadError
    from rad_megatron.study.config import load_study_config
    from rad_megatron.study.run import run_study

    if args.max_runs is not None and args.max_runs < 0:
        raise RadError(f"--max-runs {args.max_runs} must be >= 0")
    cfg = load_study_config(args.config, args.overrides, quick=args.quick)
    if args.out:
        cfg.out = args.out
    words = ["rad", "study", "--config", args.config] + (["--quick"] if args.quick else []) + \
        (["--out", args.out] if args.out else []) + list(args.overrides)
    run_study(cfg, shlex.join(words), force=args.force, max_runs=args.max_runs,
              log=lambda msg: print(msg, flush=True), restore=args.restore)
    return 0
