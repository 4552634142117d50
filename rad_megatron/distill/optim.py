"""The student's optimizer: Megatron-Core's DDP + `get_megatron_optimizer` + `OptimizerParamScheduler`, per stage.

One `StageOptimizer` per training stage, because each stage trains a different parameter group and Megatron's DDP
sizes its gradient buffers (and the distributed optimizer its shards) from the parameters that require grad at
construction. Gradients are reduced and kept in fp32 (DDP's grad_reduce_in_fp32); with bf16 weights Megatron's
mixed-precision optimizer keeps fp32 main parameters and steps those (`main_params`). By default the distributed
optimizer holds the state (sharded over data-parallel replicas; one shard at DP = 1), so a checkpoint of it has one
format at every layout and resumes at another TP, PP or DP size (`sharded_state_dict`, Megatron's
"fully_reshardable"). On CPU the Megatron calls run inside `megatron_cuda_on_cpu()` (see distributed/cpu.py).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
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
    """Shard optimizer state over data-parallel replicas (Megatron's distributed optimizer); None: on (at DP = 1 it
    holds one shard, and its checkpoints reshard to any TP / PP / DP layout). False: Megatron's plain optimizer
    (its checkpoints reshard over TP and PP)."""


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

    def __init__(self, model, cfg: OptimConfig, peak_lr: float, steps: int, dp: int, group=None, bf16: bool = False):
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
        from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

        dist_opt = uses_distributed_optimizer(cfg)
        with megatron_cuda_on_cpu(), _world_is(group):
            self.ddp = DistributedDataParallel(
                model.config, DistributedDataParallelConfig(grad_reduce_in_fp32=True, use_distributed_optimizer=dist_opt),
                model)
            self.optimizer = get_megatron_optimizer(
                OptimizerConfig(optimizer="adam", lr=peak_lr, min_lr=peak_lr * cfg.min_lr_ratio,
                                weight_decay=cfg.weight_decay, adam_beta1=cfg.betas[0], adam_beta2=cfg.betas[1],
                                adam_eps=cfg.eps, clip_grad=cfg.clip_grad, use_distributed_optimizer=dist_opt,
                                bf16=bf16, fp16=False),
                [self.ddp])
        # Megatron's scheduler sets the LR for its current step count; stepping it by one *before* each optimizer
        # step makes update k (1-based) use warmup k / warmup_steps, so no update is spent at LR 0.
        self.scheduler = OptimizerParamScheduler(
            self.optimizer, init_lr=0.0, max_lr=peak_lr, min_lr=peak_lr * cfg.min_lr_ratio,
            lr_warmup_steps=cfg.warmup_steps, lr_decay_steps=max(steps, cfg.warmup_steps + 1),
            lr_decay_style="cosine", start_wd=cfg.weight_decay, end_wd=cfg.weight_decay,
            wd_incr_steps=max(steps, 1), wd_incr_style="constant")
        self.distributed = dist_opt
        _align_param_index_maps(self.optimizer)

    def zero_grad(self):
        self.ddp.zero_grad_buffer()
        self.optimizer.zero_grad()

    def step(self) -> tuple[float, float]:
        """Reduce gradients over DP, clip, update; returns (lr used, global grad norm before clipping)."""
        from megatron.core.distributed import finalize_model_grads

        self.scheduler.step(1)
        # a pipeline stage may train nothing in this stage (Megatron gives it a stub optimizer that still joins
        # the gradient-norm reductions); its LR is the scheduler's all the same
        lr = self.optimizer.param_groups[0]["lr"] if self.optimizer.param_groups else self.scheduler.get_lr({})
        with megatron_cuda_on_cpu():
            finalize_model_grads([self.ddp])
            ok, norm, _ = self.optimizer.step()
        if not ok:  # fp32 / bf16 have no loss scale to back off; a failed update means the gradients are broken
            raise RuntimeError("Megatron optimizer skipped the update (non-finite gradients)")
        return lr, float(norm) if norm is not None else float("nan")

    def retire(self):
        """Detach this stage's DDP from the parameters: Megatron registers gradient hooks it never removes, and they
        fire only for parameters found in `param_to_bucket_group`, so emptying it makes the old hooks inert."""
        self.ddp.param_to_bucket_group = {}
        for p in self.ddp.module.parameters():
            if hasattr(p, "main_grad"):
                del p.main_grad

    def _chained(self) -> list:
        return getattr(self.optimizer, "chained_optimizers", [self.optimizer])

    def _inner(self):
        return [o.optimizer for o in self._chained() if o.optimizer is not None]

    def main_params(self) -> list:
        """The tensors Adam updates: fp32 copies of bf16 weights under mixed precision, the weights themselves
        (or their shards under the distributed optimizer) in fp32."""
        return [p for o in self._inner() for g in o.param_groups for p in g["params"]]

    # Megatron's metadata for the distributed optimizer's checkpoint format: the canonical per-parameter layout
    # (exp_avg, exp_avg_sq, fp32 main parameter shaped like the model's tensor), gathered over DP with gloo onto
    # DP rank 0 for the save, so that any TP / PP / DP layout can load it.
    SHARDING = {"distrib_optim_sharding_type": "fully_reshardable",
                "distrib_optim_fully_reshardable_mem_efficient": True}

    @property
    def is_stub(self) -> bool:
        """This rank's model (a pipeline stage without a trainable layer) trains nothing in this stage: its
        optimizer joins the collective reductions but holds no state. The same on every DP replica of the stage, so
        the checkpoint's collective gathers over DP are skipped by all of them or by none."""
        return not any(p.requires_grad for p in self.ddp.module.parameters())

    def sharded_state_dict(self, model_sharded: dict, is_loading: bool = False) -> dict:
        """Megatron's sharded optimizer state (keyed by the model's sharded tensors) + the LR scheduler."""
        state = {"optimizer": {}, "scheduler": self.scheduler.state_dict(), "distributed": self.distributed}
        if self.is_stub:
            return state
        if is_loading:
            self._prepare_load()
        with megatron_cuda_on_cpu():
            state["optimizer"] = self.optimizer.sharded_state_dict(model_sharded, is_loading=is_loading,
                                                                   metadata=self.SHARDING)
        if is_loading:
            self._loading = state["optimizer"]
        return state

    def load_sharded(self, state: dict):
        self.scheduler.load_state_dict(state["scheduler"])
        if self.is_stub:
            return
        # The checkpoint's unsharded optimizer state (parameter-group settings) is global rank 0's, which may be a
        # stage that trains nothing: take what is missing from this rank's own loading state dict, and Adam's step
        # from the scheduler, which counts the same updates (both restart with each training stage).
        loaded = _fill_missing(state["optimizer"], self._loading)
        for group in loaded.get("optimizer", {}).get("param_groups", []):
            group["step"] = self.scheduler.num_steps
        with megatron_cuda_on_cpu():
            self.optimizer.load_state_dict(loaded)
        # Megatron's load (without TE / Apex) gives every parameter's torch-Adam state one shared `step` tensor,
        # which Adam then advances once per parameter per update; each parameter needs its own
        for inner in self._inner():
            for st in inner.state.values():
                if torch.is_tensor(st.get("step")):
                    st["step"] = st["step"].clone()

    def _prepare_load(self):
        """Two gaps of Megatron's load path without TE / Apex (torch Adam keeps a per-parameter `step`): building the
        loading state dict reads `step` from a state that does not exist yet, and the distributed optimizer's
        fully-reshardable load expects `step` among the per-parameter tensors it restores (it restores the step
        from the parameter groups instead). Give the fresh state zeros and a step, and let the restore skip it."""
        for inner in self._inner():
            for group in inner.param_groups:
                for p in group["params"]:
                    state = inner.state[p]
                    if not state:
                        state.update(exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p),
                                     step=torch.tensor(0.0))
        for o in self._chained():
            restore = getattr(o, "_set_main_param_and_optimizer_states", None)
            if restore is not None and not getattr(restore, "rad_skips_step", False):
                def skip_step(model_param, tensors, _restore=restore):
                    return _restore(model_param, {"step": None, **tensors})

                skip_step.rad_skips_step = True
                o._set_main_param_and_optimizer_states = skip_step


