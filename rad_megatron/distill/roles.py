"""One torchrun world split into student ranks [0, S) and teacher ranks [S, S+T).

Students own Megatron's global parallel state (TP x PP x DP over their S ranks; the optimizer, the pipeline schedules
and every Megatron helper see it). Teachers get their own TP x PP x DP groups from a HyperCommGrid placed after the
students and build their model with that ProcessGroupCollection. Teacher replica j serves student replicas r with
r % teacher_dp == j: its last pipeline stage (TP rank 0) sends each micro-batch's targets to the last pipeline stage
of the student replica (every TP rank there), the only stage that computes the loss.

Where each rank sits is gathered once over the world (`Seat` per rank), so routing never depends on how Megatron or
HyperCommGrid order their ranks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from rad_megatron.errors import RadError
from rad_megatron.validation import rules


@dataclass
class RoleLayout:
    """How many ranks teach and how each side is split (tensor and pipeline parallel; the rest is data-parallel)."""

    teacher_ranks: int = field(default=1, metadata=rules(ge=0))
    """Ranks running the teacher (placed after the student ranks); 0 when the targets come from an offline teacher
    cache (distill.teacher.cache), which sets it so."""
    teacher_tp: int = field(default=1, metadata=rules(ge=1))
    """Tensor-parallel size of each teacher replica."""
    student_tp: int = field(default=1, metadata=rules(ge=1))
    """Tensor-parallel size of each student replica; the remaining student ranks are data-parallel."""
    student_pp: int = field(default=1, metadata=rules(ge=1))
    """Pipeline stages of each student replica: filled in from system.student_pp (a config sets it there)."""
    teacher_pp: int = field(default=1, metadata=rules(ge=1))
    """Pipeline stages of each teacher replica: filled in from system.teacher_pp (a config sets it there)."""


@dataclass(frozen=True)
class Seat:
    """Where one rank sits: its side and its coordinates in that side's TP x PP x DP grid."""

    name: str
    tp_rank: int
    pp_rank: int
    dp_rank: int


@dataclass
class Role:
    name: str  # "student" | "teacher"
    rank: int
    world_size: int
    student_ranks: int
    teacher_ranks: int
    tp: int
    tp_rank: int
    dp: int
    dp_rank: int
    student_tp: int
    student_dp: int
    teacher_dp: int
    pp: int = 1
    pp_rank: int = 0
    student_pp: int = 1
    teacher_pp: int = 1
    pg_collection: object = None
    device: torch.device = torch.device("cpu")
    student_group: object = None
    """All student ranks (collective checkpoint loads)."""
    teacher_group: object = None
    """All teacher ranks (collective checkpoint loads of a teacher saved as a rad checkpoint)."""
    seats: list[Seat] = field(default_factory=list)
    """Every rank's seat, indexed by global rank."""

    @property
    def is_student(self) -> bool:
        return self.name == "student"

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp - 1

    @property
    def is_main(self) -> bool:
        """The rank that logs, plots and writes the run's files: student TP 0 / DP 0 on the last pipeline stage
        (where the loss and held-out metrics are); rank 0 without pipeline parallelism."""
        return self.is_student and self.tp_rank == 0 and self.dp_rank == 0 and self.is_last_stage

    def _ranks(self, **want) -> list[int]:
        return [r for r, s in enumerate(self.seats) if all(getattr(s, k) == v for k, v in want.items())]

    def student_replica_ranks(self, replica: int) -> list[int]:
        """The ranks that receive a student replica's teacher targets: its last stage, every TP rank."""
        return self._ranks(name="student", dp_rank=replica, pp_rank=self.student_pp - 1)

    def teacher_for(self, student_replica: int) -> int:
        """Global rank that sends this student replica's targets: the serving teacher's last stage, TP rank 0."""
        return self._ranks(name="teacher", dp_rank=student_replica % self.teacher_dp, pp_rank=self.teacher_pp - 1,
                           tp_rank=0)[0]

    def served_replicas(self) -> list[int]:
        """Student replicas this teacher replica serves (teachers only)."""
        return [r for r in range(self.student_dp) if r % self.teacher_dp == self.dp_rank]

    @property
    def sends_targets(self) -> bool:
        """A teacher rank that sends (last stage, TP rank 0)."""
        return not self.is_student and self.is_last_stage and self.tp_rank == 0


