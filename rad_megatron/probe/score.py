"""Evaluating one skip set: self-speculative decoding over the probe prompts, reduced to one objective."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from rad_megatron.inference.speculative import SpecStats, speculative_generate
from rad_megatron.probe.cost import cost_model_throughput, expected_throughput

OBJECTIVES = ("throughput", "expected_throughput", "tokens_per_s", "acceptance")


@dataclass
class Trial:
    """One evaluated skip set."""

    skip: list[int]
    acceptance: float
    mean_accepted: float
    mean_drafted: float
    tokens_per_s: float
    throughput: float
    """Cost-model throughput in tokens per full-model forward (greedy acceptance counts)."""
    expected_acceptance: float
    """alpha: mean over generated draft positions of sum_v min(p_full(v), p_draft(v)) (speculative sampling's
    acceptance probability; continuous, so it separates sets whose greedy drafts are all accepted)."""
    expected_throughput: float
    """The cost model with alpha: (1 - alpha^(K+1)) / ((1 - alpha) (K c_draft + 1)), K = draft_len."""

    def objective(self, name: str) -> float:
        return getattr(self, name)

    def to_dict(self) -> dict:
        return asdict(self)


def rank_key(trial: dict, objective: str) -> tuple:
    """Sort key of a trial dict, best first: the objective, then alpha (it breaks the ties of greedy counts at the
    no-skip ceiling), then the lower layer indices."""
    return (-trial[objective], -trial.get("expected_acceptance", 0.0), sorted(trial["skip"]))


@dataclass
class ProbeSettings:
    """How each skip set is evaluated."""

    draft_len: int = 4
    """K: draft tokens per verify step (upper bound with `confidence`)."""
    max_new_tokens: int = 32
    """Tokens generated per prompt."""
    confidence: float | None = None
    """Adaptive draft exit: stop drafting when the draft's top probability is below this (None: fixed K)."""
    eos_id: int | None = None


def evaluate(model, prompts: list[list[int]], skip, settings: ProbeSettings, costs: dict) -> Trial:
    total = SpecStats()
    for p in prompts:
        _, stats = speculative_generate(model, p, skip, settings.draft_len, settings.max_new_tokens,
                                        eos_id=settings.eos_id, confidence=settings.confidence)
        total = total.merge(stats)
    skip = sorted(int(b) for b in skip)
    alpha = total.expected_acceptance
    return Trial(skip=skip, acceptance=total.acceptance_rate, mean_accepted=total.mean_accepted,
                 mean_drafted=total.mean_drafted, tokens_per_s=total.tokens_per_s,
                 throughput=cost_model_throughput(total.mean_accepted, total.mean_drafted, costs, skip),
                 expected_acceptance=alpha,
                 expected_throughput=expected_throughput(alpha, settings.draft_len, costs, skip))
