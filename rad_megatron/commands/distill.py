"""`rad distill` and `rad pipeline` (probe -> swap -> targeted self-distillation -> report)."""

from __future__ import annotations

from pathlib import Path


def add_parsers(sub):
    for name, help_ in (("distill", "targeted distillation with the teacher on its own ranks"),
                        ("pipeline", "the RAD pipeline: probe -> swap -> targeted distillation -> report")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--config", required=True, help="YAML run config (configs/...)")
        p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. distill.train.grad_accum=2")
        p.add_argument("--resume", action="store_true", help="continue from the last checkpoint under the output")
        p.add_argument("--force", action="store_true",
                       help="start a new run in an output folder that holds files, moving them aside to OUT.old-<time>")
        p.add_argument("--stop-after", type=int, default=None, help="stop (checkpointed) after this step")
        p.add_argument("--out", default=None, help="output folder (overrides the config's `out`)")
        p.set_defaults(run=f"rad_megatron.commands.distill:{name}")


def prepare_run(args):
    """Every check of a distillation run before anything is written; then --force moves an earlier run aside.
    Returns (run config, resolved system, train config, data config): what `rad distill`, `rad pipeline` and
    bench/plan_vs_measured.py start from."""
    from rad_megatron.distill.system import resolve_system
    from rad_megatron.run_folder import check_run_folder, move_aside
    from rad_megatron.settings import build_data_config, build_roles, build_train_config, load_run_config

    cfg = load_run_config(args.config, args.overrides)
    if args.out:
        cfg.out = args.out
    data_cfg = build_data_config(cfg.data)
    system = resolve_system(cfg.system, build_roles(cfg.distill), data_cfg.seq_len)
    parts = cfg, system, build_train_config(cfg.distill), data_cfg
    if cfg.distill.teacher.cache:
        from rad_megatron.distill.run import refuse_foreign_cache

        refuse_foreign_cache(cfg, parts[2], parts[3])
    check_run_folder(Path(cfg.out), args.resume, args.force)
    if args.force:
        move_aside(Path(cfg.out))
    return parts


def distill(args) -> int:
    from rad_megatron.distill.roles import init_roles
    from rad_megatron.distill.run import run_distill
    from rad_megatron.sources import load_source, new_layers_of, prepare_sources

    cfg, system, train_cfg, data_cfg = prepare_run(args)
    prepare_sources(cfg.model, *([] if cfg.distill.teacher.cache else [cfg.distill.teacher]))
    role = init_roles(system.layout, seed=train_cfg.seed)
    if role.is_student:
        model, tok, meta = load_source(cfg.model, role.tp, role.tp_rank, process_group=role.student_group,
                                       **system.student.options())
    else:
        model, tok, meta = load_source(cfg.distill.teacher, role.tp, role.tp_rank, role.pg_collection,
                                       role.teacher_group, **system.teacher.options())
    run_distill(role, model, tok, data_cfg, train_cfg, Path(cfg.out), new_layers_of(meta), args.resume,
                args.stop_after, meta={k: v for k, v in meta.items() if k in ("source", "mamba_init", "swaps")},
                teacher_cache=cfg.distill.teacher.cache, system=system)
    return 0


def pipeline(args) -> int:
    from rad_megatron.pipeline import run_pipeline

    cfg, system, train_cfg, data_cfg = prepare_run(args)
    return run_pipeline(cfg, system, train_cfg, data_cfg, resume=args.resume, stop_after=args.stop_after)
