"""Skip-set search: per-layer scores (skip one attention layer at a time) and Bayesian optimisation over sets of
size k, relaxed to x in [0,1]^L_attn with the top-k rule (the set is the k largest coordinates), as RAD and SWIFT do.
The GP and acquisition come from `bayesian-optimization`; `ConstantLiar` lets it propose one candidate per
data-parallel replica per round, so replicas evaluate different sets at the same time and the search scales with
them. Results are shared with an all-gather; every rank keeps the same history.
"""

from __future__ import annotations

import itertools
import math
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


def _acquisition(seed: int, n_random: int = 2000, n_smart: int = 2):
    """UCB under a constant liar (several pending candidates per round), with a lighter acquisition optimiser than the
    library default (10,000 random points + 10 L-BFGS-B restarts cost ~4 s per proposal in 30 dimensions, which
    would serialise a data-parallel search)."""
    from bayes_opt import acquisition

    class Liar(acquisition.ConstantLiar):
        def suggest(self, gp, target_space, n_random=n_random, n_smart=n_smart, fit_gp=True, random_state=None):
            return super().suggest(gp, target_space, n_random=n_random, n_smart=n_smart, fit_gp=fit_gp,
                                   random_state=random_state)

    return Liar(acquisition.UpperConfidenceBound(kappa=2.576, random_state=seed), random_state=seed)


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
    """`trials` distinct skip sets evaluated (rounded up to whole rounds of `dp` candidates).

    Only global rank 0 owns the optimiser. A proposal whose top-k set was already evaluated is registered with the
    known value (the GP still learns from it) and replaced, so every replica evaluates a new set in every round.
    """
    from bayes_opt import BayesianOptimization

    layers = model.rad_config.attention_layers
    if objective not in OBJECTIVES:
        raise RadError(f"--objective '{objective}' is not one of {', '.join(OBJECTIVES)}")
    if not 1 <= k <= len(layers):
        raise RadError(f"--k {k} must be between 1 and the number of attention layers ({len(layers)})")
    trials = min(trials, math.comb(len(layers), k))
    names = [f"x{b:03d}" for b in layers]
    opt = BayesianOptimization(f=None, pbounds={n: (0.0, 1.0) for n in names}, verbose=0, random_state=seed,
                               allow_duplicate_points=True, acquisition_function=_acquisition(seed)) \
        if replicas.is_main else None
    rng = torch.Generator().manual_seed(seed)
    seen: dict[tuple, Trial] = {}
    result = SearchResult()
    bar = _progress(trials, f"search k={k}", replicas.is_main)
    while len(result.trials) < trials:
        proposals = None
        if replicas.is_main:
            proposals = _propose_round(opt, names, layers, k, rng, seen, replicas.dp, len(result.trials),
                                       init_points, warm_start, objective)
        proposals = replicas.broadcast(proposals)
        point, mine = proposals[replicas.dp_rank]
        trial = evaluate(model, prompts, mine, settings, costs).to_dict() if mine else None
        for (p, s), t in zip(proposals, replicas.gather(trial)):
            if t is None:
                continue
            t = Trial(**t)
            seen[tuple(s)] = t
            result.trials.append(t)
            if opt is not None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    opt.register(params=p, target=t.objective(objective))
            bar.update(1)
    bar.close()
    result.trials = result.trials[:trials]
    result.best = max(result.trials, key=lambda t: (t.objective(objective), [-b for b in t.skip]))
    return result


def _propose_round(opt, names, layers, k, rng, seen, dp, done, init_points, warm_start, objective):
    """dp (point, skip set) pairs with distinct, unseen sets ((None, None) when the space is exhausted)."""
    out, pending = [], set()
    for i in range(dp):
        chosen = None
        for attempt in range(50):
            p = _propose(opt, names, rng, done + i, init_points, warm_start if attempt == 0 else None, layers, k)
            s = tuple(top_k_set(p, layers, k))
            if s in seen:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    opt.register(params=p, target=seen[s].objective(objective))
                continue
            if s not in pending:
                chosen = (p, list(s))
                break
            done += 1  # a pending duplicate: draw the next point as a fresh one
        if chosen is None:  # the GP keeps proposing known sets: take an unseen one at random
            unseen = [c for c in itertools.combinations(layers, k) if c not in seen and c not in pending]
            if not unseen:
                out.append((None, None))
                continue
            s = unseen[int(torch.randint(len(unseen), (1,), generator=rng))]
            chosen = ({n: (1.0 if b in s else 0.0) for n, b in zip(names, layers)}, list(s))
        pending.add(tuple(chosen[1]))
        out.append(chosen)
    return out


def _propose(opt, names, rng, index, init_points, warm_start, layers, k) -> dict[str, float]:
    if index == 0 and warm_start:  # the per-layer top-k, as a first point
        return {n: (1.0 if b in warm_start else 0.0) for n, b in zip(names, layers)}
    if index < init_points or len(opt.space) < 2:
        return {n: float(v) for n, v in zip(names, torch.rand(len(names), generator=rng))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {n: float(v) for n, v in opt.suggest().items()}
