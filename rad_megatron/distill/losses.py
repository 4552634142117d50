"""Distillation losses on vocab-parallel student logits [b, s, V/tp] (each TP rank holds a contiguous vocab shard).

Teacher targets arrive as top-k log-probabilities at temperature T over the full vocabulary (values [b, s, k],
indices [b, s, k]); k = V is the full distribution. The tail (the vocabulary outside the top-k) is one extra bucket
on both sides: p_tail = 1 - sum(p_topk), q_tail = 1 - sum(q_topk), so
    FKL_k = sum_topk p (log p - log q) + p_tail (log p_tail - log q_tail)
which equals the full forward KL when k = V (tail 0) and otherwise lower-bounds it (coarse-graining). Reverse KL is the
same with p and q swapped. KL terms are scaled by T^2 (gradient magnitude independent of T). Reduction: mean over
unmasked tokens (MIL normalises by batch instead; per-token keeps the LR independent of sequence length).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from rad_megatron.validation import rules

_EPS = 1e-12


class _AllReduceSum(torch.autograd.Function):
    """all-reduce over `group`. Backward: identity when every rank uses the total identically downstream (each rank
    already holds the whole dL/dtotal); all-reduce when each rank uses it on its own shard (the softmax normaliser:
    every rank's share of dL/dtotal must be added up)."""

    @staticmethod
    def forward(ctx, x, group, reduce_grad):
        ctx.group, ctx.reduce_grad = group, reduce_grad
        return _all_reduce(x.clone(), group)

    @staticmethod
    def backward(ctx, g):
        return (_all_reduce(g.clone(), ctx.group) if ctx.reduce_grad else g), None, None


def _all_reduce(x, group):
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(x, group=group)
    return x


def all_reduce_sum(x, group):
    """Partial sums -> the replicated total, for terms whose downstream use is identical on every rank."""
    return _AllReduceSum.apply(x, group, False)


def vocab_parallel_log_softmax(logits: torch.Tensor, group, temperature: float = 1.0, vocab_start: int = 0,
                               vocab_size: int | None = None) -> torch.Tensor:
    """log_softmax over the full vocabulary of a vocab-sharded [.., V/tp] tensor; returns the local shard.
    Columns at or past `vocab_size` (padding added for TP divisibility) get probability 0."""
    z = logits.float() / temperature
    if vocab_size is not None and vocab_start + z.shape[-1] > vocab_size:
        pad = torch.arange(vocab_start, vocab_start + z.shape[-1], device=z.device) >= vocab_size
        z = z.masked_fill(pad, -1e30)
    zmax = z.detach().max(-1, keepdim=True).values
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(zmax, op=dist.ReduceOp.MAX, group=group)
    sumexp = _AllReduceSum.apply((z - zmax).exp().sum(-1, keepdim=True), group, True)
    return z - zmax - sumexp.log()


def gather_at(local: torch.Tensor, indices: torch.Tensor, group, vocab_start: int) -> torch.Tensor:
    """Full-vocabulary `indices` [.., k] looked up in a vocab-sharded tensor [.., V/tp] (all-reduced)."""
    width = local.shape[-1]
    rel = indices - vocab_start
    mine = (rel >= 0) & (rel < width)
    vals = local.gather(-1, rel.clamp(0, width - 1)) * mine
    return all_reduce_sum(vals, group)


def _with_tail(logp_topk: torch.Tensor):
    """Probabilities of the top-k plus the tail bucket, and their logs, [.., k+1]."""
    p = logp_topk.exp()
    tail = (1.0 - p.sum(-1, keepdim=True)).clamp_min(0.0)
    probs = torch.cat([p, tail], -1)
    logs = torch.cat([logp_topk, tail.clamp_min(_EPS).log()], -1)
    return probs, logs


def topk_kl(student_logp_local, teacher_logp_topk, teacher_idx, group, vocab_start, reverse=False):
    """Per-token KL [b, s] (forward: KL(teacher || student); reverse: KL(student || teacher)) on top-k + tail."""
    q_logp = gather_at(student_logp_local, teacher_idx, group, vocab_start)
    p, logp = _with_tail(teacher_logp_topk.float())
    q, logq = _with_tail(q_logp)
    if reverse:
        return (q * (logq - logp)).sum(-1)
    return (p * (logp - logq)).sum(-1)


def full_kl(student_logp_local, teacher_logp_local, group, reverse=False):
    """Per-token KL [b, s] with both distributions vocab-sharded the same way (reference / full-vocab path)."""
    p, q = teacher_logp_local, student_logp_local
    if reverse:
        p, q = q, p
    return all_reduce_sum((p.exp() * (p - q)).sum(-1), group)


@dataclass
class LossWeights:
    """loss = fkl * FKL_T + rkl * RKL_T + ce * CE(labels); KL terms are scaled by T^2."""

    fkl: float = field(default=1.0, metadata=rules(ge=0))
    """Weight of forward KL(teacher || student)."""
    rkl: float = field(default=0.0, metadata=rules(ge=0))
    """Weight of reverse KL(student || teacher)."""
    ce: float = field(default=0.0, metadata=rules(ge=0))
    """Weight of cross-entropy on the data labels."""
    temperature: float = field(default=1.0, metadata=rules(gt=0))
    """Softmax temperature of both teacher and student inside the KL terms."""


def distill_loss(student_logits_local, teacher_logp, teacher_idx, labels, loss_mask, weights: LossWeights, group,
                 vocab_start: int, vocab_size: int | None = None) -> tuple[torch.Tensor, dict]:
    """Mean over unmasked tokens of the weighted mix; returns (loss, per-term floats for logging).

    teacher_idx None means teacher_logp is the full (vocab-sharded, same layout as the student) distribution.
    """
    T = weights.temperature
    logq = vocab_parallel_log_softmax(student_logits_local, group, T, vocab_start, vocab_size)
    mask = loss_mask.float()
    denom = mask.sum().clamp_min(1.0)
    terms, total = {}, 0.0
    for name, w, rev in (("fkl", weights.fkl, False), ("rkl", weights.rkl, True)):
        if w:
            kl = topk_kl(logq, teacher_logp, teacher_idx, group, vocab_start, rev) if teacher_idx is not None \
                else full_kl(logq, teacher_logp, group, rev)
            term = (kl * mask).sum() / denom
            total = total + w * T * T * term
            terms[name] = term.item()
    if weights.ce:  # from the same padding-aware vocab-parallel log-softmax, at temperature 1
        logq1 = logq if T == 1.0 else vocab_parallel_log_softmax(student_logits_local, group, 1.0, vocab_start,
                                                                 vocab_size)
        ce = -gather_at(logq1, labels.unsqueeze(-1), group, vocab_start).squeeze(-1)
        term = (ce * mask).sum() / denom
        total = total + weights.ce * term
        terms["ce"] = term.item()
    return total, terms
