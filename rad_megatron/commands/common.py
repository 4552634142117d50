"""Pieces shared by commands: distributed start-up sized to the launch, and rank-0 printing."""

from __future__ import annotations

import json

import torch

from rad_megatron.distributed import ParallelConfig, init_distributed
from rad_megatron.distributed.init import launched_world_size


def start(tp: int | None, seed: int = 1234):
    """init_distributed with TP = the launched world size unless given (commands here replicate nothing)."""
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else launched_world_size()
    return init_distributed(ParallelConfig(tp=tp or world, seed=seed))


def print_json_main(ctx, obj) -> None:
    if ctx.is_main:
        print(json.dumps(obj), flush=True)


def resolve_on_main_first(path):
    """Resolve an HF source on rank 0 first (a GGUF is converted once), then on the others."""
    from rad_megatron.checkpoint.hf_source import resolve

    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        source = resolve(path)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        source = resolve(path)
    return source
