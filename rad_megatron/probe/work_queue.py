"""Asynchronous work over data-parallel replicas: a replica takes its next task the moment it finishes the last one.

Evaluating a skip set costs more when its drafts are rejected (more verify passes), so lock-step rounds leave every
replica waiting for the slowest one, and the proposer (the Bayesian optimiser on global rank 0) would sit idle while
rounds run. Here a coordinator thread on global rank 0 owns the task source: it hands each replica one task at a time
through the rendezvous key-value store (already shared by every rank, no extra process group) and asks the source
for the next task as soon as a result comes back. All ranks of a replica read the same task key, so tensor-parallel
shards stay in step without a broadcast; the replica's TP-rank-0 posts the result as the next numbered event.

Nobody polls: replicas block in the store waiting for their next task, and the coordinator blocks (on its own store
connection, so rank 0's replica keeps its own) waiting for the next event. Blocking store calls release the GIL, so
rank 0's replica runs at full speed beside its coordinator; a 2 ms polling loop here used to take a visible share of
rank 0's time on small models, and with it the data-parallel speed-up.

In a single process there is no thread and no store: the same task source is driven inline. With one replica the
coordinator hands out one task at a time, so DP=1 (any TP) follows the same deterministic sequence.
"""

from __future__ import annotations

import itertools
import json
import threading
from datetime import timedelta
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


# a blocking wait is re-armed after this long, so an evaluation may outlast the store's own timeout
_WAIT_CHUNK = timedelta(minutes=5)


def _wait_get(store, key: str):
    while True:
        try:
            store.wait([key], _WAIT_CHUNK)
            return store.get(key)
        except dist.DistStoreError:  # only the wait timed out; a dead store raises DistNetworkError instead
            continue


def _serve(store, ns: str, replica: int, tp_rank: int, work) -> None:
    for n in itertools.count():
        task = json.loads(_wait_get(store, _key(ns, "task", replica, n)))
        if task is None:
            return
        if "__error__" in task:
            raise RuntimeError(f"probe coordinator failed: {task['__error__']}")
        try:
            posted = {"replica": replica, "result": work(task)}
        except BaseException as e:  # tell the coordinator, which stops every replica instead of waiting forever
            posted = {"replica": replica, "error": f"replica {replica}: {type(e).__name__}: {e}"}
            raise
        finally:
            if tp_rank == 0:  # events are numbered in arrival order; the coordinator waits for them one by one
                event = store.add(f"{ns}/events", 1)
                store.set(f"{ns}/event/{event}", json.dumps(posted))


def _coordinate(store, ns: str, dp: int, source: TaskSource, errors: list) -> None:
    store = store.clone()  # a connection of its own: rank 0's replica blocks on the original meanwhile
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
        for event in itertools.count(1):
            if all(t is None for t in open_task):
                break
            key = f"{ns}/event/{event}"
            got = json.loads(_wait_get(store, key))
            store.delete_key(key)
            r = got["replica"]
            if "error" in got:
                raise RuntimeError(got["error"])
            source.on_result(r, open_task[r], got["result"])
            issue(r)
    except BaseException as e:  # noqa: BLE001 - unblock every replica, then re-raise on rank 0's main thread
        errors.append(e)
        for r in range(dp):  # also the failed replica: its other TP ranks wait for this key
            store.set(_key(ns, "task", r, issued[r]), json.dumps({"__error__": f"{type(e).__name__}: {e}"}))
