"""The probe as one library call: per-layer scores (and the cheap redundancy heuristics on the same prompts), then a
Bayesian search for the best skip set of size k. The two phases are also callable alone (the study searches several
k from one per-layer phase)."""

from __future__ import annotations

import time
from dataclasses import asdict

from rad_megatron.model.skip import check_skip_set
from rad_megatron.probe.cost import layer_costs
from rad_megatron.probe.score import ProbeSettings, evaluate, rank_key
from rad_megatron.probe.search import Replicas, bayesian_search, per_layer_scores


def probe_per_layer(model, prompts: list[list[int]], settings: ProbeSettings, replicas: Replicas | None = None,
                    objective: str = "throughput", costs: str | dict = "flops") -> dict:
    """Every attention layer skipped alone (and nothing skipped), ranked by the objective with alpha breaking ties,
    plus the `redundancy` heuristics (kl, bi, attn_sim; probe.redundancy) on the same prompts."""
    from rad_megatron.errors import RadError
    from rad_megatron.probe.redundancy import redundancy_scores

    replicas = replicas or Replicas()
    if not prompts:
        raise RadError("the probe needs at least one prompt")
    cost = costs if isinstance(costs, dict) else layer_costs(model, costs)
    cost = replicas.broadcast(cost)  # measured costs differ per rank: use rank 0's everywhere
    t0 = time.perf_counter()
    # skipping nothing (the upper bound on acceptance) is one more task of the per-layer phase
    baseline, *per_layer = per_layer_scores(model, prompts, settings, cost, replicas, with_baseline=True)
    per_layer = [t.to_dict() for t in per_layer]
    t_layers = time.perf_counter() - t0
    redundancy = redundancy_scores(model, prompts, settings.max_new_tokens, settings.eos_id)
    return {
        "settings": {**asdict(settings), "objective": objective, "num_prompts": len(prompts), "dp": replicas.dp,
                     "tp": model.rad_tp},
        "costs": cost,
        "baseline_no_skip": baseline.to_dict(),
        "per_layer": per_layer,
        "per_layer_ranking": [t["skip"][0] for t in sorted(per_layer, key=lambda t: rank_key(t, objective))],
        "redundancy": redundancy,
        "seconds": {"per_layer": t_layers, "redundancy": time.perf_counter() - t0 - t_layers},
    }


def probe_search(model, prompts, k: int, trials: int, per_layer_report: dict, replicas: Replicas | None = None,
                 seed: int = 0) -> dict:
    """The Bayesian search over sets of size k, warm-started from the per-layer top-k of `per_layer_report` and
    evaluated with its settings, costs and objective."""
    from rad_megatron.errors import RadError

    attn = model.rad_config.attention_layers
    if not 1 <= k <= len(attn):
        raise RadError(f"--k {k} must be between 1 and the number of attention layers ({len(attn)})")
    s = per_layer_report["settings"]
    settings = ProbeSettings(**{f: s[f] for f in ("draft_len", "max_new_tokens", "confidence", "eos_id")})
    warm = sorted(per_layer_report["per_layer_ranking"][:k])
    t0 = time.perf_counter()
    search = bayesian_search(model, prompts, k, trials, settings, per_layer_report["costs"], replicas or Replicas(),
                             objective=s["objective"], seed=seed, warm_start=warm)
    return {"k": k, "trials_requested": trials, "seed": seed, "top_k_by_per_layer": warm,
            "trials": [t.to_dict() for t in search.trials], "chosen": search.best.to_dict(),
            "seconds": {"search": time.perf_counter() - t0, "search_propose": search.propose_seconds}}


def run_probe(model, prompts: list[list[int]], k: int, trials: int, settings: ProbeSettings,
              replicas: Replicas | None = None, objective: str = "throughput", costs: str | dict = "flops",
              seed: int = 0) -> dict:
    """The probe.json content (all ranks return the same)."""
    from rad_megatron.errors import RadError

    attn = model.rad_config.attention_layers
    if not 1 <= k <= len(attn):
        raise RadError(f"--k {k} must be between 1 and the number of attention layers ({len(attn)})")
    report = probe_per_layer(model, prompts, settings, replicas, objective, costs)
    search = probe_search(model, prompts, k, trials, report, replicas, seed)
    report["settings"].update(k=k, trials=trials, seed=seed)
    seconds = {**report["seconds"], **search.pop("seconds")}
    report.update(top_k_by_per_layer=search["top_k_by_per_layer"], trials=search["trials"], chosen=search["chosen"],
                  seconds={**seconds, "total": seconds["per_layer"] + seconds["redundancy"] + seconds["search"]})
    return report


def evaluate_set(model, prompts, skip, settings: ProbeSettings, costs: str | dict = "flops") -> dict:
    skip = check_skip_set(model.rad_config, skip)
    cost = costs if isinstance(costs, dict) else layer_costs(model, costs)
    return evaluate(model, prompts, skip, settings, cost).to_dict()
