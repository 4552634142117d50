"""The study's report, written into the study folder and copied to `report_dir`: <name>.jsonl (every run's raw metrics,
per-example held-out sums included), <name>.png (held-out KL against tokens with bootstrap bands), <name>_probe.json
(the probe evidence every strategy read) and <name>.md (command, runtime, a plain verdict per (k, init) and baseline,
RAD against each baseline with 95% bootstrap intervals, every strategy's end point, the LR sweep, the layers each
strategy replaced beside every layer's evidence, GSM8K accuracy). It is recomputed from the finished runs alone, so
`rad study ... --max-runs 0` rewrites it from a partial folder (also while another process is still training)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from rad_megatron.files import write_text_atomic
from rad_megatron.study.metrics import compare, final_values, gather_curves
from rad_megatron.study.plot import plot_curves
from rad_megatron.study.tables import (accuracy_lines, comparison_lines, evidence_lines, layer_lines, lr_lines,
                                       strategy_lines)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]


def report_files(name: str) -> tuple[str, ...]:
    return f"{name}.md", f"{name}.png", f"{name}.jsonl", f"{name}_probe.json"


def publish(out: Path, folder: Path, name: str) -> None:
    """Copy the report's files from the study folder to `folder` (each replaced atomically)."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in report_files(name):
        if (out / f).is_file():
            tmp = folder / f".{f}.{os.getpid()}.tmp"
            tmp.write_bytes((out / f).read_bytes())
            os.replace(tmp, folder / f)


def comparisons(curves: dict, strategies: list[str], resamples: int) -> dict[tuple, list]:
    """(k, init) -> RAD against every baseline that has finished seeds in common with it."""
    out = {}
    for (s, k, init), rad in curves.items():
        if s != "rad":
            continue
        comps = [compare(rad, curves[(b, k, init)], b, resamples) for b in strategies
                 if b != "rad" and (b, k, init) in curves]
        out[(k, init)] = [c for c in comps if c is not None]
    return out


def conclusion_lines(cells: dict[tuple, list]) -> list[str]:
    """One plain sentence per (k, init), then the totals, overall and per baseline."""
    lines, totals, per_baseline = [], {"win": 0, "tie": 0, "loss": 0}, {}
    for (k, init), comps in sorted(cells.items()):
        by = {v: [c.baseline for c in comps if c.verdict == v] for v in totals}
        for v in totals:
            totals[v] += len(by[v])
        for c in comps:
            per_baseline.setdefault(c.baseline, {"win": 0, "tie": 0, "loss": 0})[c.verdict] += 1
        parts = [f"faster than {', '.join(by['win'])}" if by["win"] else "",
                 f"level with {', '.join(by['tie'])}" if by["tie"] else "",
                 f"slower than {', '.join(by['loss'])}" if by["loss"] else ""]
        lines.append(f"* k={k}, {init}: RAD is " + "; ".join(p for p in parts if p) + ".")
    n = sum(totals.values())
    if n:
        lines += ["", f"Over all {n} (k, init, baseline) comparisons: RAD faster in {totals['win']}, level in "
                  f"{totals['tie']}, slower in {totals['loss']} (\"faster\" = the 95% interval of tokens(baseline) / "
                  "tokens(rad) lies above 1, \"slower\" = below 1, \"level\" = it contains 1).",
                  "", "Per baseline, over the (k, init) cells: " + "; ".join(
                      f"{b} {t['win']} faster / {t['tie']} level / {t['loss']} slower"
                      for b, t in per_baseline.items()) + "."]
    return lines


def _runtime_lines(seconds: dict, span: tuple[float, float] | None) -> list[str]:
    total = sum(seconds.values())
    out = ["* compute time (wall-clock seconds the study's own steps took; on a shared machine they include the "
           "other jobs' load): " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in seconds.items() if v) +
           f"; total {total / 3600:.2f} h"]
    if span:
        fmt = "%Y-%m-%d %H:%M"
        out.append(f"* first run finished {time.strftime(fmt, time.localtime(span[0]))}, last "
                   f"{time.strftime(fmt, time.localtime(span[1]))} ({(span[1] - span[0]) / 3600:.1f} h apart)")
    return out


