"""The study's runs: the LR sweep (every strategy and init tries each of its init's LRs at one k on the first seed), the
LR each (strategy, init) keeps, and the grid at those LRs (seed-major, so a study cut short still has whole seeds).

The LR is chosen on the training loss over the last quarter of the steps, not on the held-out KL the report compares,
so no strategy's reported numbers are a best-of-three on the held-out set; and sweep runs skip the held-out evaluations
(most of a run's cost), so the sweep costs about a fifth of the grid runs it tunes. The grid's run at the kept LR
(same k and seed) retrains the same trajectory with its evaluations.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

from rad_megatron.study.train import RunSpec, is_done

Layers = Callable[[str, int, int], tuple]  # (strategy, k, seed) -> the layers it replaces


def sweep_specs(cfg, layers: Layers) -> list[RunSpec]:
    t = cfg.train
    if not t.lr_sweep:
        return []
    seed, k = cfg.seeds[0], cfg.sweep_k
    return [RunSpec(s, k, init, seed, layers(s, k, seed), float(lr))
            for init in cfg.inits for s in cfg.strategies for lr in t.lr_sweep[init]]


def tail_loss(rows: list[dict]) -> float:
    """Mean training loss over the last quarter of the steps (at least one); inf if it is not finite."""
    losses = [r["loss"] for r in sorted((r for r in rows if r.get("kind") == "train"), key=lambda r: r["step"])]
    tail = losses[-max(1, len(losses) // 4):]
    value = sum(tail) / len(tail) if tail else math.inf
    return value if math.isfinite(value) else math.inf


def read_metrics(folder: Path) -> list[dict]:
    return [json.loads(ln) for ln in (folder / "metrics.jsonl").read_text().splitlines() if ln.strip()]


def choose_lrs(cfg, sweep: list[RunSpec], folder: Path) -> dict[tuple[str, str], dict]:
    """(strategy, init) -> {"lr": kept LR, "tail_loss": {lr: value}} for every pair whose sweep is complete (every
    pair, at init_lr / lr, without a sweep)."""
    if not sweep:
        return {(s, i): {"lr": cfg.train.lr_for(i), "tail_loss": {}} for s in cfg.strategies for i in cfg.inits}
    by_pair: dict[tuple, list[RunSpec]] = {}
    for spec in sweep:
        by_pair.setdefault((spec.strategy, spec.init), []).append(spec)
    out = {}
    for pair, specs in by_pair.items():
        if not all(is_done(folder / s.name) for s in specs):
            continue
        losses = {s.lr: tail_loss(read_metrics(folder / s.name)) for s in specs}
        out[pair] = {"lr": min(losses, key=lambda lr: (losses[lr], lr)), "tail_loss": losses}
    return out


def grid_specs(cfg, layers: Layers, chosen: dict[tuple[str, str], dict]) -> list[RunSpec]:
    """Every (seed, k, init, strategy) whose LR is known, seed-major."""
    return [RunSpec(s, k, init, seed, layers(s, k, seed), chosen[(s, init)]["lr"])
            for seed in cfg.seeds for k in cfg.ks for init in cfg.inits for s in cfg.strategies
            if (s, init) in chosen]


def planned_count(cfg) -> tuple[int, int]:
    """(grid runs, sweep runs)."""
    grid = len(cfg.seeds) * len(cfg.ks) * len(cfg.inits) * len(cfg.strategies)
    return grid, sum(len(cfg.train.lr_sweep.get(i, [])) for i in cfg.inits) * len(cfg.strategies)
