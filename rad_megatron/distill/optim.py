"""The student's optimizer: Megatron-Core's DDP + `get_megatron_optimizer` + `OptimizerParamScheduler`, per stage.

One `StageOptimizer` per training stage, because each stage trains a different parameter group and Megatron's DDP
sizes its gradient buffers (and the distributed optimizer its shards) from the parameters that require grad at
construction. DP > 1 uses the distributed optimizer (optimizer state sharded over the data-parallel replicas) unless
the config turns it off. On CPU the Megatron calls run inside `megatron_cuda_on_cpu()` (see distributed/cpu.py).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch.distributed as dist

from rad_megatron.distributed.cpu import megatron_cuda_on_cpu
from rad_megatron.validation import rules


@dataclass
class OptimConfig:
    """Adam(W) through Megatron's optimizer, and its schedule (applied per stage)."""

    weight_decay: float = field(default=0.0, metadata=rules(ge=0))
    """MIL trains the new layers without weight decay (Megatron never decays biases and norms)."""
    betas: tuple[float, float] = field(default=(0.9, 0.98), metadata=rules(ge=0, lt=1))
    """Adam betas."""
    eps: float = field(default=1e-8, metadata=rules(gt=0))
    """Adam epsilon."""
    clip_grad: float = field(default=1.0, metadata=rules(ge=0))
    """Global gradient-norm clip over all TP/DP ranks (0: off)."""
    warmup_steps: int = field(default=0, metadata=rules(ge=0))
    """Linear warmup at the start of each stage."""
    min_lr_ratio: float = field(default=0.1, metadata=rules(ge=0, le=1))
    """Cosine decays to this fraction of the stage's peak LR."""
    distributed_optimizer: bool | None = None
    """Shard optimizer state over data-parallel replicas (Megatron's distributed optimizer); None: on when DP > 1."""


@contextlib.contextmanager
def _world_is(group):
    """Make default-group collectives use `group` for the duration.

    `get_megatron_optimizer` aligns parameter-group keys with an all_gather_object over the default (world) group,
    which in a distillation job also holds the teacher ranks; they never build an optimizer, so that gather would hang.
    Inside this context the student group stands in for the world.
    """
    if group is None or not dist.is_initialized() or dist.get_world_size(group) == dist.get_world_size():
        yield
        return
    world_size, gather = dist.get_world_size, dist.all_gather_object
    student_group = group

    def get_world_size(group=None):
        return world_size(student_group if group is None else group)

    def all_gather_object(object_list, obj, group=None):
        return gather(object_list, obj, group=student_group if group is None else group)

    dist.get_world_size, dist.all_gather_object = get_world_size, all_gather_object
    try:
        yield
    finally:
        dist.get_world_size, dist.all_gather_object = world_size, gather


class StageOptimizer:
    """Megatron DDP wrapper + optimizer + LR scheduler over the parameters that currently require grad."""

    def __init__(self, model, cfg: OptimConfig, peak_lr: float, steps: int, dp: int, group=None):
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
        from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

        dist_opt = dp > 1 if cfg.distributed_optimizer is None else cfg.distributed_optimizer
        with megatron_cuda_on_cpu(), _world_is(group):
            self.ddp = DistributedDataParallel(
                model.config, DistributedDataParallelConfig(grad_reduce_in_fp32=True, use_distributed_optimizer=dist_opt),
                model)
            self.optimizer = get_megatron_optimizer(
                OptimizerConfig(optimizer="adam", lr=peak_lr, min_lr=peak_lr * cfg.min_lr_ratio,
                                weight_decay=cfg.weight_decay, adam_beta1=cfg.betas[0], adam_beta2=cfg.betas[1],
                                adam_eps=cfg.eps, clip_grad=cfg.clip_grad, use_distributed_optimizer=dist_opt,
                                bf16=False, fp16=False),
                [self.ddp])
        # Megatron's scheduler sets the LR for its current step count; stepping it by one *before* each optimizer
        # step makes update k (1-based) use warmup k / warmup_steps, so no update is spent at LR 0.
        self.scheduler = OptimizerParamScheduler(
            self.optimizer, init_lr=0.0, max_lr=peak_lr, min_lr=peak_lr * cfg.min_lr_ratio,
            lr_warmup_steps=cfg.warmup_steps, lr_decay_steps=max(steps, cfg.warmup_steps + 1),
            lr_decay_style="cosine", start_wd=cfg.weight_decay, end_wd=cfg.weight_decay,
            wd_incr_steps=max(steps, 1), wd_incr_style="constant")
        self.distributed = dist_opt

    def zero_grad(self):
        self.ddp.zero_grad_buffer()
        self.optimizer.zero_grad()

    def step(self) -> tuple[float, float]:
        """Reduce gradients over DP, clip, update; returns (lr used, global grad norm before clipping)."""
        from megatron.core.distributed import finalize_model_grads

        self.scheduler.step(1)
        lr = self.optimizer.param_groups[0]["lr"]
        with megatron_cuda_on_cpu():
            finalize_model_grads([self.ddp])
            ok, norm, _ = self.optimizer.step()
        if not ok:  # fp32 never overflows; a failed update means the gradients are broken
            raise RuntimeError("Megatron optimizer skipped the update (non-finite gradients)")
        return lr, float(norm) if norm is not None else float("nan")

    def retire(self):
        """Detach this stage's DDP from the parameters: Megatron registers gradient hooks it never removes, and they
        fire only for parameters found in `param_to_bucket_group`, so emptying it makes the old hooks inert."""
        self.ddp.param_to_bucket_group = {}
        for p in self.ddp.module.parameters():
            if hasattr(p, "main_grad"):
                del p.main_grad

    def _inner(self):
        return [o.optimizer for o in getattr(self.optimizer, "chained_optimizers", [self.optimizer])]

    def state_dict(self) -> dict:
        """This rank's state: the torch optimizers over this rank's parameters (its shard under the distributed
        optimizer) and the scheduler. Saved per (TP, DP) rank; resuming needs the same layout."""
        return {"inner": [o.state_dict() for o in self._inner()], "scheduler": self.scheduler.state_dict(),
                "distributed": self.distributed}

    def load_state_dict(self, state: dict):
        for o, s in zip(self._inner(), state["inner"], strict=True):
            o.load_state_dict(s)
        self.scheduler.load_state_dict(state["scheduler"])