def _setup_lines(cfg, plan: dict, n_done: int, held: int) -> list[str]:
    t = cfg.train
    per_step = t.micro_batch_size * cfg.data.seq_len
    return [
        f"* grid runs finished: {n_done} of {plan['grid_planned']} ({len(cfg.strategies)} strategies x k in {cfg.ks} "
        f"x init in {cfg.inits} x seeds {cfg.seeds}); LR-sweep runs finished: {plan['sweep_done']} of "
        f"{plan['sweep_planned']}",
        f"* every run: {t.steps} steps x {t.micro_batch_size} sequences x {cfg.data.seq_len} tokens = "
        f"{t.steps * per_step} tokens of GSM8K train (chat format, loss on answer tokens), warmup + cosine "
        f"({t.optim}), trainable `{t.trainable}`, loss {t.loss or 'forward KL'} on the teacher's top-{t.top_k} "
        f"(+ tail). Same data order for every strategy within a seed; the seed also sets the new layers' default "
        f"init and the `random` set.",
        f"* held-out KL / perplexity: every {t.eval_every * per_step} tokens (and at 0) on {held} held-out "
        f"examples (answer tokens). This spacing is the resolution of every token count below; between evaluations "
        f"the curves are linear, so ratios are interpolated, not capped by the spacing.",
        "* peak LR per (strategy, init): " + (f"the lowest training loss over the last quarter of the steps among "
                                                 f"{t.lr_sweep} at k={cfg.sweep_k}, seed {cfg.seeds[0]} (table below)"
                                                 if t.lr_sweep else
                                                 ", ".join(f"{i} {t.lr_for(i)}" for i in cfg.inits)),
        f"* intervals: 95% bootstrap ({cfg.bootstrap} resamples of seeds and held-out examples, paired across "
        f"strategies)"]


def write_report(out: Path, cfg, command: str, plan: dict, probe: dict, sources: list[str], rows: list[dict],
                 acc: dict, seconds: dict, span: tuple[float, float] | None = None,
                 restored: list[str] = ()) -> Path:
    """Every report file in `out` (and `cfg.report_dir`); returns the markdown path."""
    name, B = cfg.report_name, cfg.bootstrap
    write_jsonl(out / f"{name}.jsonl", rows)
    write_text_atomic(out / f"{name}_probe.json", json.dumps({"sources": sources, **probe}, indent=1))
    curves = gather_curves(rows)
    plot_curves(curves, cfg.strategies, min(B, 500), out / f"{name}.png")
    cells = comparisons(curves, cfg.strategies, B)
    finals = {key: final_values(c, B) for key, c in curves.items()}
    held = len(next(iter(curves.values())).count) if curves else cfg.data.held_out
    lines = [
        "# Convergence v2: does RAD's layer choice beat the cheap heuristics?", "",
        "```bash", command, "```", "",
        *_runtime_lines(seconds, span), *restored, *_setup_lines(cfg, plan, plan["grid_done"], held),
        f"* probe evidence: `{name}_probe.json` (from {', '.join(f'`{s}`' for s in sources) or 'none'})", "",
        "## Verdict", "",
        "RAD's set against each baseline: tokens(baseline) / tokens(rad) to reach the baseline's final held-out KL.",
        "",
        *(conclusion_lines(cells) or ["No (k, init) has finished rad and baseline runs yet."]), "",
        *([f"A reading of these numbers, written for this report: [{cfg.discussion}]({cfg.discussion}).", ""]
          if cfg.discussion else []),
        "## RAD against each baseline", "",
        "Target = the baseline's final held-out KL (seed-mean). Tokens to target = the training tokens from which a "
        "curve stays at or below it (0: it never rises above it; n/r: it ends above it). Ratio = tokens(baseline) / "
        "tokens(rad) (∞: RAD is below the target from its untrained start on; n/r: RAD ends above it). Each value: "
        "the data, then its 95% interval.", "",
        *comparison_lines(cells), "",
        f"![held-out KL against tokens]({name}.png)", "",
        "## Every strategy's start and end point", "", *strategy_lines(finals, {k: c.seeds for k, c in curves.items()},
                                                                       cfg.strategies), "",
        "## Learning rates", "", *(lr_lines(plan["lr"]) if cfg.train.lr_sweep else ["No sweep configured."]), "",
        "## Layers each strategy replaced", "", *layer_lines(plan["grid"]), "",
        "Per attention layer: the probe's objective and alpha with that layer alone skipped (higher = more "
        "redundant; the rank breaks ties by alpha) and the three heuristics (lower = more redundant):", "",
        *evidence_lines(probe, plan["grid"]), "",
        "## GSM8K accuracy", "", *accuracy_lines(acc, plan["grid"], cfg.strategies), "",
        *(["## Limits", "", *[f"* {n}" for n in cfg.notes], ""] if cfg.notes else []),
        f"Raw metrics: `{name}.jsonl` (one line per training step and per evaluation of every grid run, with the "
        f"per-example held-out sums the intervals resample, and the LR-sweep runs' training steps).", ""]
    md = out / f"{name}.md"
    write_text_atomic(md, "\n".join(lines))
    if cfg.report_dir:
        publish(out, Path(cfg.report_dir), name)
    return md
