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
        p.add_argument("--stop-after", type=int, default=None, help="stop (checkpointed) after this step")
        p.add_argument("--out", default=None, help="output folder (overrides the config's `out`)")
        p.set_defaults(run=f"rad_megatron.commands.distill:{name}")


def _setup(args):
    from rad_megatron.settings import build_data_config, build_roles, build_train_config, load_run_config

    cfg = load_run_config(args.config, args.overrides)
    if args.out:
        cfg.out = args.out
    return cfg, build_roles(cfg.distill), build_train_config(cfg.distill), build_data_config(cfg.data)


def _load(source, tp, tp_rank, pg_collection=None, process_group=None, device="cpu"):
    """(model on `device`, tokenizer, meta) of a ModelSource at this rank's TP shard."""
    if source.ckpt:
        from rad_megatron.checkpoint.store import load_model, load_tokenizer, read_meta

        model = load_model(source.ckpt, tp=tp, process_group=process_group, pg_collection=pg_collection)
        return model.to(device), load_tokenizer(source.ckpt), read_meta(source.ckpt)
    from transformers import AutoTokenizer

    from rad_megatron.checkpoint.hf_import import model_from_hf
    from rad_megatron.checkpoint.hf_source import resolve

    src = resolve(source.hf)
    model, _ = model_from_hf(src, tp=tp, tp_rank=tp_rank, pg_collection=pg_collection)
    return model.to(device), AutoTokenizer.from_pretrained(src.folder), {"source": str(src.folder)}


def _new_layers(meta) -> list[int]:
    return sorted(int(b) for b, init in meta.get("mamba_init", {}).items() if init != "imported")


def distill(args) -> int:
    from rad_megatron.distill.roles import init_roles
    from rad_megatron.distill.run import run_distill

    cfg, layout, train_cfg, data_cfg = _setup(args)
    _prepare_sources(cfg)
    role = init_roles(layout, seed=train_cfg.seed)
    if role.is_student:
        model, tok, meta = _load(cfg.model, role.tp, role.tp_rank, process_group=role.student_group)
    else:
        model, tok, meta = _load(cfg.distill.teacher, role.tp, role.tp_rank, role.pg_collection, role.teacher_group)
    run_distill(role, model, tok, data_cfg, train_cfg, Path(cfg.out), _new_layers(meta), args.resume,
                args.stop_after, meta={k: v for k, v in meta.items() if k in ("source", "mamba_init", "swaps")})
    return 0


def _prepare_sources(cfg):
    """GGUF sources are converted once, by rank 0, before the process group exists (so no one else reads a
    half-written cache); other ranks wait for rank 0 at the first collective."""
    import os

    from rad_megatron.checkpoint.hf_source import resolve
    from rad_megatron.distributed.init import _launcher_env

    if _launcher_env(os.environ)[0] == 0:
        for s in (cfg.model, cfg.distill.teacher):
            if not s.ckpt:
                resolve(s.hf)


def pipeline(args) -> int:
    from rad_megatron.commands.pipeline import run_pipeline

    cfg, layout, train_cfg, data_cfg = _setup(args)
    return run_pipeline(cfg, layout, train_cfg, data_cfg, resume=args.resume, stop_after=args.stop_after)
