"""Convergence numbers from the study's raw metrics, with bootstrap intervals over seeds and held-out examples.

Every held-out evaluation records, per example, its summed KL(teacher || student), summed NLL and answer-token count.
For one (k, init) and a set of seeds, a strategy's curve is the seed-mean of the per-seed held-out KL (sum over the
examples' KL / their tokens) at each evaluation. A bootstrap resample draws the seeds and the examples with replacement
(the same draw for every strategy of the cell, so comparisons stay paired) and recomputes every number from the
resampled curves; intervals are the 2.5 / 97.5 percentiles.

Tokens to target: the training tokens from which a curve stays at or below the target for the rest of the budget,
interpolated linearly between the last evaluation above the target and the next one; 0 if the curve never exceeds it
(e.g. a `rad_zero` student that starts below a baseline's end point and stays there); None (not reached) if it ends
above. Staying below, not first touching, keeps a student that starts below the target but is pushed above it by its
first updates (the rad_zero gate opening) from counting as converged at 0 tokens. Ratio = tokens(baseline) /
tokens(rad): 0 when rad never reaches it, inf when rad needs 0 and the baseline more. Between evaluations the curve is
taken as linear, so the ratio is resolved to the evaluation spacing, not capped by it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class Curves:
    """One strategy at one (k, init): per seed, per evaluation, per example sums."""

    seeds: list[int]
    tokens: np.ndarray
    """[T] training tokens of each evaluation."""
    kl: np.ndarray
    """[S, T, E] summed KL per example."""
    nll: np.ndarray
    """[S, T, E] summed NLL per example."""
    count: np.ndarray
    """[E] answer tokens per example."""

    def select(self, seeds: list[int]) -> "Curves":
        at = [self.seeds.index(s) for s in seeds]
        return Curves(list(seeds), self.tokens, self.kl[at], self.nll[at], self.count)


def gather_curves(rows: list[dict]) -> dict[tuple, Curves]:
    """(strategy, k, init) -> Curves, from the eval rows of finished grid runs (runs that lack per-example data or
    whose evaluation schedule differs from the cell's first seed are left out, and so are held-out examples whose
    answer was cut off entirely: they have no tokens to score)."""
    runs: dict[tuple, dict] = {}
    for r in rows:
        if r.get("kind") == "eval" and "example_kl" in r:
            runs.setdefault((r["strategy"], r["k"], r["init"], r["seed"]), {})[r["tokens"]] = r
    out: dict[tuple, Curves] = {}
    for (strategy, k, init, seed), evals in sorted(runs.items()):
        tokens = np.array(sorted(evals), dtype=float)
        kl = np.array([evals[t]["example_kl"] for t in sorted(evals)])
        nll = np.array([evals[t]["example_nll"] for t in sorted(evals)])
        count = np.array(evals[sorted(evals)[0]]["example_tokens"], dtype=float)
        keep = count > 0
        kl, nll, count = kl[:, keep], nll[:, keep], count[keep]
        cell = out.get((strategy, k, init))
        if cell is None:
            out[(strategy, k, init)] = Curves([seed], tokens, kl[None], nll[None], count)
        elif np.array_equal(cell.tokens, tokens) and cell.kl.shape[2] == kl.shape[1]:
            out[(strategy, k, init)] = Curves(cell.seeds + [seed], tokens, np.concatenate([cell.kl, kl[None]]),
                                              np.concatenate([cell.nll, nll[None]]), count)
    return out


def draws(n_seeds: int, n_examples: int, resamples: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap multiplicities ([B+1, S], [B+1, E]); row 0 is the original sample (all ones)."""
    rng = np.random.default_rng(seed)
    ws = rng.multinomial(n_seeds, [1 / n_seeds] * n_seeds, size=resamples)
    we = rng.multinomial(n_examples, [1 / n_examples] * n_examples, size=resamples)
    return (np.vstack([np.ones((1, n_seeds)), ws]).astype(float),
            np.vstack([np.ones((1, n_examples)), we]).astype(float))


def resampled(c: Curves, w: tuple[np.ndarray, np.ndarray], what: str = "kl") -> np.ndarray:
    """[B+1, T] seed-mean held-out KL (what='kl') or perplexity ('ppl') per resample; row 0 = the data."""
    ws, we = w
    sums = np.einsum("ste,be->bst", c.kl if what == "kl" else c.nll, we) / (we @ c.count)[:, None, None]
    if what == "ppl":
        sums = np.exp(sums)
    return np.einsum("bs,bst->bt", ws / ws.sum(1, keepdims=True), sums)


