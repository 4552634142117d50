"""What each `system.*` setting means to the trainer, resolved in one place that `rad distill`, `rad pipeline` and
`rad plan` all call, so the plan never sizes a job the trainer would run differently (or refuse).

precision          student: bf16 weights and activations, fp32 main weights and gradients in Megatron's mixed-precision
                   optimizer; teacher: loads and runs in the same dtype (no optimizer, no gradients)
recompute          student: Megatron's activation recompute (model.build.recompute_fields); the teacher never keeps
                   activations (forward only), so it runs without
sequence_parallel  both sides where their TP > 1 (Megatron's own; the sequence is split over TP ranks)
student_pp         the students' pipeline stages (Megatron's 1F1B schedule; distill.roles.Role)
teacher_pp         the teachers' pipeline stages (forward-only schedule over their own pipeline group)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from rad_megatron.errors import RadError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class SideBuild:
    """How one side's model is built on its ranks: model.build.build_model's runtime options."""

    dtype: torch.dtype
    """Parameter and activation dtype."""
    recompute: str
    """none | selective | full."""
    sequence_parallel: bool
    """Megatron's sequence parallelism (only with TP > 1)."""
    pp: int
    """Pipeline stages of one replica (this rank builds its own stage)."""

    def options(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TrainerSystem:
    """A run's system settings as the trainer uses them."""

    layout: object
    """distill.roles.RoleLayout with the pipeline sizes filled in."""
    student: SideBuild
    teacher: SideBuild
    mixed_precision: bool
    """The student's optimizer keeps fp32 main parameters and gradients for bf16 weights."""


def check_system(system, layout, seq_len: int) -> None:
    """Refuse, in one line, a system setting the trainer cannot run (the same check for `rad plan`)."""
    for side in ("student", "teacher"):
        given, wanted = getattr(layout, f"{side}_pp"), getattr(system, f"{side}_pp")
        if given not in (1, wanted):
            raise RadError(f"distill.roles.{side}_pp={given} differs from system.{side}_pp={wanted}; pipeline stages "
                           f"are set in system.{side}_pp only (remove distill.roles.{side}_pp)")
    for side, tp in (("student", layout.student_tp), ("teacher", layout.teacher_tp)):
        if system.sequence_parallel and tp > 1 and seq_len % tp:
            raise RadError(f"system.sequence_parallel splits each sequence over the {side}'s {tp} TP ranks, but "
                           f"data.seq_len={seq_len} is not a multiple of {tp}; choose a seq_len divisible by {tp} or "
                           f"set system.sequence_parallel=false")


def resolve_system(system, layout, seq_len: int) -> TrainerSystem:
    """settings.SystemSection + distill.roles.RoleLayout (+ the training sequence length, for the checks) ->
    what the student and teacher ranks build and how they train."""
    check_system(system, layout, seq_len)
    dtype = DTYPES[system.precision]
    full = dataclasses.replace(layout, student_pp=system.student_pp, teacher_pp=system.teacher_pp)
    student = SideBuild(dtype, system.recompute, system.sequence_parallel and layout.student_tp > 1,
                        system.student_pp)
    teacher = SideBuild(dtype, "none", system.sequence_parallel and layout.teacher_tp > 1, system.teacher_pp)
    return TrainerSystem(full, student, teacher, mixed_precision=dtype != torch.float32)


def eval_width_multiple(ts: TrainerSystem) -> int:
    """Held-out batches are padded (masked) to a multiple of this so that sequence parallelism can split them."""
    return math.lcm(*(tp for tp, side in ((ts.layout.student_tp, ts.student), (ts.layout.teacher_tp, ts.teacher))
                      if side.sequence_parallel))
