"""The study as one resumable library call: probe evidence -> data and teacher cache (once) -> the LR sweep -> the run
grid at the kept LRs (skipping finished runs) -> GSM8K accuracy -> report (study.plan has the run lists).

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
from rad_megatron.study.train import RunSpec, is_done, load_student

COMPARABLE = ("model", "probe", "data", "train")  # settings every run of one folder must share


def _check_folder(out: Path, cfg, force: bool) -> None:
    marker = out / "study.json"
    mine = {k: v for k, v in cfg.to_dict().items() if k in COMPARABLE}
    old = json.loads(marker.read_text()).get("comparable", {}) if marker.is_file() else None
    if old is not None and _differs(old, mine):
        if not force:
            diff = sorted(k for k in COMPARABLE if _differs(old.get(k), mine.get(k)))
            raise RadError(f"study folder '{out}' holds runs made with other {', '.join(diff)} settings; choose "
                           f"another out=... or pass --force to delete them and start over")
        _clear(out, keep_probe=not any(_differs(old.get(k), mine.get(k)) for k in ("model", "probe")))
    elif old is None and out.exists() and any(out.iterdir()) and not force:
        raise RadError(f"'{out}' is not empty and holds no study; choose another out=... or pass --force")
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".study.json.{os.getpid()}.tmp"  # another process may start beside
    tmp.write_text(json.dumps({"comparable": mine, "config": cfg.to_dict()}, indent=2))
    os.replace(tmp, marker)


def _differs(old, new) -> bool:
    """Settings differ; a field added to the config since the folder was made (absent there) counts as the same
    while it holds None, its "not used" value."""
    if isinstance(old, dict) and isinstance(new, dict):
        return any(_differs(old.get(k), new.get(k)) for k in old.keys() | new.keys())
    return old != new


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


class Timings:
    """Compute seconds per phase, kept across invocations in timings.json."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {}

    def add(self, phase: str, seconds: float) -> None:
        self.data[phase] = self.data.get(phase, 0.0) + seconds
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        os.replace(tmp, self.path)


def _evidence(cfg, base, tok, out: Path, timings: Timings, log, probe: bool):
    from rad_megatron.study.evidence import gather_evidence

    if not any(s in NEEDS_PROBE for s in cfg.strategies):
        return None, [], {}
    t0 = time.perf_counter()
    evidence, sources, merged = gather_evidence(cfg, base, tok, out, log, probe)
    if time.perf_counter() - t0 > 5:  # a probe phase ran now (loading cached files takes milliseconds)
        timings.add("probe", time.perf_counter() - t0)
    return evidence, sources, merged


def _teacher(cfg, base, tok, source, out: Path, timings: Timings, log, compute: bool = True):
    from rad_megatron.study.teacher import build_data, data_order, teacher_cache

    t0 = time.perf_counter()
    train, held = build_data(tok, cfg.data)
    t = cfg.train
    orders = {seed: data_order(train["input_ids"].shape[0], seed, t.steps, t.micro_batch_size) for seed in cfg.seeds}
    if not compute:  # --max-runs 0 reports the finished runs: no teacher targets needed (nor computed)
        return train, held, orders, None
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
    weightless = [s.name for s in wanted if is_done(out / "runs" / s.name)
                  and "restored_from" in json.loads((out / "runs" / s.name / "done.json").read_text())]
    if weightless:
        raise RadError(f"run {weightless[0]} (and {len(weightless) - 1} more) was restored without trained weights, so "
                       f"its GSM8K accuracy cannot be measured; set accuracy.runs to exclude restored runs or "
                       f"accuracy.limit=0")
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


