"""A student's checkpointed training state, one `dist_checkpointing` folder per save (checkpoint.store.save_model):

  model        the model's sharded state dict (any TP / PP loads it; `rad eval`, `rad swap`, ... read it too)
  optimizer    Megatron's sharded optimizer state (distill.optim: fp32 main weights and Adam moments per model tensor,
               in the distributed optimizer's fully-reshardable layout) and the LR scheduler
  train        step, training stage and sampler position (the same on every rank: saved once)
  per rank     train_state/rng_<seat>.pt: this rank's RNG state, restored where the same seat exists again

So `--resume` continues at another TP, PP or DP layout (the sharded tensors are re-cut for the new one) and is
bit-exact at the same layout.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import torch

from rad_megatron.errors import RadError


def _seat(role) -> str:
    return f"rng_tp{role.tp_rank}_pp{role.pp_rank}_dp{role.dp_rank}"


def save_training_state(trainer, step: int) -> Path:
    """Write the trainer's state at `step` (every student rank; teachers join via save_model(None, ...))."""
    from rad_megatron.checkpoint.store import save_model
    from rad_megatron.distill.peers import meet_before_save

    path = trainer.out / "checkpoints" / f"step_{step:06d}"
    meet_before_save(trainer.role, step, trainer.cfg.stream.timeout_s)
    model_sharded = trainer.model.sharded_state_dict()
    extra = {"optimizer": trainer.optimizer.sharded_state_dict(model_sharded),
             "train": {"step": step, "stage_idx": trainer.stage_idx, "sampler": trainer.sampler.state_dict(),
                       "nonfinite_skipped": trainer.guard.skipped}}
    meta = {**trainer.meta, "train": {"step": step, "config": json.loads(json.dumps(asdict(trainer.cfg))),
                                      "new_layers": trainer.new_layers, "layout": _layout(trainer.role),
                                      "precision": str(next(trainer.model.parameters()).dtype)}}
    # the teacher ranks join the collective save without training state: Megatron's check that every rank's common
    # (unsharded) state is the same would warn about them on every save
    validation = logging.getLogger("megatron.core.dist_checkpointing.validation")
    level = validation.level
    validation.setLevel(logging.ERROR)
    try:
        save_model(trainer.model, path, metadata=meta, force=True, tokenizer=trainer.tokenizer, extra_state=extra,
                   per_rank_state={"step": step, "torch_rng": torch.get_rng_state()}, per_rank_name=_seat(trainer.role))
    finally:
        validation.setLevel(level)
    if trainer.role.is_main:
        latest = trainer.out / "checkpoints" / "latest.txt"
        tmp = latest.with_suffix(".tmp")
        tmp.write_text(path.name)
        tmp.replace(latest)
    return path


def _layout(role) -> dict:
    return {"tp": role.tp, "pp": role.pp, "dp": role.dp}


def load_training_state(trainer, path: Path) -> int:
    """Restore optimizer, scheduler, sampler and (same seat) RNG from `path` into a trainer whose model already
    holds the checkpoint's weights (checkpoint.store.load_model at this run's layout); returns the step."""
    from megatron.core import dist_checkpointing

    from rad_megatron.checkpoint.store import read_meta

    path = Path(path)
    common = dist_checkpointing.load_common_state_dict(str(path))
    if "train" not in common:
        raise RadError(f"--resume {path}: this checkpoint holds no sharded training state (written before resharding "
                       f"checkpoints); continue from its weights with model.ckpt={path} and a new --out")
    train = common["train"]
    trainer._enter_stage(train["stage_idx"])
    model_sharded = trainer.model.sharded_state_dict()
    wanted = {"optimizer": trainer.optimizer.sharded_state_dict(model_sharded, is_loading=True)}
    state = dist_checkpointing.load(wanted, str(path), process_group=trainer.role.student_group)
    trainer.optimizer.load_sharded(state["optimizer"])
    trainer.sampler.load_state_dict(train["sampler"])
    trainer.guard.skipped = train.get("nonfinite_skipped", 0)
    rng = path / "train_state" / f"{_seat(trainer.role)}.pt"
    saved_layout = read_meta(path).get("train", {}).get("layout")
    # at the saved layout every seat has its RNG state (bit-exact resume); another layout has other seats, whose RNG
    # streams start from the run's seed
    if saved_layout == _layout(trainer.role) or rng.is_file():
        torch.set_rng_state(load_train_state(rng)["torch_rng"])
    trainer.step = train["step"]
    return trainer.step


def load_train_state(f: Path) -> dict:
    """One rank's saved state (its RNG), or one line naming the file that is missing or unreadable."""
    from rad_megatron.files import torch_load

    if not f.is_file():
        raise RadError(f"--resume: '{f}' is missing; at the layout the checkpoint was written with every rank saved "
                       f"its own; resume from an earlier checkpoint (checkpoints/step_*)")
    state = torch_load(f, "--resume: training state", "resume from an earlier checkpoint (checkpoints/step_*) or "
                                                       "start the run again")
    if not isinstance(state, dict) or "step" not in state:
        raise RadError(f"--resume: '{f}' is not a rad_megatron training state; resume from another checkpoint")
    return state
