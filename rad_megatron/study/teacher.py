"""The study's data and its teacher targets, computed once and shared by every run.

Every run distills from the same teacher (the original model) on the same sequences, so the teacher's top-k
log-probabilities for the training sequences any seed draws and for the held-out batches are computed once, saved in
the study folder (an offline teacher cache, the format `rad teacher-cache` writes, through its library API) and
reused: no run pays for a teacher forward, and all runs see bit-identical targets.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import torch

from rad_megatron.data.datasets import DataConfig, ResumableSampler, load_examples, pack, pad_batch, split_examples


def build_data(tok, data) -> tuple[dict, dict]:
    """(packed training sequences [N, seq_len], held-out examples one per row [H, <= eval_seq_len]) from GSM8K
    question/answer pairs in chat format (question tokens masked out of every loss and metric)."""
    cfg = DataConfig(path=data.path, format="chat", seq_len=data.seq_len, held_out=data.held_out,
                     max_examples=data.max_examples, seed=data.seed)
    train, held = split_examples(load_examples(cfg), cfg)
    from rad_megatron.errors import RadError

    if not held:
        raise RadError("config.data.held_out must be >= 1: the study measures held-out KL")
    return pack(tok, cfg, train), pad_batch(tok, dataclasses.replace(cfg, seq_len=data.eval_seq_len), held)


def data_order(num_sequences: int, seed: int, steps: int, batch: int) -> list[int]:
    """The training sequences of a seed, in order (step s takes [(s-1)*batch, s*batch)); the same for every run."""
    return ResumableSampler(num_sequences, seed).take(steps * batch)


def _fingerprint(obj) -> str:
    h = hashlib.sha256()
    for k in sorted(obj):
        v = obj[k]
        h.update(k.encode())
        h.update(v.numpy().tobytes() if isinstance(v, torch.Tensor) else json.dumps(v, sort_keys=True).encode())
    return h.hexdigest()[:20]


@torch.no_grad()
def teacher_cache(model, train: dict, held: dict, rows: list[int], top_k: int, eval_batch_size: int, path: Path,
                  source: str, log=print) -> dict:
    """Top-k teacher log-probs for training sequences `rows` (their sample ids) and every held-out batch, kept in the
    offline teacher cache format of `rad teacher-cache` (distill.teacher_cache.write_targets) in folder `path`:
    reused when made for the same model, data, rows and k, continued when interrupted, rebuilt when unreadable or
    made for anything else. Returns {"store": the TeacherCache, "held": [(values, indices, nll, tokens)] per
    held-out batch}; `train_targets` reads training rows from it."""
    from rad_megatron.distill.stream import StreamConfig, target_sums
    from rad_megatron.distill.teacher_cache import write_targets
    from rad_megatron.errors import RadError

    rows = sorted(set(rows))
    data = _fingerprint({"rows": rows, "eval_batch_size": eval_batch_size, "train_ids": train["input_ids"][rows],
                         "held_ids": held["input_ids"], "held_mask": held["loss_mask"],
                         "train_mask": train["loss_mask"][rows]})
    # eight rows per teacher forward, as the study always computed them (a row's logits do not depend on its batch,
    # but the same grouping keeps the numbers of earlier studies exactly)
    batches = [(rows[i:i + 8], {k: train[k][rows[i:i + 8]] for k in ("input_ids", "labels", "loss_mask")})
               for i in range(0, len(rows), 8)]
    held_batches = [{k: held[k][i:i + eval_batch_size] for k in ("input_ids", "labels", "loss_mask")}
                    for i in range(0, held["input_ids"].shape[0], eval_batch_size)]
    # the data fingerprint covers the token ids themselves, so no tokenizer hash is needed to tell caches apart
    kw = dict(teacher=source, tokenizer="", data=data, stream=StreamConfig(top_k=top_k), eval_batches=held_batches)
    model.eval()
    try:
        store = write_targets(model, batches, path, **kw)
    except (RadError, OSError, ValueError) as e:  # a cut-off write, a foreign folder: the study's own cache is rebuilt
        log(f"teacher cache {path}: {e}; recomputing it")
        shutil.rmtree(path, ignore_errors=True)
        store = write_targets(model, batches, path, **kw)
    held_out = []
    for i in range(len(held_batches)):
        t = store.eval_targets(i)
        held_out.append((t["values"], t["indices"], *target_sums(t["label_logp"], t["mask"])))
    return {"store": store, "held": held_out}


def train_targets(cache: dict, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    t = cache["store"].targets(rows)
    return t["values"], t["indices"]
