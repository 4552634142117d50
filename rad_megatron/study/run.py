"""The study as one resumable library call: probe evidence -> the run grid -> data and teacher cache (once) -> every
run (skipping finished ones) -> GSM8K accuracy -> report.

Resuming: a finished run has done.json (written last, atomically); a run interrupted midway left nothing under its
final names and starts again from scratch. The probe additions, the teacher cache and each accuracy result are
cached files too. A study folder refuses a restart whose data, training or probe settings differ (the finished runs
would not be comparable); the grid itself (strategies, ks, inits, seeds) may grow or shrink.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import time
from pathlib import Path

from rad_megatron.errors import RadError
from rad_megatron.study.strategies import NEEDS_PROBE, select_layers
from rad_megatron.study.train import RunSpec, is_done, load_student, train_run

COMPARABLE = ("model", "probe", "data", "train")  # settings every run of one folder must share


def _check_folder(out: Path, cfg, force: bool) -> None:
    marker = out / "study.json"
    mine = {k: v for k, v in cfg.to_dict().items() if k in COMPARABLE}
    if marker.is_file() and json.loads(marker.read_text()).get("comparable") != mine:
        old = json.loads(marker.read_text()).get("comparable", {})
        if not force:
            diff = sorted(k for k in COMPARABLE if old.get(k) != mine.get(k))
            raise RadError(f"study folder '{out}' holds runs made with other {', '.join(diff)} settings; choose "
                           f"another out=... or pass --force to delete them and start over")
        _clear(out, keep_probe=all(old.get(k) == mine.get(k) for k in ("model", "probe")))
    elif not marker.is_file() and out.exists() and any(out.iterdir()) and not force:
        raise RadError(f"'{out}' is not empty and holds no study; choose another out=... or pass --force")
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".study.json.tmp"
    tmp.write_text(json.dumps({"comparable": mine, "config": cfg.to_dict()}, indent=2))
    os.replace(tmp, marker)


def _clear(out: Path, keep_probe: bool) -> None:
    """--force: delete the study, but keep the probe additions when the model and probe settings are unchanged
    (a search costs far more than a run, and its result does not depend on the training settings)."""
    for p in out.iterdir():
        if keep_probe and p.name.startswith("probe_") and p.suffix == ".json":
            continue
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def load_base(source, device="cpu"):
    """(model on `device`, tokenizer, source name) of the teacher / starting model."""
    from transformers import AutoTokenizer

    if source.ckpt:
        from rad_megatron.checkpoint.store import load_model, load_tokenizer

        return load_model(source.ckpt).to(device).eval(), load_tokenizer(source.ckpt), str(source.ckpt)
    from rad_megatron.checkpoint.hf_import import model_from_hf
    from rad_megatron.checkpoint.hf_source import resolve

    src = resolve(source.hf)
    model, _ = model_from_hf(src)
    return model.to(device).eval(), AutoTokenizer.from_pretrained(src.folder), str(src.folder)


def make_plan(cfg, attention_layers: list[int], evidence) -> list[RunSpec]:
    """Seed-major order, so a study cut short still has whole seeds to compare."""
    return [RunSpec(s, k, init, seed, tuple(select_layers(s, k, attention_layers, evidence, seed=seed)))
            for seed in cfg.seeds for k in cfg.ks for init in cfg.inits for s in cfg.strategies]


class Timings:
    """Compute seconds per phase, kept across invocations in timings.json."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {}

    def add(self, phase: str, seconds: float) -> None:
        self.data[phase] = self.data.get(phase, 0.0) + seconds
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        os.replace(tmp, self.path)


def _evidence(cfg, base, tok, out: Path, timings: Timings, log):
    from rad_megatron.study.evidence import gather_evidence

    if not any(s in NEEDS_PROBE for s in cfg.strategies):
        return None, []
    t0 = time.perf_counter()
    evidence, sources = gather_evidence(cfg, base, tok, out, log)
    if time.perf_counter() - t0 > 5:  # a search or KL was run now (loading cached files takes milliseconds)
        timings.add("probe additions", time.perf_counter() - t0)
    return evidence, sources


def _teacher(cfg, base, tok, source, out: Path, timings: Timings, log):
    from rad_megatron.study.teacher import build_data, data_order, teacher_cache

    t0 = time.perf_counter()
    train, held = build_data(tok, cfg.data)
    t = cfg.train
    orders = {seed: data_order(train["input_ids"].shape[0], seed, t.steps, t.micro_batch_size) for seed in cfg.seeds}
    cache_file = out / "teacher_cache"  # a folder (distill.cache_store), complete once its manifest is written
    fresh = not (cache_file / "manifest.json").is_file()
    cache = teacher_cache(base, train, held, [r for o in orders.values() for r in o], t.top_k, t.eval_batch_size,
                          cache_file, source, log)
    if fresh:
        timings.add("data + teacher cache", time.perf_counter() - t0)
    return train, held, orders, cache


