"""The non-finite guard of the student's optimizer step.

Between the backward passes and the update, every student rank checks its loss and its local gradients and the ranks
agree (one all-reduce of two flags over the student group: a NaN on one data-parallel replica reaches everyone's
weights through the gradient reduction). A bad step is skipped (no update; logged) while `skip_nonfinite` allows,
else the run stops with one line naming the step and the quantity, before the update: the weights stay finite, the
last checkpoint is the last good one and nothing is written after it.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from rad_megatron.errors import RunStopped


def local_grads_finite(module) -> bool:
    """All gradients this rank holds are finite (Megatron DDP's main_grad buffers, else .grad)."""
    grads = [getattr(p, "main_grad", None) if getattr(p, "main_grad", None) is not None else p.grad
             for p in module.parameters() if p.requires_grad]
    grads = [g for g in grads if g is not None]
    if not grads:
        return True
    return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())


def nonfinite_quantity(loss: float, module, group=None, device="cpu") -> str | None:
    """'loss' or 'gradient' when it is not finite on any rank of `group`, else None (the same answer everywhere)."""
    flags = torch.tensor([float(math.isfinite(loss)), float(local_grads_finite(module))], device=device)
    if dist.is_initialized() and dist.get_world_size(group) > 1:
        dist.all_reduce(flags, op=dist.ReduceOp.MIN, group=group)
    if flags[0] < 1:
        return "loss"
    return "gradient" if flags[1] < 1 else None


class NonFiniteGuard:
    """Counts skipped steps against `allowed`; stops the run with one line past it."""

    def __init__(self, allowed: int, skipped: int = 0):
        self.allowed, self.skipped = allowed, skipped

    def bad_step(self, step: int, quantity: str, last_checkpoint: str | None, log=print) -> None:
        """Skip step `step` (logged) if allowed, else raise RunStopped."""
        if self.skipped < self.allowed:
            self.skipped += 1
            log(f"step {step}: the {quantity} is not finite; skipped without an update ({self.skipped} of "
                f"distill.train.skip_nonfinite={self.allowed})")
            return
        kept = _kept(last_checkpoint)
        allowance = (f"all {self.allowed} skips allowed by distill.train.skip_nonfinite are used" if self.allowed
                     else "set distill.train.skip_nonfinite=N to skip up to N such steps")
        raise RunStopped(f"step {step}: the {quantity} is not finite; stopped before the update ({kept}, nothing "
                         f"written after it); lower the learning rate, or {allowance}")

    def after_update(self, step: int, grad_norm: float | None, last_checkpoint: str | None) -> None:
        """The clipped update already ran: a gradient norm that overflowed (finite gradients whose norm is not) stops
        the run before anything is logged or saved."""
        if grad_norm is not None and not math.isfinite(grad_norm):
            kept = _kept(last_checkpoint)
            raise RunStopped(f"step {step}: the gradient norm is not finite ({grad_norm}); stopped ({kept}, nothing "
                             f"written after it); lower the learning rate")


def _kept(last_checkpoint: str | None) -> str:
    return f"the last checkpoint, {last_checkpoint}, is kept" if last_checkpoint else "no checkpoint was written"
