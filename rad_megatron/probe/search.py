"""Skip-set search: per-layer scores (skip one attention layer at a time) and Bayesian optimisation over sets of
size k, relaxed to x in [0,1]^L_attn with the top-k rule (the set is the k largest coordinates), as RAD and SWIFT do.
The GP and acquisition come from `bayesian-optimization`; `ConstantLiar` lets it propose while other candidates are
still being evaluated, so data-parallel replicas evaluate different sets at the same time. Work is handed out
asynchronously (probe/work_queue.py): a replica gets its next set as soon as it finishes one, and the optimiser on
global rank 0 proposes while the replicas evaluate. Every rank ends with the same history.
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from dataclasses import dataclass, field

import torch

from rad_megatron.errors import RadError
from rad_megatron.probe.score import OBJECTIVES, ProbeSettings, Trial, evaluate, rank_key
from rad_megatron.probe.work_queue import run_tasks


@dataclass
class Replicas:
    """Where this rank sits among the model replicas (DP) and inside its replica (TP)."""

    dp: int = 1
    dp_rank: int = 0
    is_main: bool = True

    def run(self, source, work) -> None:
        """Drive a task source over the replicas (see work_queue.run_tasks)."""
        tp_rank = 0
        if torch.distributed.is_initialized():
            from megatron.core import parallel_state

            tp_rank = parallel_state.get_tensor_model_parallel_rank()
        run_tasks(source, work, self.dp, self.dp_rank, self.is_main, tp_rank)

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


class _Fixed:
    """A fixed task list, handed out first come, first served; results kept in list order."""

    def __init__(self, sets: list[list[int]], bar):
        self.todo, self.results, self.bar = list(enumerate(sets)), {}, bar

    def next_task(self, replica):
        if not self.todo:
            return None
        i, skip = self.todo.pop(0)
        return {"index": i, "skip": skip}

    def on_result(self, replica, task, result):
        self.results[task["index"]] = result
        self.bar.update(1)


def _work(model, prompts, settings, costs):
    return lambda task: evaluate(model, prompts, task["skip"], settings, costs).to_dict()


def evaluate_sets(model, prompts, sets: list[list[int]], settings: ProbeSettings, costs: dict, replicas: Replicas,
                  desc: str) -> list[Trial]:
    """Every set evaluated once, by whichever replica is free; the trials in the order of `sets` on every rank."""
    bar = _progress(len(sets), desc, replicas.is_main)
    source = _Fixed(sets, bar)
    replicas.run(source, _work(model, prompts, settings, costs))
    bar.close()
    results = replicas.broadcast([source.results[i] for i in range(len(sets))] if replicas.is_main else None)
    return [Trial(**t) for t in results]


def per_layer_scores(model, prompts, settings: ProbeSettings, costs: dict, replicas: Replicas,
                     with_baseline: bool = False) -> list[Trial]:
    """One trial per attention layer skipped alone, in layer order; with_baseline puts the no-skip trial first (one
    replica evaluates it, instead of every replica separately before the phase starts)."""
    sets = ([[]] if with_baseline else []) + [[b] for b in model.rad_config.attention_layers]
    return evaluate_sets(model, prompts, sets, settings, costs, replicas, "per-layer scores")


def top_k_set(x: dict[str, float], layers: list[int], k: int) -> list[int]:
    ranked = sorted(layers, key=lambda b: (-x[f"x{b:03d}"], b))
    return sorted(ranked[:k])


@dataclass
class SearchResult:
    trials: list[Trial] = field(default_factory=list)
    best: Trial | None = None
    propose_seconds: float = 0.0
    """Time the optimiser spent proposing (on rank 0's coordinator, overlapping the replicas' evaluations)."""


def bayesian_search(model, prompts, k: int, trials: int, settings: ProbeSettings, costs: dict, replicas: Replicas,
                    objective: str = "throughput", seed: int = 0, init_points: int = 4,
                    warm_start: list[int] | None = None) -> SearchResult:
    """`trials` distinct skip sets evaluated, in proposal order in the result.

    Only global rank 0 owns the optimiser. A proposal whose top-k set was already evaluated is registered with the
    known value (the GP still learns from it) and replaced; one still being evaluated is replaced too, so every
    evaluation is of a new set.
    """
    layers = model.rad_config.attention_layers
    if objective not in OBJECTIVES:
        raise RadError(f"--objective '{objective}' is not one of {', '.join(OBJECTIVES)}")
    if not 1 <= k <= len(layers):
        raise RadError(f"--k {k} must be between 1 and the number of attention layers ({len(layers)})")
    trials = min(trials, math.comb(len(layers), k))
    bar = _progress(trials, f"search k={k}", replicas.is_main)
    source = _BayesSource(layers, k, trials, objective, seed, init_points, warm_start, bar) if replicas.is_main \
        else None
    replicas.run(source, _work(model, prompts, settings, costs))
    bar.close()
    done, propose_s = replicas.broadcast((sorted(source.results), source.propose_s) if replicas.is_main else None)
    result = SearchResult(trials=[Trial(**t) for _, t in done], propose_seconds=propose_s)
    result.best = min(result.trials, key=lambda t: rank_key(t.to_dict(), objective))  # alpha breaks ties
    return result


class _BayesSource:
    """Proposals from the GP (UCB under a constant liar for the sets still being evaluated)."""

    def __init__(self, layers, k, trials, objective, seed, init_points, warm_start, bar):
        from bayes_opt import BayesianOptimization

        self.layers, self.k, self.trials, self.objective = layers, k, trials, objective
        self.init_points, self.warm_start, self.bar = init_points, warm_start, bar
        self.names = [f"x{b:03d}" for b in layers]
        self.opt = BayesianOptimization(f=None, pbounds={n: (0.0, 1.0) for n in self.names}, verbose=0,
                                        random_state=seed, allow_duplicate_points=True,
                                        acquisition_function=_acquisition(seed))
        self.rng = torch.Generator().manual_seed(seed)
        self.seen: dict[tuple, Trial] = {}
        self.pending: set[tuple] = set()
        self.issued = self.draws = 0
        self.results: list[tuple[int, dict]] = []
        self.propose_s = 0.0

    def _register(self, point, value):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.opt.register(params=point, target=value)

    def next_task(self, replica):
        t0 = time.perf_counter()
        try:
            return self._next_task()
        finally:
            self.propose_s += time.perf_counter() - t0

    def _next_task(self):
        if self.issued >= self.trials:
            return None
        chosen = None
        for attempt in range(50):
            p = _propose(self.opt, self.names, self.rng, self.draws, self.init_points,
                         self.warm_start if attempt == 0 else None, self.layers, self.k)
            self.draws += 1
            s = tuple(top_k_set(p, self.layers, self.k))
            if s in self.seen:
                self._register(p, self.seen[s].objective(self.objective))
            elif s not in self.pending:
                chosen = (p, s)
                break
        if chosen is None:  # the GP keeps proposing known sets: take an unseen one at random
            unseen = [c for c in itertools.combinations(self.layers, self.k)
                      if c not in self.seen and c not in self.pending]
            if not unseen:
                return None
            s = unseen[int(torch.randint(len(unseen), (1,), generator=self.rng))]
            chosen = ({n: (1.0 if b in s else 0.0) for n, b in zip(self.names, self.layers)}, s)
        self.pending.add(chosen[1])
        self.issued += 1
        return {"index": self.issued - 1, "point": chosen[0], "skip": list(chosen[1])}

    def on_result(self, replica, task, result):
        trial = Trial(**result)
        key = tuple(task["skip"])
        self.pending.discard(key)
        self.seen[key] = trial
        self.results.append((task["index"], result))
        self._register(task["point"], trial.objective(self.objective))
        self.bar.update(1)


def _propose(opt, names, rng, index, init_points, warm_start, layers, k) -> dict[str, float]:
    if index == 0 and warm_start:  # the per-layer top-k, as a first point
        return {n: (1.0 if b in warm_start else 0.0) for n, b in zip(names, layers)}
    if index < init_points or len(opt.space) < 2:
        return {n: float(v) for n, v in zip(names, torch.rand(len(names), generator=rng))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {n: float(v) for n, v in opt.suggest().items()}
