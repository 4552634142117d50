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


def load_model_and_tokenizer(args, ctx):
    """The model of --ckpt (a rad_megatron checkpoint) or --hf (HF Llama / MIL folder or GGUF) on the rank's device,
    and its tokenizer."""
    from rad_megatron.errors import RadError

    ckpt, hf = getattr(args, "ckpt", None), getattr(args, "hf", None)
    if ckpt and hf:
        raise RadError("give either --ckpt or --hf, not both")
    if ckpt:
        from rad_megatron.checkpoint.store import load_model, load_tokenizer, read_meta

        model = load_model(ckpt, tp=ctx.tp).to(ctx.device)
        model.rad_meta = read_meta(ckpt)
        return model.eval(), load_tokenizer(ckpt)
    from transformers import AutoTokenizer

    from rad_megatron.checkpoint.hf_import import model_from_hf

    source = resolve_on_main_first(hf)
    model, _ = model_from_hf(source, tp=ctx.tp, tp_rank=ctx.tp_rank)
    model = model.to(ctx.device)
    model.rad_meta = {"source": str(source.folder)}
    return model, AutoTokenizer.from_pretrained(source.folder)
