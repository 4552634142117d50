"""The study's data and its teacher targets, computed once and shared by every run.

Every run distills from the same teacher (the original model) on the same sequences, so the teacher's top-k
log-probabilities for the training sequences any seed draws and for the held-out batches are computed once, saved in
the study folder and reused: no run pays for a teacher forward, and all runs see bit-identical targets.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
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


def _targets(model, ids, labels, mask, top_k):
    """Top-k teacher targets of one batch, computed on the model's device and kept on the host."""
    from rad_megatron.distill.stream import StreamConfig, teacher_targets

    dev = next(model.parameters()).device
    vals, idx, nll, ntok = teacher_targets(model, ids.to(dev), labels.to(dev), mask.to(dev), StreamConfig(top_k=top_k))
    return vals.cpu(), idx.cpu(), nll, ntok


@torch.no_grad()
def teacher_cache(model, train: dict, held: dict, rows: list[int], top_k: int, eval_batch_size: int, path: Path,
                  source: str, log=print) -> dict:
    """Top-k teacher log-probs for training sequences `rows` and every held-out batch; loaded from `path` when it was
    computed for the same model, data, rows and k, otherwise computed and written atomically."""
    rows = sorted(set(rows))
    key = _fingerprint({"source": source, "top_k": top_k, "rows": rows, "eval_batch_size": eval_batch_size,
                        "train_ids": train["input_ids"][rows], "held_ids": held["input_ids"],
                        "held_mask": held["loss_mask"], "train_mask": train["loss_mask"][rows]})
    if path.is_file():
        try:
            cache = torch.load(path, weights_only=False)
        except Exception as e:  # noqa: BLE001 - a cache is rebuilt whatever broke it (a cut-off write, a foreign file)
            cache = {}
            log(f"teacher cache {path} is unreadable ({type(e).__name__}): recomputing it")
        if isinstance(cache, dict) and cache.get("key") == key:
            return cache
        if cache:
            log(f"teacher cache {path} was made for other data or settings: recomputing it")
    model.eval()
    vals, idx = [], []
    for i in range(0, len(rows), 8):
        r = rows[i:i + 8]
        v, x, _, _ = _targets(model, train["input_ids"][r], train["labels"][r], train["loss_mask"][r], top_k)
        vals.append(v)
        idx.append(x)
    held_out = []
    for i in range(0, held["input_ids"].shape[0], eval_batch_size):
        b = {k: t[i:i + eval_batch_size] for k, t in held.items()}
        held_out.append(_targets(model, b["input_ids"], b["labels"], b["loss_mask"], top_k))
    cache = {"key": key, "row_of": {r: n for n, r in enumerate(rows)}, "vals": torch.cat(vals),
             "idx": torch.cat(idx), "held": held_out}
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(cache, tmp)
    os.replace(tmp, path)
    return cache


def train_targets(cache: dict, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    at = [cache["row_of"][r] for r in rows]
    return cache["vals"][at], cache["idx"][at].long()