def _train_all(specs: list[RunSpec], where: Path, ctx: dict, budget: list[int], log, heldout: bool = True) -> bool:
    """Train every unfinished run of `specs` into where/<name>; False once --max-runs is spent (budget = [runs
    left] or [None])."""
    from rad_megatron.study.train import train_run

    for spec in specs:
        folder = where / spec.name
        if is_done(folder):
            _check_same_layers(folder, spec)
            continue
        if budget[0] is not None and budget[0] <= 0:
            return False
        ctx["progress"].start(spec, heldout)
        done = train_run(ctx["base"], spec, ctx["cfg"], ctx["train"], ctx["held"], ctx["orders"][spec.seed],
                         ctx["cache"], folder, log, heldout=heldout)
        ctx["progress"].finish(done["seconds"], heldout)
        if budget[0] is not None:
            budget[0] -= 1
    return True


def _check_same_layers(folder: Path, spec: RunSpec) -> None:
    """A finished run stands for its spec only if it replaced the layers the evidence picks now (a restored run, or
    a folder whose probe files were edited, may not)."""
    had = json.loads((folder / "done.json").read_text()).get("layers")
    if had is not None and list(had) != list(spec.layers):
        raise RadError(f"finished run {folder} replaced layers {had}, but the probe evidence now picks "
                       f"{list(spec.layers)} for {spec.strategy} k={spec.k}; pass --force to start the study over")


class Progress:
    """One line per run with the measured mean run time (sweep and grid runs apart) and the time still ahead at
    that rate (wall-clock, so on a shared machine it includes the other jobs' load)."""

    def __init__(self, todo: dict[bool, int], log):
        self.todo, self.log, self.seconds = dict(todo), log, {True: [], False: []}

    def start(self, spec: RunSpec, heldout: bool) -> None:
        means = {h: sum(v) / len(v) for h, v in self.seconds.items() if v}
        ahead = ""
        if means:
            fallback = next(iter(means.values()))
            left = sum(self.todo[h] * means.get(h, fallback) for h in self.todo)
            rates = ", ".join(f"{m:.0f} s per {'grid' if h else 'sweep'} run" for h, m in means.items())
            ahead = f"; {rates} so far, ~{left / 3600:.1f} h ahead"
        kind = "grid" if heldout else "sweep"
        self.log(f"{kind} run ({sum(self.todo.values())} left): {spec.name} layers {list(spec.layers)}{ahead}")

    def finish(self, seconds: float, heldout: bool) -> None:
        self.todo[heldout] -= 1
        self.seconds[heldout].append(seconds)


def _plan_line(cfg, grid: int, sweep: int, heldout: int) -> str:
    t = cfg.train
    tokens = t.steps * t.micro_batch_size * cfg.data.seq_len
    evals = len({*range(t.eval_every, t.steps + 1, t.eval_every), t.steps}) + 1
    lr = f" + {sweep} LR-sweep runs (k={cfg.sweep_k}, seed {cfg.seeds[0]}, no held-out evaluation)" if sweep else ""
    return (f"plan: {grid} grid runs{lr}; each {t.steps} steps = {tokens} training tokens; grid runs evaluate "
            f"{evals} times on {heldout} held-out examples (every "
            f"{t.eval_every * t.micro_batch_size * cfg.data.seq_len} tokens)")


