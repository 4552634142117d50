"""Which attention layers to replace: RAD's probe choice and the baselines it is compared against.

  rad      the probe's searched skip set of size k (the Bayesian search's best set; RAD's choice).
  uniform  MIL's interleaving: every n-th attention layer starting at the first one (MIL's `ssm_layers` are
           [0, n, 2n, ...]); for k of L layers, layer floor(i * L / k) for i < k.
  random   k layers drawn with a seeded generator (the same seed gives the same set).
  worst    the k layers whose single-layer probe scores are lowest (the probe's least redundant layers).
  kl       the k layers whose removal alone moves the output least: smallest KL(full || layer skipped), a cheap
           heuristic that needs no decoding.

The probe evidence (per-layer scores, per-layer skip KL, searched sets per k) comes from one or more probe.json files
(`ProbeEvidence.from_reports`); strategies that need evidence refuse to run without it.
"""

from __future__ import annotations

import random as _random
from dataclasses import dataclass, field

from rad_megatron.errors import RadError

STRATEGIES = ("rad", "uniform", "random", "worst", "kl")
NEEDS_PROBE = {"rad": "searched sets", "worst": "per-layer scores", "kl": "per-layer skip KL"}


@dataclass
class ProbeEvidence:
    """What a probe measured, reduced to what the strategies read."""

    scores: dict[int, float] = field(default_factory=dict)
    """Per attention layer: the probe objective when that layer alone is skipped (higher = more redundant)."""
    skip_kl: dict[int, float] = field(default_factory=dict)
    """Per attention layer: mean KL(full || that layer skipped) over the probe prompts (lower = more redundant)."""
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
            kl = r.get("per_layer_skip_kl") or r.get("sanity", {}).get("per_layer_skip_kl")
            if not ev.skip_kl and kl:
                ev.skip_kl = {int(b): float(v) for b, v in kl.items()}
            if r.get("chosen"):
                ev.searched.setdefault(len(r["chosen"]["skip"]), sorted(int(b) for b in r["chosen"]["skip"]))
        return ev

    def to_dict(self) -> dict:
        return {"objective": self.objective, "scores": {str(b): v for b, v in sorted(self.scores.items())},
                "skip_kl": {str(b): v for b, v in sorted(self.skip_kl.items())},
                "searched": {str(k): v for k, v in sorted(self.searched.items())}}


def _check_k(k: int, layers: list[int]) -> None:
    if not 1 <= k <= len(layers):
        raise RadError(f"k={k} must be between 1 and the number of attention layers ({len(layers)})")


def _lowest(values: dict[int, float], layers: list[int], k: int, what: str) -> list[int]:
    missing = [b for b in layers if b not in values]
    if missing:
        raise RadError(f"the probe has no {what} for attention layers {missing}; run the probe on this model")
    return sorted(sorted(layers, key=lambda b: (values[b], b))[:k])


def select_layers(strategy: str, k: int, attention_layers: list[int], evidence: ProbeEvidence | None = None,
                  seed: int = 0) -> list[int]:
    """The k attention layers `strategy` replaces (sorted)."""
    layers = sorted(int(b) for b in attention_layers)
    if strategy not in STRATEGIES:
        raise RadError(f"strategy '{strategy}' is not one of {', '.join(STRATEGIES)}")
    _check_k(k, layers)
    if strategy == "uniform":
        return sorted({layers[i * len(layers) // k] for i in range(k)})
    if strategy == "random":
        return sorted(_random.Random(seed).sample(layers, k))
    if evidence is None:
        raise RadError(f"strategy '{strategy}' needs the probe's {NEEDS_PROBE[strategy]}; give a probe.json "
                       f"(--probe) or let the pipeline run the probe")
    if strategy == "worst":
        return _lowest(evidence.scores, layers, k, "per-layer scores")
    if strategy == "kl":
        return _lowest(evidence.skip_kl, layers, k, "per-layer skip KL")
    if k not in evidence.searched:
        have = sorted(evidence.searched) or "none"
        raise RadError(f"strategy 'rad' needs the probe's searched set for k={k} (searched sizes: {have}); run "
                       f"`rad probe --k {k}`")
    chosen = evidence.searched[k]
    bad = [b for b in chosen if b not in layers]
    if bad:
        raise RadError(f"the probe's set for k={k} names layers {bad} that are not attention layers of this model")
    return sorted(chosen)
