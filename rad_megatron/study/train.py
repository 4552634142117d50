"""One run of the study: swap the chosen layers, train the new Mamba layers against the cached teacher targets, and
evaluate held-out KL and perplexity every few steps.

The loss (distill.losses.distill_loss), the parameter targeting (distill.targeting) and the optimizer with its
warmup + cosine schedule (distill.optim.StageOptimizer: Megatron's DDP, Adam and scheduler) are the trainer's own;
only the teacher side differs (targets read from the study's cache instead of streamed from a teacher rank).
A run's files appear only when it is complete: metrics.jsonl, the swapped layers' weights, then done.json.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rad_megatron.distill.losses import distill_loss, gather_at, topk_kl, vocab_parallel_log_softmax
from rad_megatron.files import write_text_atomic
from rad_megatron.model.forward import position_ids_for
from rad_megatron.model.layout import mixer_layer_index
from rad_megatron.study.teacher import train_targets


@dataclass(frozen=True)
class RunSpec:
    """One cell of the study grid."""

    strategy: str
    k: int
    init: str
    seed: int
    layers: tuple[int, ...]
    lr: float
    """Peak learning rate."""

    @property
    def name(self) -> str:
        return f"{self.strategy}-k{self.k}-{self.init}-s{self.seed}-lr{self.lr:.0e}"

    def fields(self) -> dict:
        return {"run": self.name, "strategy": self.strategy, "k": self.k, "init": self.init, "seed": self.seed,
                "layers": list(self.layers), "peak_lr": self.lr}


def is_done(folder: Path) -> bool:
    return (folder / "done.json").is_file()


@contextlib.contextmanager
def _logits_at(model, where: torch.Tensor):
    """The output layer sees only the hidden states at `where` ([b, s] bool): the model returns [1, n, V] logits of
    those positions in row-major (b, s) order. Evaluation needs the answer tokens' logits only, and the vocabulary
    projection and softmax of the others would be a quarter of its cost."""
    handle = model.output_layer.register_forward_pre_hook(
        lambda _m, args: (args[0].transpose(0, 1)[where].unsqueeze(1), *args[1:]))  # hidden states are [s, b, h]
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def evaluate(model, held: dict, held_targets: list, batch_size: int, vocab: int) -> dict:
    """Held-out KL(teacher || student) on top-k + tail (the training loss's own terms) and the student's perplexity
    of the answer tokens: per-token means over all held-out answers, and per example the sums and token counts the
    report's bootstrap resamples."""
    dev = next(model.parameters()).device
    kl, nll, ntok, t_nll, t_tok = [], [], [], 0.0, 0.0
    for i, (vals, idx, tnll, ttok) in enumerate(held_targets):
        b = {k: v[i * batch_size:(i + 1) * batch_size].to(dev) for k, v in held.items()}
        where = b["loss_mask"] > 0
        with _logits_at(model, where):
            logits = model(input_ids=b["input_ids"], position_ids=position_ids_for(b["input_ids"]),
                           attention_mask=None)[0]
        logq = vocab_parallel_log_softmax(logits, None, 1.0, 0, vocab)
        per_kl = topk_kl(logq, vals.to(dev)[where], idx.to(dev).long()[where], None, 0)
        per_nll = -gather_at(logq, b["labels"][where].unsqueeze(-1), None, 0).squeeze(-1)
        row = where.nonzero()[:, 0]  # the example of each answer token
        for values, out in ((per_kl, kl), (per_nll, nll)):
            per_example = torch.zeros(where.shape[0], dtype=torch.float64, device=dev)
            out += per_example.index_add_(0, row, values.double()).tolist()
        ntok += where.sum(1).tolist()
        t_nll, t_tok = t_nll + tnll, t_tok + ttok
    n = sum(ntok)
    return {"heldout_kl": sum(kl) / n, "heldout_ppl": math.exp(sum(nll) / n), "teacher_ppl": math.exp(t_nll / t_tok),
            "example_kl": kl, "example_nll": nll, "example_tokens": ntok}


def swapped_layer_state(model, layers) -> dict:
    """The weights a final student differs from the original model in: its new mixer layers (cheap to keep)."""
    prefixes = tuple(f"decoder.layers.{mixer_layer_index(b)}." for b in layers)
    return {k: v.detach().clone() for k, v in model.state_dict().items()
            if k.startswith(prefixes) and not k.endswith("_extra_state")}


def _held_out_record(student, spec: RunSpec, cfg, held: dict, cache: dict, step: int, tokens: int) -> dict:
    record = {**spec.fields(), "kind": "eval", "step": step, "tokens": tokens,
              **evaluate(student.eval(), held, cache["held"], cfg.train.eval_batch_size, student.rad_config.vocab_size)}
    student.train()
    return record


def train_run(base, spec: RunSpec, cfg, train: dict, held: dict, order: list[int], cache: dict, folder: Path,
              log=print, heldout: bool = True) -> dict:
    """Run `spec` to the end and write its files; returns the done.json content. heldout=False (the LR sweep, which
    chooses on the training loss) skips the held-out evaluations and the student's weights."""
    from rad_megatron.distill.optim import StageOptimizer
    from rad_megatron.distill.targeting import apply_targeting
    from rad_megatron.study.config import loss_weights, optim_config
    from rad_megatron.swap import swap_attention_to_mamba

    t0 = time.perf_counter()
    tc = cfg.train
    student = swap_attention_to_mamba(base, list(spec.layers), init=spec.init, seed=spec.seed)
    apply_targeting(student, tc.trainable, list(spec.layers))
    opt = StageOptimizer(student, optim_config(tc), spec.lr, tc.steps, dp=1)
    weights, per_step = loss_weights(tc), tc.micro_batch_size * train["input_ids"].shape[1]
    records = [_held_out_record(student, spec, cfg, held, cache, 0, 0)] if heldout else []
    student.train()
    dev = next(student.parameters()).device
    for step in range(1, tc.steps + 1):
        rows = order[(step - 1) * tc.micro_batch_size: step * tc.micro_batch_size]
        vals, idx = (t.to(dev) for t in train_targets(cache, rows))
        ts = time.perf_counter()
        opt.zero_grad()
        ids, labels, mask = (train[k][rows].to(dev) for k in ("input_ids", "labels", "loss_mask"))
        logits = opt.ddp(input_ids=ids, position_ids=position_ids_for(ids), attention_mask=None)
        loss, terms = distill_loss(logits, vals, idx, labels, mask, weights, None, 0, student.rad_config.vocab_size)
        loss.backward()
        lr, norm = opt.step()
        records.append({**spec.fields(), "kind": "train", "step": step, "tokens": step * per_step,
                        "loss": loss.item(), **terms, "lr": lr, "grad_norm": norm,
                        "seconds": time.perf_counter() - ts})
        if heldout and (step % tc.eval_every == 0 or step == tc.steps):
            records.append(_held_out_record(student, spec, cfg, held, cache, step, step * per_step))
            log(f"{spec.name}: step {step}/{tc.steps} held-out KL {records[-1]['heldout_kl']:.4f}")
    opt.retire()
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    if heldout:
        tmp = folder / ".student_layers.pt.tmp"
        torch.save({"layers": list(spec.layers), "init": spec.init,
                    "state": swapped_layer_state(student, spec.layers)}, tmp)
        os.replace(tmp, folder / "student_layers.pt")
    done = {**spec.fields(), "seconds": time.perf_counter() - t0, "final": records[-1]}
    write_text_atomic(folder / "done.json", json.dumps(done, indent=2))
    return done


def load_student(base, folder: Path):
    """A finished run's final student: the original model swapped as the run did, with its trained layers loaded."""
    from rad_megatron.swap import swap_attention_to_mamba

    saved = torch.load(folder / "student_layers.pt", weights_only=False, map_location="cpu")  # GPU-made runs too
    student = swap_attention_to_mamba(base, saved["layers"], init=saved["init"], seed=0)
    missing = student.load_state_dict(saved["state"], strict=False)
    if missing.unexpected_keys:
        raise RuntimeError(f"{folder}: unexpected keys in student_layers.pt: {missing.unexpected_keys[:3]}")
    return student.eval()
