"""Seed a study folder from a published report (<prefix>.jsonl and <prefix>_probe.json, as `rad study` writes them),
so a study whose folder was lost or lives on another machine continues without recomputing its finished runs.

Every run in the JSONL becomes a finished run (metrics.jsonl as the run wrote it, done.json marked `restored_from`,
no compute time: the report lists restored runs apart). The JSONL must come from the same settings: each run is
checked against the config's steps, tokens per step, evaluation points and held-out size here, and against the layers
the probe evidence picks when the study reaches it (study.run). Restored grid runs carry no trained weights, so
their GSM8K accuracy cannot be measured (accuracy.limit > 0 needs them recomputed).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from rad_megatron.errors import RadError
from rad_megatron.files import read_json, write_text_atomic
from rad_megatron.study.report import write_jsonl

RECORD = "restored.json"  # in the study folder: what came from where


def _source_files(prefix: Path) -> tuple[Path, Path]:
    jsonl, probe = prefix.with_name(prefix.name + ".jsonl"), prefix.with_name(prefix.name + "_probe.json")
    if not jsonl.is_file():
        raise RadError(f"--restore {prefix}: {jsonl} does not exist; give a report's path without the suffix, "
                       f"e.g. docs/results/convergence_v2")
    return jsonl, probe


def _runs(jsonl: Path) -> dict[tuple[str, bool], list[dict]]:
    """(run name, is an LR-sweep run) -> its records in file order."""
    runs = defaultdict(list)
    for n, line in enumerate(jsonl.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            key = (row["run"], row.get("phase") == "lr sweep")
        except (ValueError, KeyError, TypeError):
            raise RadError(f"--restore {jsonl}: line {n} is not a study metrics record; give a `rad study` report's "
                           f"JSONL") from None
        runs[key].append({k: v for k, v in row.items() if k != "phase"})
    return runs


def _check_run(name: str, rows: list[dict], cfg, sweep: bool, jsonl: Path) -> None:
    t = cfg.train
    per_step = t.micro_batch_size * cfg.data.seq_len
    train = [r for r in rows if r.get("kind") == "train"]
    evals = [r for r in rows if r.get("kind") == "eval"]
    want_evals = 0 if sweep else len({*range(t.eval_every, t.steps + 1, t.eval_every), t.steps}) + 1
    problems = []
    if [r.get("step") for r in train] != list(range(1, t.steps + 1)):
        problems.append(f"{len(train)} training steps (the config has train.steps={t.steps})")
    elif any(r.get("tokens") != r["step"] * per_step for r in train):
        problems.append(f"another batch size (the config has {per_step} tokens per step)")
    if len(evals) != want_evals:
        problems.append(f"{len(evals)} held-out evaluations (the config makes {want_evals})")
    elif any(len(r.get("example_kl", ())) != cfg.data.held_out for r in evals):
        problems.append(f"another held-out size (the config has data.held_out={cfg.data.held_out})")
    if problems:
        raise RadError(f"--restore {jsonl}: run {name} has {problems[0]}; it was made with other settings, so "
                       f"restore it only into a study with the same config")


def _restore_probe(folder: Path, probe: Path, cfg) -> float | None:
    """The merged probe evidence as the folder's per-layer probe file (it holds the heuristics and the searches, so
    the study probes nothing); returns the probe's recorded compute seconds."""
    target = folder / "probe_per_layer.json"
    if cfg.probe.file or target.is_file() or not probe.is_file():
        return None
    report = read_json(probe, "--restore", "give the prefix of a `rad study` report")
    if not report.get("per_layer"):
        raise RadError(f"--restore {probe} has no per-layer probe scores; restore without it or re-run the probe")
    report = {k: v for k, v in report.items() if k != "sources"}
    write_text_atomic(target, json.dumps(report, indent=1))
    searches = report.get("searches", {}).values()
    return sum(report.get("seconds", {}).values()) + sum(s.get("seconds", {}).get("search", 0.0) for s in searches)


def read_report(prefix, cfg) -> tuple[Path, Path, dict]:
    """(its JSONL, its probe file, its runs) of the report at `prefix`, each run checked against `cfg`: called before
    the study touches its folder, so a report made with other settings changes nothing."""
    jsonl, probe = _source_files(Path(prefix))
    runs = _runs(jsonl)
    for (name, sweep), rows in runs.items():
        _check_run(name, rows, cfg, sweep, jsonl)
    return jsonl, probe, runs


def restore_study(folder: Path, cfg, report: tuple[Path, Path, dict], log=print) -> float | None:
    """Write every run of `report` (read_report) that `folder` has not finished; returns the restored probe's
    compute seconds (None when no probe file was restored). A run the folder already has is left as it is."""
    jsonl, probe, runs = report
    probe_seconds = _restore_probe(folder, probe, cfg)
    written = {"grid": [], "sweep": []}
    for (name, sweep), rows in runs.items():
        run = folder / "runs" / ("sweep" if sweep else "") / name
        if (run / "done.json").is_file():
            continue
        run.mkdir(parents=True, exist_ok=True)
        write_jsonl(run / "metrics.jsonl", rows)
        fields = {k: rows[0][k] for k in ("run", "strategy", "k", "init", "seed", "layers", "peak_lr")}
        write_text_atomic(run / "done.json", json.dumps({**fields, "seconds": None, "restored_from": str(jsonl),
                                                      "final": rows[-1]}, indent=2))
        written["sweep" if sweep else "grid"].append(name)
    record = folder / RECORD
    old = json.loads(record.read_text()) if record.is_file() else []
    entry = {"source": str(jsonl), "grid": written["grid"], "sweep": written["sweep"],
             "probe": str(probe) if probe_seconds is not None else None}
    write_text_atomic(record, json.dumps(old + [entry], indent=1))
    log(f"restored {len(written['grid'])} grid and {len(written['sweep'])} LR-sweep runs from {jsonl}"
        f"{' and the probe evidence' if probe_seconds is not None else ''}")
    return probe_seconds


def restored_lines(folder: Path) -> list[str]:
    """The report's line on runs that were restored rather than computed in this folder."""
    record = folder / RECORD
    if not record.is_file():
        return []
    entries = json.loads(record.read_text())
    grid = sum(len(e["grid"]) for e in entries)
    sweep = sum(len(e["sweep"]) for e in entries)
    sources = ", ".join(sorted({f"`{e['source']}`" for e in entries}))
    probe = "; the probe evidence too (its recorded compute time is the probe's above)" if any(
        e["probe"] for e in entries) else ""
    return [f"* restored from {sources} (`--restore`), not recomputed here: {grid} grid runs and {sweep} LR-sweep "
            f"runs made earlier with the same settings (their compute time is not in the totals above){probe}"]
