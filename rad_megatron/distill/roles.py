"""One torchrun world split into student ranks [0, S) and teacher ranks [S, S+T).

Students own Megatron's global parallel state (TP x DP over their S ranks; the optimizer and every Megatron helper
see it). Teachers get their own TP x DP groups from a HyperCommGrid placed after the students and build their model
with that ProcessGroupCollection. Teacher replica j serves student replicas r with r % teacher_dp == j.
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
    """How many ranks teach and how each side is tensor-parallel."""

    teacher_ranks: int = field(default=1, metadata=rules(ge=0))
    """Ranks running the teacher (placed after the student ranks); 0 when the targets come from an offline teacher
    cache (distill.teacher.cache), which sets it so."""
    teacher_tp: int = field(default=1, metadata=rules(ge=1))
    """Tensor-parallel size of each teacher replica."""
    student_tp: int = field(default=1, metadata=rules(ge=1))
    """Tensor-parallel size of each student replica; the remaining student ranks are data-parallel."""


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
    pg_collection: object = None
    device: torch.device = torch.device("cpu")
    student_group: object = None
    """All student ranks (collective checkpoint loads)."""
    teacher_group: object = None
    """All teacher ranks (collective checkpoint loads of a teacher saved as a rad checkpoint)."""

    @property
    def is_student(self) -> bool:
        return self.name == "student"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def student_replica_ranks(self, replica: int) -> list[int]:
        return [replica * self.student_tp + t for t in range(self.student_tp)]

    def teacher_for(self, student_replica: int) -> int:
        """Global rank of the teacher TP-rank-0 that serves this student replica."""
        return self.student_ranks + (student_replica % self.teacher_dp) * (self.teacher_ranks // self.teacher_dp)

    def served_replicas(self) -> list[int]:
        """Student replicas this teacher replica serves (teachers only)."""
        return [r for r in range(self.student_dp) if r % self.teacher_dp == self.dp_rank]


def init_roles(layout: RoleLayout, seed: int = 1234, timeout_minutes: int = 10, env=None) -> Role:
    from megatron.core import parallel_state
    from megatron.core.hyper_comm_grid import HyperCommGrid
    from megatron.core.process_groups_config import ProcessGroupCollection
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    from rad_megatron.distributed.init import _launcher_env, collective_timeout, select_device

    env = os.environ if env is None else env
    rank, world, local_rank = _launcher_env(env)
    T = layout.teacher_ranks
    S = world - T
    if T < 0 or S < 1:
        raise RadError(f"distill.roles.teacher_ranks={T} needs at least {T + 1} ranks (students too) but {world} "
                       f"were launched; launch more ranks or lower teacher_ranks")
    if S % layout.student_tp:
        raise RadError(f"distill.roles.student_tp={layout.student_tp} does not divide the {S} student ranks "
                       f"({world} launched - {T} teacher ranks)")
    if T % layout.teacher_tp:
        raise RadError(f"distill.roles.teacher_tp={layout.teacher_tp} does not divide teacher_ranks={T}")
    timeout = collective_timeout(timeout_minutes, env)
    device, backend = select_device(local_rank, env)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timeout)
    if parallel_state.model_parallel_is_initialized():  # e.g. after the pipeline's probe phase
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=layout.student_tp, local_world_size=S,
                                             distributed_timeout_minutes=timeout.total_seconds() / 60)
    student_group = dist.new_group(list(range(S)), timeout=timeout)
    teacher_group = dist.new_group(list(range(S, world)), timeout=timeout) if T else None
    t_dp = T // layout.teacher_tp
    if T:  # no teacher ranks: targets come from an offline cache
        grid = HyperCommGrid([layout.teacher_tp, 1, 1, t_dp], ["tp", "cp", "pp", "dp"], rank_offset=S)
        groups = {n: grid.create_pg(n, timeout=timeout) for n in ("tp", "cp", "pp", "dp")}
    common = dict(rank=rank, world_size=world, student_ranks=S, teacher_ranks=T, student_tp=layout.student_tp,
                  student_dp=S // layout.student_tp, teacher_dp=t_dp, device=device, student_group=student_group,
                  teacher_group=teacher_group)
    torch.manual_seed(seed)
    if rank < S:
        model_parallel_cuda_manual_seed(seed)
        return Role(name="student", tp=layout.student_tp, tp_rank=parallel_state.get_tensor_model_parallel_rank(),
                    dp=S // layout.student_tp, dp_rank=parallel_state.get_data_parallel_rank(), **common)
    tp_rank = groups["tp"].rank()
    model_parallel_cuda_manual_seed(seed, tp_rank=tp_rank, ep_rank=0, etp_rank=0)
    pgc = ProcessGroupCollection(tp=groups["tp"], cp=groups["cp"], pp=groups["pp"], embd=groups["pp"],
                                 pos_embd=groups["pp"], dp=groups["dp"], dp_cp=groups["dp"], tp_cp=groups["tp"])
    return Role(name="teacher", tp=layout.teacher_tp, tp_rank=tp_rank, dp=t_dp, dp_rank=groups["dp"].rank(),
                pg_collection=pgc, **common)
