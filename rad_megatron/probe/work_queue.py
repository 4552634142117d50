"""Asynchronous work over data-parallel replicas: a replica takes its next task the moment it finishes the last one.

Evaluating a skip set costs more when its drafts are rejected (more verify passes), so lock-step rounds leave every
replica waiting for the slowest one, and the proposer (the Bayesian optimiser on global rank 0) would sit idle while
rounds run. Here a coordinator thread on global rank 0 owns the task source: it hands each replica one task at a time
through the rendezvous key-value store (already shared by every rank, no extra process group) and asks the source
for the next task as soon as a result comes back. All ranks of a replica read the same task key, so tensor-parallel
shards stay in step without a broadcast; the replica's TP-rank-0 writes the result.

In a single process there is no thread and no store: the same task source is driven inline. With one replica the
coordinator hands out one task at a time, so DP=1 (any TP) follows the same deterministic sequence.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from typing import Callable, Protocol

import torch.distributed as dist

_CALLS = itertools.count()  # identical on every rank: each probe phase gets its own key namespace


class TaskSource(Protocol):
    def next_task(self, replica: int) -> dict | None:
        """The next task for `replica`, or None when there is nothing more to hand out."""

    def on_result(self, replica: int, task: dict, result: dict) -> None:
        """Record a finished task (called in the order results arrive)."""


def run_tasks(source: TaskSource, work: Callable[[dict], dict], dp: int, dp_rank: int, is_main: bool,
              tp_rank: int = 0) -> None:
    """Drive `source` to exhaustion with every replica running `work` (a collective over its TP group). Only global
    rank 0 calls into `source`."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        while (task := source.next_task(0)) is not None:
            source.on_result(0, task, work(task))
        return
    store = dist.distributed_c10d._get_default_store()
    ns = f"rad_work/{next(_CALLS)}"
    errors: list[BaseException] = []
    coordinator = None
    if is_main:
        coordinator = threading.Thread(target=_coordinate, args=(store, ns, dp, source, errors), daemon=True)
        coordinator.start()
    try:
        _serve(store, ns, dp_rank, tp_rank, work)
    finally:
        if coordinator is not None:
            coordinator.join()
    if errors:
        raise errors[0]


def _key(ns, kind, replica, n):
    return f"{ns}/{kind}/{replica}/{n}"


def _wait_get(store, key: str):
    # poll rather than block in store.get: a blocking get holds the client's connection, and on rank 0 the
    # coordinator thread shares that client
    while not store.check([key]):
        time.sleep(0.002)
    return store.get(key)


def _serve(store, ns: str, replica: int, tp_rank: int, work) -> None:
    for n in itertools.count():
        task = json.loads(_wait_get(store, _key(ns, "task", replica, n)))
        if task is None:
            return
        if "__error__" in task:
            raise RuntimeError(f"probe coordinator failed: {task['__error__']}")
        result = work(task)
        if tp_rank == 0:
            store.set(_key(ns, "result", replica, n), json.dumps(result))


def _coordinate(store, ns: str, dp: int, source: TaskSource, errors: list) -> None:
    issued = [0] * dp
    open_task: list[dict | None] = [None] * dp

    def issue(r):
        task = source.next_task(r)
        open_task[r] = task
        store.set(_key(ns, "task", r, issued[r]), json.dumps(task))
        issued[r] += 1

    try:
        for r in range(dp):
            issue(r)
        while any(t is not None for t in open_task):
            progressed = False
            for r in range(dp):
                key = _key(ns, "result", r, issued[r] - 1)
                if open_task[r] is not None and store.check([key]):
                    source.on_result(r, open_task[r], json.loads(store.get(key)))
                    store.delete_key(key)
                    issue(r)
                    progressed = True
            if not progressed:
                time.sleep(0.002)
    except BaseException as e:  # noqa: BLE001 - unblock every replica, then re-raise on rank 0's main thread
        errors.append(e)
        for r in range(dp):
            if open_task[r] is not None:
                store.set(_key(ns, "task", r, issued[r]), json.dumps({"__error__": f"{type(e).__name__}: {e}"}))
