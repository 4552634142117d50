"""Convergence numbers from the study's raw metrics: held-out KL curves, tokens needed to reach a target KL
(linear interpolation between evaluations), and the per-(strategy, k, init) summary against `uniform`."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field


def curves(rows: list[dict]) -> dict[tuple, list[tuple[int, float]]]:
    """(strategy, k, init, seed) -> [(tokens, held-out KL)] in token order, from the JSONL's eval rows."""
    out: dict[tuple, list] = {}
    for r in rows:
        if r.get("kind") == "eval":
            out.setdefault((r["strategy"], r["k"], r["init"], r["seed"]), []).append((r["tokens"], r["heldout_kl"]))
    return {key: sorted(v) for key, v in out.items()}


def tokens_to_target(curve: list[tuple[int, float]], target: float, trained: bool = False) -> float | None:
    """Training tokens at which the KL first reaches `target`: 0 if it starts there, interpolated linearly between
    the two evaluations around the crossing, None if it never gets there within the budget.

    trained=True ignores the untrained start (step 0): the first evaluation after training began that is at or
    below the target counts in full, later crossings interpolate as above. A student that starts below the target
    but is pushed above it by its first updates (rad_zero's gated-norm cliff) is then timed by its recovery."""
    prev = None
    for tokens, kl in curve[1:] if trained else curve:
        if kl <= target:
            if prev is None:
                return float(tokens)
            (t0, k0) = prev
            return t0 + (tokens - t0) * (k0 - target) / (k0 - kl)
        prev = (tokens, kl)
    return None


def speedup(t_uniform: float, t_other: float | None) -> float | None:
    """tokens_to_target(uniform) / tokens_to_target(other): inf when `other` starts at the target (0 tokens) and
    uniform needed some, None when `other` never reached it."""
    if t_other is None:
        return None
    if t_other == 0:
        return 1.0 if t_uniform == 0 else math.inf
    return t_uniform / t_other


@dataclass
class Cell:
    """One table row: a strategy at one k and init, with one value per seed."""

    strategy: str
    k: int
    init: str
    seeds: list[int] = field(default_factory=list)
    final_kl: list[float] = field(default_factory=list)
    start_kl: list[float] = field(default_factory=list)
    final_ppl: list[float] = field(default_factory=list)
    tokens: list[float | None] = field(default_factory=list)
    ratio: list[float | None] = field(default_factory=list)
    tokens_trained: list[float | None] = field(default_factory=list)
    ratio_trained: list[float | None] = field(default_factory=list)
    budget: int = 0


def summarize(rows: list[dict], reference: str = "uniform") -> list[Cell]:
    """Every (strategy, k, init) with the seeds for which both it and `reference` finished; the target of each seed is
    the reference's final held-out KL."""
    cv = curves(rows)
    final_ppl = {}
    for r in rows:
        if r.get("kind") == "eval":
            key = (r["strategy"], r["k"], r["init"], r["seed"])
            if r["tokens"] == cv[key][-1][0]:
                final_ppl[key] = r["heldout_ppl"]
    cells: dict[tuple, Cell] = {}
    for (strategy, k, init, seed), curve in sorted(cv.items()):
        ref = cv.get((reference, k, init, seed))
        if ref is None:
            continue
        target = ref[-1][1]
        t_u, t_s = tokens_to_target(ref, target), tokens_to_target(curve, target)
        c = cells.setdefault((strategy, k, init), Cell(strategy, k, init, budget=curve[-1][0]))
        c.seeds.append(seed)
        c.final_kl.append(curve[-1][1])
        c.start_kl.append(curve[0][1])
        c.final_ppl.append(final_ppl[(strategy, k, init, seed)])
        c.tokens.append(t_s)
        c.ratio.append(speedup(t_u, t_s))
        t_u, t_s = tokens_to_target(ref, target, trained=True), tokens_to_target(curve, target, trained=True)
        c.tokens_trained.append(t_s)
        c.ratio_trained.append(speedup(t_u, t_s))
    return list(cells.values())


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 with one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt_values(values: list[float | None], fmt: str, budget: int | None = None) -> str:
    """'mean ± sd' when every seed has a finite value, else the per-seed values ('∞' started at the target,
    '> budget' / 'n/r' never reached it)."""
    if values and all(v is not None and math.isfinite(v) for v in values):
        m, s = mean_sd(values)
        return f"{m:{fmt}} ± {s:{fmt}}"

    def one(v):
        if v is None:
            return f"> {budget}" if budget is not None else "n/r"
        return "∞" if math.isinf(v) else f"{v:{fmt}}"

    return " / ".join(one(v) for v in values)
