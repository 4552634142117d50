"""Which attention layers to replace: RAD's probe choice and the baselines it is compared against.

  rad            the probe's searched skip set of size k (the Bayesian search's best set; RAD's choice).
  uniform        MIL's interleaving: every n-th attention layer starting at the first one (MIL's `ssm_layers` are
                 [0, n, 2n, ...]); for k of L layers, layer floor(i * L / k) for i < k.
  uniform-keep0  the same spacing with layer 0 kept as attention: the last layer of each of the k equal segments,
                 floor((i + 1) * L / k) - 1 (so the set ends at the last layer).
  random         k layers drawn with a seeded generator (the same seed gives the same set).
  worst          the k layers whose single-layer probe scores are lowest (the probe's least redundant layers).
  kl             the k layers whose removal alone moves the next-token distribution least: smallest KL(full || layer
                 skipped) on the full model's own greedy continuation of the probe prompts (no speculative decoding).
  bi             ShortGPT's Block Influence (Men et al. 2024, arXiv 2403.03853): the k blocks whose output is most
                 similar to their input (smallest 1 - cosine similarity).
  attn-sim       "What Matters in Transformers? Not All Attention is Needed" (He et al. 2024, arXiv 2406.15786): the
                 k attention sub-blocks whose output (input + attention) is most similar to their input.

kl, bi and attn-sim are measured by probe.redundancy on the probe's prompts; the probe evidence (per-layer scores and
alpha, those heuristics, searched sets per k) comes from one or more probe.json files (`ProbeEvidence.from_reports`);
strategies that need evidence refuse to run without it.
"""

from __future__ import annotations

import random as _random
from dataclasses import dataclass, field

from rad_megatron.errors import RadError

STRATEGIES = ("rad", "uniform", "uniform-keep0", "random", "worst", "kl", "bi", "attn-sim")
HEURISTIC = {"kl": "kl", "bi": "bi", "attn-sim": "attn_sim"}
"""Strategy -> its per-layer heuristic in probe.json's `redundancy` section (lower = more redundant)."""
NEEDS_PROBE = {"rad": "searched sets", "worst": "per-layer scores",
               "kl": "per-layer skip KL on its greedy continuation", "bi": "per-layer block influence",
               "attn-sim": "per-layer attention similarity"}


@dataclass
class ProbeEvidence:
    """What a probe measured, reduced to what the strategies read."""

    scores: dict[int, float] = field(default_factory=dict)
    """Per attention layer: the probe objective when that layer alone is skipped (higher = more redundant)."""
    alpha: dict[int, float] = field(default_factory=dict)
    """Per attention layer: expected acceptance alpha with that layer alone skipped (breaks ties in `scores`)."""
    heuristics: dict[str, dict[int, float]] = field(default_factory=dict)
    """kl | bi | attn_sim -> per attention layer value (lower = more redundant); probe.redundancy."""
    searched: dict[int, list[int]] = field(default_factory=dict)
    """Per skip-set size k: the search's best set."""
    objective: str = "throughput"
    """The probe objective the scores are in."""

    @classmethod
    def from_reports(cls, reports: list[dict]) -> "ProbeEvidence":
        """Merge probe.json contents: per-layer data from the first report that has it, a searched set per k."""
        ev = cls()
        for r in reports:
            obj = r.get("settings", {}).get("objective", ev.objective)
            if not ev.scores and r.get("per_layer"):
                ev.objective = obj
                ev.scores = {int(t["skip"][0]): float(t[obj]) for t in r["per_layer"]}
                ev.alpha = {int(t["skip"][0]): float(t["expected_acceptance"]) for t in r["per_layer"]
                            if "expected_acceptance" in t}
            for name, values in r.get("redundancy", {}).items():
                if name in HEURISTIC.values() and name not in ev.heuristics:
                    ev.heuristics[name] = {int(b): float(v) for b, v in values.items()}
            for found in [r, *r.get("searches", {}).values()]:  # a study's merged evidence keeps its searches apart
                if found.get("chosen"):
                    skip = sorted(int(b) for b in found["chosen"]["skip"])
                    ev.searched.setdefault(len(skip), skip)
        return ev

    def to_dict(self) -> dict:
        def keyed(d):
            return {str(b): v for b, v in sorted(d.items())}

        return {"objective": self.objective, "scores": keyed(self.scores), "alpha": keyed(self.alpha),
                "heuristics": {n: keyed(v) for n, v in self.heuristics.items()},
                "searched": {str(k): v for k, v in sorted(self.searched.items())}}


def _check_k(k: int, layers: list[int]) -> None:
    if not 1 <= k <= len(layers):
        raise RadError(f"k={k} must be between 1 and the number of attention layers ({len(layers)})")


def _lowest(values: dict[int, float], layers: list[int], k: int, what: str, tie: dict | None = None) -> list[int]:
    missing = [b for b in layers if b not in values]
    if missing:
        raise RadError(f"the probe has no {what} for attention layers {missing}; run `rad probe` on this model "
                       f"(it measures them)")
    tie = tie or {}
    return sorted(sorted(layers, key=lambda b: (values[b], tie.get(b, 0.0), b))[:k])


def _uniform(layers: list[int], k: int, keep_first: bool) -> list[int]:
    n = len(layers)
    if keep_first:
        return sorted({layers[(i + 1) * n // k - 1] for i in range(k)})
    return sorted({layers[i * n // k] for i in range(k)})


def select_layers(strategy: str, k: int, attention_layers: list[int], evidence: ProbeEvidence | None = None,
                  seed: int = 0) -> list[int]:
    """The k attention layers `strategy` replaces (sorted)."""
    layers = sorted(int(b) for b in attention_layers)
    if strategy not in STRATEGIES:
        raise RadError(f"strategy '{strategy}' is not one of {', '.join(STRATEGIES)}")
    _check_k(k, layers)
    if strategy in ("uniform", "uniform-keep0"):
        return _uniform(layers, k, keep_first=strategy == "uniform-keep0")
    if strategy == "random":
        return sorted(_random.Random(seed).sample(layers, k))
    if evidence is None:
        raise RadError(f"strategy '{strategy}' needs the probe's {NEEDS_PROBE[strategy]}; give a probe.json "
                       f"(--probe) or let the pipeline run the probe")
    if strategy == "worst":
        return _lowest(evidence.scores, layers, k, "per-layer scores", tie=evidence.alpha)
    if strategy in HEURISTIC:
        return _lowest(evidence.heuristics.get(HEURISTIC[strategy], {}), layers, k, NEEDS_PROBE[strategy])
    if k not in evidence.searched:
        have = sorted(evidence.searched) or "none"
        raise RadError(f"strategy 'rad' needs the probe's searched set for k={k} (searched sizes: {have}); run "
                       f"`rad probe --k {k}`")
    chosen = evidence.searched[k]
    bad = [b for b in chosen if b not in layers]
    if bad:
        raise RadError(f"the probe's set for k={k} names layers {bad} that are not attention layers of this model")
    return sorted(chosen)