def _align_param_index_maps(optimizer) -> None:
    """Megatron's distributed optimizer orders each group's Adam parameters fp32 first, then the fp32 copies of
    bf16 ones, but indexes them (`model_param_group_index_map`, which its checkpoint save and load go through) in
    gradient-buffer order; when a group mixes dtypes (bf16 weights beside Mamba's fp32 A_log) the two disagree.
    Re-index in the order the parameters really have."""
    for o in getattr(optimizer, "chained_optimizers", [optimizer]):
        ranges = getattr(o, "opt_group_ranges", None)
        if ranges is None:
            continue
        for gi, group in enumerate(ranges):
            fp32 = [p for p in group["params"] if p.dtype == torch.float32]
            low = [p for p in group["params"] if p.dtype != torch.float32]
            for j, p in enumerate(fp32 + low):
                o.model_param_group_index_map[p] = (gi, j)


def _fill_missing(loaded: dict, local: dict) -> dict:
    """`loaded` with every key it lacks taken from `local` (recursively)."""
    out = dict(loaded)
    for k, v in local.items():
        if k not in out:
            out[k] = v
        elif isinstance(v, dict) and isinstance(out[k], dict):
            out[k] = _fill_missing(out[k], v)
    return out


def uses_distributed_optimizer(cfg: OptimConfig) -> bool:
    return True if cfg.distributed_optimizer is None else bool(cfg.distributed_optimizer)
