"""rad_megatron checkpoint -> Hugging Face folder: a standard Llama folder for an all-attention model, the
MambaInLlama (MIL) hybrid format (`model.layers.N.mamba.*` + `mamba_config.json`, what checkpoint/mil.py reads), or
transformers' native GraniteMoeHybrid (`hf-hybrid`, checkpoint/hf_hybrid.py).

The model is loaded at any TP size, its shards are gathered to one full (TP=1 layout) state dict with the same
per-component rules that split them (checkpoint/shard.py), renamed with the key maps of hf_llama.py / mil.py, and
written as safetensors + config.json (+ mamba_config.json) + tokenizer into a sibling temp folder that is renamed into
place once complete. Every refusal (wrong format for the layout, a layout MIL cannot express, a non-empty --out)
happens before anything is written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from pathlib import Path

import torch

from rad_megatron.checkpoint.hf_hybrid import check_hybrid_expressible, hybrid_config_dict, mcore_to_hybrid
from rad_megatron.checkpoint.hf_llama import mcore_to_hf
from rad_megatron.checkpoint.mil import MAMBA_CONFIG, check_mil_expressible, mil_config_dict
from rad_megatron.checkpoint.shard import to_local_names, unshard_state_dicts
from rad_megatron.checkpoint.store import check_writable
from rad_megatron.config import ModelConfig
from rad_megatron.errors import RadError

FORMATS = ("hf", "mil", "hf-hybrid")
MAX_SHARD_SIZE = "5GB"  # transformers' save_pretrained default


def check_export(cfg: ModelConfig, fmt: str) -> None:
    """Refuse an export format the model's layout cannot be written in."""
    if fmt not in FORMATS:
        raise RadError(f"--to {fmt}: unknown format; choose one of {', '.join(FORMATS)}")
    if fmt == "hf" and cfg.mamba_layers:
        raise RadError(f"--to hf: the model has Mamba layers {cfg.mamba_layers} and a standard Llama folder holds "
                       f"attention layers only; export it with --to mil")
    if fmt == "hf-hybrid":
        check_hybrid_expressible(cfg)
    if fmt == "mil":
        if not cfg.mamba_layers:
            raise RadError("--to mil: the model has no Mamba layers; export it as a standard Llama folder with --to hf")
        try:
            check_mil_expressible(cfg)
        except RadError as e:
            raise RadError(f"--to mil: {e}") from None


def gather_full_state_dict(model) -> dict[str, torch.Tensor] | None:
    """The whole model as one TP=1, local-name state dict on TP rank 0 (None on the other TP ranks).

    Collective over the model's TP group; each rank sends its shard once (gather, not all-gather, so only one rank
    holds the full model).
    """
    cfg = model.rad_config
    local = to_local_names({k: v.detach().cpu() for k, v in model.state_dict().items()
                            if not k.endswith("_extra_state")})
    if cfg.tie_word_embeddings:
        local.pop("output_layer.weight", None)
    group, tp = model.rad_tp_group, model.rad_tp
    if tp == 1:
        return unshard_state_dicts([local], cfg)
    is_root = torch.distributed.get_rank(group) == 0
    shards = [None] * tp if is_root else None
    torch.distributed.gather_object(local, shards, dst=torch.distributed.get_global_rank(group, 0), group=group)
    return unshard_state_dicts(shards, cfg) if is_root else None


def hf_llama_config(cfg: ModelConfig, dtype: torch.dtype = torch.float32, special_ids: dict | None = None):
    """transformers' LlamaConfig for `cfg` (the inverse of ModelConfig.from_hf)."""
    from transformers import LlamaConfig

    rope_scaling = None
    if cfg.rope_scaling is not None:
        rope_scaling = {"rope_type": "llama3", **dataclasses.asdict(cfg.rope_scaling)}
    return LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.kv_channels, rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta, rope_scaling=rope_scaling, max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings, hidden_act="silu", attention_bias=False, mlp_bias=False,
        architectures=["LlamaForCausalLM"], dtype=str(dtype).removeprefix("torch."), **(special_ids or {}))


@contextlib.contextmanager
def atomic_folder(path: Path, force: bool = False):
    """Yield a sibling temp folder; on success it replaces `path` in one rename, on failure it is removed."""
    path = Path(path)
    check_writable(path, force)
    tmp, old = path.with_name(f".{path.name}.tmp"), path.with_name(f".{path.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def write_safetensors(sd: dict[str, torch.Tensor], folder: Path, max_shard_size=MAX_SHARD_SIZE) -> list[str]:
    """model.safetensors, or model-0000i-of-0000n.safetensors + model.safetensors.index.json past max_shard_size."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    split = split_torch_state_dict_into_shards(sd, max_shard_size=max_shard_size)
    for filename, names in split.filename_to_tensors.items():
        # key maps return views (q/k/v rows, gate/up halves) that safetensors refuses to write as shared storage
        save_file({n: sd[n].contiguous().clone() for n in names}, str(folder / filename), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True))
    return sorted(split.filename_to_tensors)


def write_hf_folder(full: dict[str, torch.Tensor], cfg: ModelConfig, out, fmt: str, tokenizer=None,
                    force: bool = False, max_shard_size=MAX_SHARD_SIZE) -> dict:
    """Write a full TP=1 state dict as an HF folder in format `fmt` (FORMATS), atomically; returns a summary."""
    check_export(cfg, fmt)
    hf = mcore_to_hybrid(full, cfg) if fmt == "hf-hybrid" else mcore_to_hf(full, cfg)
    dtype = next(iter(hf.values())).dtype
    special = {}
    if tokenizer is not None:
        special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    with atomic_folder(Path(out), force) as tmp:
        files = write_safetensors(hf, tmp, max_shard_size)
        if fmt == "hf-hybrid":
            (tmp / "config.json").write_text(json.dumps(hybrid_config_dict(cfg, dtype, special), indent=2) + "\n")
        else:
            hf_llama_config(cfg, dtype, special).to_json_file(str(tmp / "config.json"), use_diff=True)
        for f in files:  # safetensors writes 0600; give the weights the permissions any new file gets here
            os.chmod(tmp / f, (tmp / "config.json").stat().st_mode & 0o777)
        if fmt == "mil":
            (tmp / MAMBA_CONFIG).write_text(json.dumps(mil_config_dict(cfg), indent=2))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return {"format": fmt, "tensors": len(hf), "files": files, "dtype": str(dtype).removeprefix("torch."),
            "mamba_layers": cfg.mamba_layers}
