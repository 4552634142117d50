"""Distributed setup in one place: torchrun environment -> torch.distributed -> Megatron parallel state -> seeds.

Only this module reads the launcher's environment; everything downstream receives a `DistContext`.
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import torch

from rad_megatron.errors import RadError


@dataclass
class ParallelConfig:
    """How one model replica is split over ranks."""

    tp: int = 1
    """Tensor-parallel size."""
    pp: int = 1
    """Pipeline-parallel size (1 for everything rad_megatron runs today)."""
    seed: int = 1234
    """Seed for weight init, dropout and sampling; identical on every rank so TP shards and DP replicas agree."""
    timeout_minutes: int = 10
    """Collective timeout: a dead rank fails the job within this bound instead of hanging it."""


@dataclass
class DistContext:
    """What a rank knows about itself after `init_distributed`."""

    rank: int
    world_size: int
    local_rank: int
    tp: int
    pp: int
    dp: int
    tp_rank: int
    dp_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _launcher_env(env) -> tuple[int, int, int]:
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and "MASTER_ADDR" in env:
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
    return 0, 1, 0


def collective_timeout(minutes: float, env=None) -> datetime.timedelta:
    """How long a collective may wait for a peer before the rank fails: `RAD_DIST_TIMEOUT_S` from the launcher's
    environment (the SLURM templates set it) when given, else `minutes`. Bounded, so a stuck rank ends the job."""
    raw = (os.environ if env is None else env).get("RAD_DIST_TIMEOUT_S", "")
    if raw == "":
        return datetime.timedelta(minutes=minutes)
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0:
        raise RadError(f"RAD_DIST_TIMEOUT_S={raw!r} must be a positive number of seconds; unset it for the "
                       f"default ({minutes:g} min)")
    return datetime.timedelta(seconds=seconds)


def launched_world_size(env=None) -> int:
    """Number of ranks the launcher started (1 without a launcher)."""
    return _launcher_env(os.environ if env is None else env)[1]


def local_world_size(env=None) -> int:
    """Ranks the launcher started on this node (torchrun's LOCAL_WORLD_SIZE, SLURM's tasks per node; 1 alone)."""
    env = os.environ if env is None else env
    for key in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):
        if env.get(key, "").isdigit():
            return int(env[key])
    return 1


def select_device(local_rank: int, env=None) -> tuple[torch.device, str]:
    """The one place that decides CPU vs GPU: (device, backend), with the CPU / no-TE shims applied where needed.

    GPUs are shared round-robin: local rank r uses cuda:(r % device_count), so more ranks than GPUs on a node (a
    teacher and a student process on one GPU, say) is allowed. NCCL refuses two ranks of one communicator on the
    same device, so such a job uses gloo instead: collectives on CUDA tensors where gloo has them, and the teacher ->
    student stream staged through host memory (distill/stream.py). One rank per GPU keeps NCCL.
    """
    from rad_megatron.distributed.cpu import apply_cpu_shims, apply_no_te_shims

    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        index = local_rank % count
        torch.cuda.set_device(index)
        device = torch.device("cuda", index)
        backend = "gloo" if local_world_size(env) > count else "nccl"
    else:
        apply_cpu_shims()
        device, backend = torch.device("cpu"), "gloo"
    apply_no_te_shims()
    return device, backend


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(parallel: ParallelConfig | None = None, env=None) -> DistContext:
    """Initialise torch.distributed (NCCL on GPU, gloo on CPU), Megatron's TP/PP/DP groups and the seeds.

    A plain `python -m rad_megatron ...` (no launcher) becomes a world of one, so every command runs the same way
    single-process or under torchrun. Calling it again after `destroy_distributed` starts afresh.
    """
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed


    parallel = parallel or ParallelConfig()
    env = os.environ if env is None else env
    rank, world_size, local_rank = _launcher_env(env)
    if world_size % (parallel.tp * parallel.pp):
        raise RadError(f"parallel.tp={parallel.tp} x parallel.pp={parallel.pp} needs a multiple of "
                       f"{parallel.tp * parallel.pp} ranks but {world_size} were launched; "
                       f"launch with torchrun --nproc-per-node {parallel.tp * parallel.pp} (or a multiple)")
    timeout = collective_timeout(parallel.timeout_minutes, env)
    device, backend = select_device(local_rank, env)

    if not torch.distributed.is_initialized():
        if world_size == 1 and "MASTER_ADDR" not in env:
            init_method = f"tcp://127.0.0.1:{_free_port()}"
        else:
            init_method = "env://"
        torch.distributed.init_process_group(backend=backend, init_method=init_method, rank=rank,
                                             world_size=world_size, timeout=timeout)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=parallel.tp, pipeline_model_parallel_size=parallel.pp,
            distributed_timeout_minutes=timeout.total_seconds() / 60)
    torch.manual_seed(parallel.seed)
    model_parallel_cuda_manual_seed(parallel.seed)
    return DistContext(
        rank=rank, world_size=world_size, local_rank=local_rank, tp=parallel.tp, pp=parallel.pp,
        dp=world_size // (parallel.tp * parallel.pp),
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        dp_rank=parallel_state.get_data_parallel_rank(), device=device, backend=backend)


def init_launched(tp: int | None, seed: int = 1234) -> DistContext:
    """init_distributed with TP = the launched world size unless given (for jobs that replicate nothing)."""
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else launched_world_size()
    return init_distributed(ParallelConfig(tp=tp or world, seed=seed))


def destroy_distributed() -> None:
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