def tokens_to_stay(tokens: np.ndarray, curves: np.ndarray, target: np.ndarray) -> np.ndarray:
    """[B] tokens from which each curve [B, T] stays <= its target [B] (nan: ends above it)."""
    above = curves > target[:, None] + 1e-12
    last = np.where(above.any(1), curves.shape[1] - 1 - np.argmax(above[:, ::-1], axis=1), -1)
    out = np.zeros(len(curves))
    out[above[:, -1]] = np.nan
    mid = (last >= 0) & ~above[:, -1]
    i = last[mid]
    k0, k1 = curves[mid, i], curves[mid, i + 1]
    out[mid] = tokens[i] + (tokens[i + 1] - tokens[i]) * (k0 - target[mid]) / (k0 - k1)
    return out


def ratios(t_base: np.ndarray, t_rad: np.ndarray) -> np.ndarray:
    """tokens(baseline) / tokens(rad): 0 where rad never reaches the target, inf where it needs 0 tokens and the
    baseline more, 1 where both need 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(t_rad > 0, t_base / t_rad, np.where(t_base > 0, np.inf, 1.0))
    return np.where(np.isnan(t_rad), 0.0, r)


def interval(values: np.ndarray) -> tuple[float, float]:
    """95% percentile interval that never interpolates between a finite value and inf."""
    return (float(np.quantile(values, 0.025, method="lower")), float(np.quantile(values, 0.975, method="higher")))


@dataclass
class Comparison:
    """RAD against one baseline at one (k, init), on their common seeds."""

    baseline: str
    seeds: list[int]
    base_final: tuple[float, float, float]
    """Baseline's final held-out KL: (value, 95% interval low, high); likewise below."""
    rad_final: tuple[float, float, float]
    diff: tuple[float, float, float]
    """Baseline final KL - rad final KL (positive: rad ends lower)."""
    t_base: float
    t_rad: float
    """Tokens to the baseline's final KL (nan: not reached)."""
    ratio: tuple[float, float, float]
    budget: float

    @property
    def verdict(self) -> str:
        lo, hi = self.ratio[1], self.ratio[2]
        return "win" if lo > 1 else "loss" if hi < 1 else "tie"


def _triple(v: np.ndarray) -> tuple[float, float, float]:
    return (float(v[0]), *interval(v[1:]))


def compare(rad: Curves, base: Curves, name: str, resamples: int) -> Comparison | None:
    seeds = [s for s in rad.seeds if s in base.seeds]
    if not seeds or not np.array_equal(rad.tokens, base.tokens):
        return None
    rad, base = rad.select(seeds), base.select(seeds)
    w = draws(len(seeds), len(rad.count), resamples)
    r_kl, b_kl = resampled(rad, w), resampled(base, w)
    target = b_kl[:, -1]
    t_b, t_r = tokens_to_stay(base.tokens, b_kl, target), tokens_to_stay(rad.tokens, r_kl, target)
    return Comparison(name, seeds, _triple(b_kl[:, -1]), _triple(r_kl[:, -1]), _triple(b_kl[:, -1] - r_kl[:, -1]),
                      float(t_b[0]), float(t_r[0]), _triple(ratios(t_b, t_r)), float(rad.tokens[-1]))


def final_values(c: Curves, resamples: int) -> dict[str, tuple[float, float, float]]:
    """Start and final held-out KL and final perplexity of one strategy, each (value, low, high)."""
    w = draws(len(c.seeds), len(c.count), resamples)
    kl, ppl = resampled(c, w), resampled(c, w, "ppl")
    return {"start_kl": _triple(kl[:, 0]), "final_kl": _triple(kl[:, -1]), "final_ppl": _triple(ppl[:, -1])}


def band(c: Curves, resamples: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(seed-mean KL curve, 2.5% and 97.5% pointwise bootstrap bands) for the plot."""
    kl = resampled(c, draws(len(c.seeds), len(c.count), resamples))
    return kl[0], np.quantile(kl[1:], 0.025, axis=0), np.quantile(kl[1:], 0.975, axis=0)


def fmt(value: float, spec: str = ".3f") -> str:
    if math.isnan(value):
        return "n/r"
    if math.isinf(value):
        return "∞"
    return f"{value:{spec}}"


def fmt_ci(t: tuple[float, float, float], spec: str = ".3f") -> str:
    return f"{fmt(t[0], spec)} [{fmt(t[1], spec)}, {fmt(t[2], spec)}]"
