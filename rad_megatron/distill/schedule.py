"""The deterministic walk both sides of the stream follow: which micro-batches (training and held-out evaluation)
happen in which order, and which sequences each student replica takes."""

from __future__ import annotations

from dataclasses import dataclass


EVAL_MICRO = 1000
"""The stream's micro-batch number of held-out batch i is EVAL_MICRO + i (training micro-batches are < grad_accum)."""


@dataclass(frozen=True)
class Event:
    kind: str  # "train" | "eval"
    step: int  # global optimizer step (1-based for train; eval events happen after that step, 0 = before training)
    micro: int  # micro-batch within the step (train) or held-out batch index (eval)


def events(total_steps: int, grad_accum: int, eval_every: int, eval_batches: int, start_step: int = 0):
    """Everything after `start_step` completed steps; evaluation at step 0, every `eval_every` steps and at the end."""
    if start_step == 0:
        yield from (Event("eval", 0, i) for i in range(eval_batches))
    for step in range(start_step + 1, total_steps + 1):
        for m in range(grad_accum):
            yield Event("train", step, m)
        if step == total_steps or (eval_every and step % eval_every == 0):
            yield from (Event("eval", step, i) for i in range(eval_batches))


def replica_slice(indices: list[int], replica: int, micro: int, dp: int, mbs: int) -> list[int]:
    """A step draws dp * grad_accum * mbs sequence indices; this is (replica, micro)'s share."""
    start = (micro * dp + replica) * mbs
    return indices[start: start + mbs]


def take(data, rows, device, keys=None) -> dict:
    """The micro-batch `rows` of host-resident `data`, moved to `device`: the only place training data reaches a
    device, one micro-batch at a time, and only the fields (`keys`, those `data` has) the rank uses. `data`: a dict
    of [n, s] tensors (held-out batches; `rows` indices or a slice) or a data.loader.TrainData (`rows` global sample
    ids, read from its memory-mapped corpus)."""
    if hasattr(data, "batch"):
        b = data.batch(rows)
        return {k: v.to(device, non_blocking=True) for k, v in b.items() if keys is None or k in keys}
    return {k: data[k][rows].to(device, non_blocking=True) for k in (keys or data) if k in data}


def eval_rows(i: int, size: int) -> slice:
    """Held-out batch i: rows [i * size, (i + 1) * size) (the last batch may be shorter)."""
    return slice(i * size, (i + 1) * size)


def num_eval_batches(held, size) -> int:
    return -(-held["input_ids"].shape[0] // size) if held is not None and held["input_ids"].shape[0] else 0