def _accuracy(cfg, base, tok, questions: list[dict], out: Path, plan: list[RunSpec], log, on_result) -> dict:
    """Score the teacher and the selected students (cached per model). on_result(results so far) first with the
    scores earlier invocations saved, then after each new score, so the published report never drops a measured
    score and an interrupted accuracy phase still leaves a report with what it measured."""
    from rad_megatron.study.accuracy import measure_accuracy, saved_accuracy

    a = cfg.accuracy
    wanted = [s for s in plan if a.runs is None or any(fnmatch.fnmatch(s.name, p) for p in a.runs)]
    models = [("teacher", lambda: base)] + [
        (spec.name, lambda f=out / "runs" / spec.name: load_student(base, f))
        for spec in wanted if is_done(out / "runs" / spec.name)]
    path = {name: out / "accuracy" / f"{name}.json" for name, _ in models}
    saved = {name: saved_accuracy(path[name], len(questions), a.max_new_tokens) for name, _ in models}
    results = {name: r for name, r in saved.items() if r is not None}
    todo = [(name, build) for name, build in models if name not in results]
    if todo:  # with nothing to score, the caller's report is the only one
        on_result(dict(results))
    for i, (name, build) in enumerate(todo):
        log(f"GSM8K accuracy {len(results) + 1}/{len(models)}: {name} ({len(questions)} questions)")
        results[name] = measure_accuracy(path[name], build(), tok, questions, a.max_new_tokens, a.batch_size)
        if i + 1 < len(todo):
            on_result(dict(results))
    return {name: results[name] for name, _ in models}


def run_study(cfg, command: str, force: bool = False, max_runs: int | None = None, log=print) -> Path:
    """Run (or continue) the study into cfg.out; returns the report's path."""
    from rad_megatron.distributed import ParallelConfig, init_distributed
    from rad_megatron.study.accuracy import read_questions
    from rad_megatron.study.report import publish, read_jsonl, write_report

    # inputs first: a wrong path should fail before --force clears a folder and an hour of training, not after
    if not Path(cfg.data.path).is_file():
        raise RadError(f"config.data.path {cfg.data.path} does not exist; point it at GSM8K train.jsonl")
    questions = read_questions(cfg.accuracy.path, cfg.accuracy.limit) if cfg.accuracy.limit > 0 else []
    out = Path(cfg.out)
    _check_folder(out, cfg, force)
    ctx = init_distributed(ParallelConfig(tp=1, seed=0))
    timings = Timings(out / "timings.json")
    # the model lives on the rank's device (the GPU where there is one); data and cached targets stay on the host and
    # travel per batch, so the cache file is the same on every machine
    base, tok, source = load_base(cfg.model, ctx.device)
    evidence, sources = _evidence(cfg, base, tok, out, timings, log)
    plan = make_plan(cfg, base.rad_config.attention_layers, evidence)
    train, held, orders, cache = _teacher(cfg, base, tok, source, out, timings, log)
    trained = 0
    for i, spec in enumerate(plan):
        folder = out / "runs" / spec.name
        if is_done(folder):
            continue
        if max_runs is not None and trained >= max_runs:
            log(f"stopping after {trained} runs (--max-runs); run the same command again to continue")
            break
        log(f"run {i + 1}/{len(plan)}: {spec.name} layers {list(spec.layers)}")
        train_run(base, spec, cfg, train, held, orders[spec.seed], cache, folder, log)
        trained += 1
    finished = [s for s in plan if is_done(out / "runs" / s.name)]
    rows = [r for s in finished for r in read_jsonl(out / "runs" / s.name / "metrics.jsonl")]

    def report(acc: dict) -> Path:
        seconds = {**timings.data, "runs": sum(json.loads((out / "runs" / s.name / "done.json").read_text())[
            "seconds"] for s in finished), "accuracy": sum(r["seconds"] for r in acc.values())}
        md = write_report(out, cfg, command, [s.fields() for s in plan], evidence.to_dict() if evidence else {},
                          sources, rows, {k: {kk: v for kk, v in r.items() if kk != "samples"} for k, r in
                                          acc.items()}, seconds)
        where = ""
        if cfg.report_dir:
            publish(out, Path(cfg.report_dir))
            where = f" and {cfg.report_dir}"
        log(f"wrote {md}{where} ({len(finished)} of {len(plan)} runs finished; GSM8K accuracy of {len(acc)} models)")
        return md

    if len(finished) < len(plan) or cfg.accuracy.limit <= 0:
        return report({})
    # _accuracy writes the convergence report with the saved scores before it scores anything new
    return report(_accuracy(cfg, base, tok, questions, out, plan, log, on_result=report))