def _check_layout(layout: RoleLayout, world: int) -> tuple[int, int]:
    T = layout.teacher_ranks
    S = world - T
    if T < 0 or S < 1:
        raise RadError(f"distill.roles.teacher_ranks={T} needs at least {T + 1} ranks (students too) but {world} "
                       f"were launched; launch more ranks or lower teacher_ranks")
    s_model, t_model = layout.student_tp * layout.student_pp, layout.teacher_tp * layout.teacher_pp
    if S % s_model:
        raise RadError(f"distill.roles.student_tp x system.student_pp = {layout.student_tp} x {layout.student_pp} "
                       f"does not divide the {S} student ranks ({world} launched - {T} teacher ranks)")
    if T and T % t_model:
        raise RadError(f"distill.roles.teacher_tp x system.teacher_pp = {layout.teacher_tp} x {layout.teacher_pp} "
                       f"does not divide teacher_ranks={T}")
    return S, T


def _teacher_groups(layout: RoleLayout, S: int, timeout):
    """The teachers' TP / PP / DP groups (every rank takes part in creating them) and their embedding groups
    (first and last stage of each pipeline: a tied output layer is synchronised over it)."""
    from megatron.core.hyper_comm_grid import HyperCommGrid

    t_dp = layout.teacher_ranks // (layout.teacher_tp * layout.teacher_pp)
    grid = HyperCommGrid([layout.teacher_tp, 1, layout.teacher_pp, t_dp], ["tp", "cp", "pp", "dp"], rank_offset=S)
    groups = {n: grid.create_pg(n, timeout=timeout) for n in ("tp", "cp", "pp", "dp")}
    mine = None
    for ranks in grid.get_rank_enum(["pp"]):
        ends = sorted({ranks[0], ranks[-1]})
        g = dist.new_group(ends, timeout=timeout)
        if dist.get_rank() in ends:
            mine = g
    groups["embd"] = mine
    return groups, t_dp


def init_roles(layout: RoleLayout, seed: int = 1234, timeout_minutes: int = 10, env=None) -> Role:
    from megatron.core import parallel_state
    from megatron.core.process_groups_config import ProcessGroupCollection
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    from rad_megatron.distributed.init import _launcher_env, collective_timeout, select_device

    env = os.environ if env is None else env
    rank, world, local_rank = _launcher_env(env)
    S, T = _check_layout(layout, world)
    timeout = collective_timeout(timeout_minutes, env)
    device, backend = select_device(local_rank, env)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timeout)
    # e.g. after the pipeline's probe phase or an earlier run in this process; unconditionally, because on a teacher
    # rank (outside every student group) Megatron's "is initialised" check is False while its global buffers exist
    parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=layout.student_tp,
                                             pipeline_model_parallel_size=layout.student_pp, local_world_size=S,
                                             distributed_timeout_minutes=timeout.total_seconds() / 60)
    student_group = dist.new_group(list(range(S)), timeout=timeout)
    teacher_group = dist.new_group(list(range(S, world)), timeout=timeout) if T else None
    groups, t_dp = _teacher_groups(layout, S, timeout) if T else ({}, 0)  # T == 0: targets from an offline cache
    common = dict(rank=rank, world_size=world, student_ranks=S, teacher_ranks=T, student_tp=layout.student_tp,
                  student_dp=S // (layout.student_tp * layout.student_pp), teacher_dp=t_dp,
                  student_pp=layout.student_pp, teacher_pp=layout.teacher_pp, device=device,
                  student_group=student_group, teacher_group=teacher_group)
    torch.manual_seed(seed)
    if rank < S:
        model_parallel_cuda_manual_seed(seed)
        role = Role(name="student", tp=layout.student_tp, tp_rank=parallel_state.get_tensor_model_parallel_rank(),
                    dp=common["student_dp"], dp_rank=parallel_state.get_data_parallel_rank(), pp=layout.student_pp,
                    pp_rank=parallel_state.get_pipeline_model_parallel_rank(), **common)
    else:
        tp_rank = groups["tp"].rank()
        model_parallel_cuda_manual_seed(seed, tp_rank=tp_rank, ep_rank=0, etp_rank=0)
        pgc = ProcessGroupCollection(tp=groups["tp"], cp=groups["cp"], pp=groups["pp"], embd=groups["embd"],
                                     pos_embd=groups["embd"], dp=groups["dp"], dp_cp=groups["dp"],
                                     tp_cp=groups["tp"])
        role = Role(name="teacher", tp=layout.teacher_tp, tp_rank=tp_rank, dp=t_dp, dp_rank=groups["dp"].rank(),
                    pp=layout.teacher_pp, pp_rank=groups["pp"].rank(), pg_collection=pgc, **common)
    seats: list = [None] * world
    dist.all_gather_object(seats, Seat(role.name, role.tp_rank, role.pp_rank, role.dp_rank))
    role.seats = seats
    return role
