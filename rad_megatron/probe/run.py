"""The probe as one library call: per-layer scores, then a Bayesian search for the best skip set of size k."""

from __future__ import annotations

import time
from dataclasses import asdict

from rad_megatron.model.skip import check_skip_set
from rad_megatron.probe.cost import layer_costs
from rad_megatron.probe.score import ProbeSettings, evaluate
from rad_megatron.probe.search import Replicas, bayesian_search, per_layer_scores


def run_probe(model, prompts: list[list[int]], k: int, trials: int, settings: ProbeSettings,
              replicas: Replicas | None = None, objective: str = "throughput", costs: str | dict = "flops",
              seed: int = 0) -> dict:
    """The probe.json content (all ranks return the same)."""
    from rad_megatron.errors import RadError

    replicas = replicas or Replicas()
    attn = model.rad_config.attention_layers
    if not 1 <= k <= len(attn):
        raise RadError(f"--k {k} must be between 1 and the number of attention layers ({len(attn)})")
    if not prompts:
        raise RadError("the probe needs at least one prompt")
    cost = costs if isinstance(costs, dict) else layer_costs(model, costs)
    cost = replicas.broadcast(cost)  # measured costs differ per rank: use rank 0's everywhere
    t0 = time.perf_counter()
    # skipping nothing (the upper bound on acceptance) is one more task of the per-layer phase
    baseline, *per_layer = per_layer_scores(model, prompts, settings, cost, replicas, with_baseline=True)
    t_layers = time.perf_counter() - t0
    ranked = sorted(per_layer, key=lambda t: (-t.objective(objective), t.skip[0]))
    warm = sorted(t.skip[0] for t in ranked[:k])
    search = bayesian_search(model, prompts, k, trials, settings, cost, replicas, objective=objective, seed=seed,
                             warm_start=warm)
    return {
        "settings": {**asdict(settings), "k": k, "trials": trials, "objective": objective, "seed": seed,
                     "num_prompts": len(prompts), "dp": replicas.dp, "tp": model.rad_tp},
        "costs": cost,
        "baseline_no_skip": baseline.to_dict(),
        "per_layer": [t.to_dict() for t in per_layer],
        "per_layer_ranking": [t.skip[0] for t in ranked],
        "top_k_by_per_layer": warm,
        "trials": [t.to_dict() for t in search.trials],
        "chosen": search.best.to_dict(),
        "seconds": {"per_layer": t_layers, "search_propose": search.propose_seconds,
                    "total": time.perf_counter() - t0},
    }


def evaluate_set(model, prompts, skip, settings: ProbeSettings, costs: str | dict = "flops") -> dict:
    skip = check_skip_set(model.rad_config, skip)
    cost = costs if isinstance(costs, dict) else layer_costs(model, costs)
    return evaluate(model, prompts, skip, settings, cost).to_dict()