def run_study(cfg, command: str, force: bool = False, max_runs: int | None = None, log=print,
              restore: str | None = None) -> Path:
    """Run (or continue) the study into cfg.out, first seeded from the report at `restore` (study.restore) if given;
    returns the report's path."""
    from rad_megatron.distributed import ParallelConfig, init_distributed
    from rad_megatron.study.accuracy import read_questions
    from rad_megatron.study.plan import choose_lrs, grid_specs, planned_count, sweep_specs
    from rad_megatron.study.report import read_jsonl, write_report
    from rad_megatron.study.restore import read_report, restore_study, restored_lines

    # inputs first: a wrong path should fail before --force clears a folder and an hour of training, not after
    if not Path(cfg.data.path).is_file():
        raise RadError(f"config.data.path {cfg.data.path} does not exist; point it at GSM8K train.jsonl")
    questions = read_questions(cfg.accuracy.path, cfg.accuracy.limit) if cfg.accuracy.limit > 0 else []
    published = read_report(restore, cfg) if restore else None
    out = Path(cfg.out)
    _check_folder(out, cfg, force)
    dev = init_distributed(ParallelConfig(tp=1, seed=0)).device
    timings = Timings(out / "timings.json")
    if published:
        probe_seconds = restore_study(out, cfg, published, log)
        if probe_seconds:
            timings.add("probe", probe_seconds)
    # the model lives on the rank's device (the GPU where there is one); data and cached targets stay on the host and
    # travel per batch, so the cache file is the same on every machine
    base, tok, source = load_base(cfg.model, dev)
    evidence, sources, probe = _evidence(cfg, base, tok, out, timings, log, probe=max_runs != 0)
    attention = base.rad_config.attention_layers

    def layers(strategy, k, seed):
        return tuple(select_layers(strategy, k, attention, evidence, seed=seed))

    train, held, orders, cache = _teacher(cfg, base, tok, source, out, timings, log, compute=max_runs != 0)
    runs, sweep_dir = out / "runs", out / "runs" / "sweep"
    n_grid, n_sweep = planned_count(cfg)
    log(_plan_line(cfg, n_grid, n_sweep, held["input_ids"].shape[0]))
    sweep = sweep_specs(cfg, layers)
    # the grid's runs are known once the sweep has chosen the LRs; until then all of them count as ahead
    todo = {True: n_grid, False: sum(not is_done(sweep_dir / s.name) for s in sweep)}
    ctx = {"base": base, "cfg": cfg, "train": train, "held": held, "orders": orders, "cache": cache,
           "progress": Progress(todo, log)}
    budget = [max_runs]
    complete = _train_all(sweep, sweep_dir, ctx, budget, log, heldout=False)
    chosen = choose_lrs(cfg, sweep, sweep_dir)
    grid = grid_specs(cfg, layers, chosen)
    ctx["progress"].todo[True] = sum(not is_done(runs / s.name) for s in grid)
    if not (_train_all(grid, runs, ctx, budget, log) and complete):
        log(f"stopping after {max_runs} runs (--max-runs); run the same command again to continue")
    finished = [s for s in grid if is_done(runs / s.name)]
    swept = [s for s in sweep if is_done(sweep_dir / s.name)]
    rows = [r for s in finished for r in read_jsonl(runs / s.name / "metrics.jsonl")] + \
        [{**r, "phase": "lr sweep"} for s in swept for r in read_jsonl(sweep_dir / s.name / "metrics.jsonl")]
    plan = {"grid": [s.fields() for s in grid], "grid_planned": n_grid, "sweep_planned": n_sweep,
            "sweep_done": len(swept), "grid_done": len(finished),
            "lr": [{"strategy": s, "init": i, **c} for (s, i), c in sorted(chosen.items())]}
    done = [runs / s.name / "done.json" for s in finished] + [sweep_dir / s.name / "done.json" for s in swept]
    ran = {f: json.loads(f.read_text())["seconds"] for f in done}
    ran = {f: s for f, s in ran.items() if s is not None}  # restored runs were not computed here
    span = (min(f.stat().st_mtime for f in ran), max(f.stat().st_mtime for f in ran)) if ran else None

    def report(acc: dict) -> Path:
        seconds = {**timings.data,
                   "LR-sweep runs": sum(ran.get(f, 0.0) for f in done[len(finished):]),
                   "grid runs": sum(ran.get(f, 0.0) for f in done[:len(finished)]),
                   "accuracy": sum(r["seconds"] for r in acc.values())}
        md = write_report(out, cfg, command, plan, probe, sources, rows,
                          {k: {kk: v for kk, v in r.items() if kk != "samples"} for k, r in acc.items()}, seconds,
                          span, restored_lines(out))
        log(f"wrote {md}{' and ' + cfg.report_dir if cfg.report_dir else ''} ({len(finished)} of {n_grid} grid "
            f"runs finished; GSM8K accuracy of {len(acc)} models)")
        return md

    if len(finished) < n_grid or cfg.accuracy.limit <= 0:
        return report({})
    # _accuracy writes the convergence report with the saved scores before it scores anything new
    return report(_accuracy(cfg, base, tok, questions, out, grid, log, on_result=report))
