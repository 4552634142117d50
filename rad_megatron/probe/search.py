"""Skip-set search: per-layer scores (skip one attention layer at a time) and Bayesian optimisation over sets of
size k, relaxed to x in [0,1]^L_attn with the top-k rule (the set is the k largest coordinates), as RAD and SWIFT do.
The GP and acquisition come from `bayesian-optimization`; `ConstantLiar` lets it propose one candidate per
data-parallel replica per round, so replicas evaluate different sets at the same time and the search scales with
them. Results are shared with an all-gather; every rank keeps the same history.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch

from rad_megatron.errors import RadError
from rad_megatron.probe.score import OBJECTIVES, ProbeSettings, Trial, evaluate


@dataclass
class Replicas:
    """Where this rank sits among the model replicas (DP) and inside its replica (TP)."""

    dp: int = 1
    dp_rank: int = 0
    is_main: bool = True

    def gather(self, item):
        """Every replica's item (from its TP-rank-0 view; all TP ranks of a replica hold the same)."""
        if self.dp == 1:
            return [item]
        from megatron.core import parallel_state

        out = [None] * self.dp
        torch.distributed.all_gather_object(out, item, group=parallel_state.get_data_parallel_group())
        return out

    def broadcast(self, obj):
        if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]


def _progress(total, desc, enabled):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True)


def per_layer_scores(model, prompts, settings: ProbeSettings, costs: dict, replicas: Replicas) -> list[Trial]:
    layers = model.rad_config.attention_layers
    mine = layers[replicas.dp_rank::replicas.dp]
    results = []
    bar = _progress(len(layers), "per-layer scores", replicas.is_main)
    for i in range((len(layers) + replicas.dp - 1) // replicas.dp):
        trial = evaluate(model, prompts, [mine[i]], settings, costs).to_dict() if i < len(mine) else None
        got = [t for t in replicas.gather(trial) if t is not None]
        results.extend(Trial(**t) for t in got)
        bar.update(len(got))
    bar.close()
    return sorted(results, key=lambda t: t.skip[0])


def top_k_set(x: dict[str, float], layers: list[int], k: int) -> list[int]:
    ranked = sorted(layers, key=lambda b: (-x[f"x{b:03d}"], b))
    return sorted(ranked[:k])


@dataclass
class SearchResult:
    trials: list[Trial] = field(default_factory=list)
    best: Trial | None = None


def bayesian_search(model, prompts, k: int, trials: int, settings: ProbeSettings, costs: dict, replicas: Replicas,
                    objective: str = "throughput", seed: int = 0, init_points: int = 4,
                    warm_start: list[int] | None = None) -> SearchResult:
    """About `trials` evaluated sets (rounded up to whole rounds of `dp` candidates)."""
    from bayes_opt import BayesianOptimization, acquisition

    layers = model.rad_config.attention_layers
    if objective not in OBJECTIVES:
        raise RadError(f"--objective '{objective}' is not one of {', '.join(OBJECTIVES)}")
    if not 1 <= k <= len(layers):
        raise RadError(f"--k {k} must be between 1 and the number of attention layers ({len(layers)})")
    names = [f"x{b:03d}" for b in layers]
    opt = BayesianOptimization(f=None, pbounds={n: (0.0, 1.0) for n in names}, verbose=0, random_state=seed,
                               allow_duplicate_points=True,
                               acquisition_function=acquisition.ConstantLiar(
                                   acquisition.UpperConfidenceBound(kappa=2.576, random_state=seed),
                                   random_state=seed))
    rng = torch.Generator().manual_seed(seed)
    cache: dict[tuple, Trial] = {}
    result = SearchResult()
    bar = _progress(trials, f"search k={k}", replicas.is_main)
    done = 0
    while done < trials:
        # every rank runs the same optimiser on the same history; rank 0's proposals are broadcast all the same,
        # so floating-point differences between ranks can never split the search
        points = replicas.broadcast([_propose(opt, names, rng, done + i, init_points, warm_start, layers, k)
                                     for i in range(replicas.dp)])
        sets = [tuple(top_k_set(p, layers, k)) for p in points]
        mine = sets[replicas.dp_rank]
        trial = cache[mine].to_dict() if mine in cache else evaluate(model, prompts, mine, settings, costs).to_dict()
        got = [Trial(**t) for t in replicas.gather(trial)]
        for p, s, t in zip(points, sets, got):
            cache[s] = t
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                opt.register(params=p, target=t.objective(objective))
            result.trials.append(t)
        done += len(got)
        bar.update(len(got))
    bar.close()
    result.trials = result.trials[:max(trials, 1)]
    result.best = max(result.trials, key=lambda t: (t.objective(objective), [-b for b in t.skip]))
    return result


def _propose(opt, names, rng, index, init_points, warm_start, layers, k) -> dict[str, float]:
    if index == 0 and warm_start:  # the per-layer top-k, as a first point
        return {n: (1.0 if b in warm_start else 0.0) for n, b in zip(names, layers)}
    if index < init_points or len(opt.space) < 2:
        return {n: float(v) for n, v in zip(names, torch.rand(len(names), generator=rng))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {n: float(v) for n, v in opt.suggest().items()}
