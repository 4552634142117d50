"""MambaInLlama (MIL) hybrid HF format <-> Megatron hybrid state dicts.

A MIL folder is an HF Llama folder whose non-attention layers hold `model.layers.N.mamba.*` (in_proj packed
[z, x, B, C, dt] with x and B of width d_xb, conv1d over [x, B, C], dt_bias, A_log, D, norm.weight, out_proj) plus a
`mamba_config.json` (d_model, d_inner, d_xb, ssm_cfg{ngroups, d_state, ...}, attn_layers, n_layer, ...). In MIL,
nheads = ngroups and headdim = d_state.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path


from rad_megatron.config import ATTENTION, MAMBA, MambaConfig, ModelConfig
from rad_megatron.errors import RadError

MAMBA_CONFIG = "mamba_config.json"
# MIL name (under model.layers.N.mamba.) -> ours (under decoder.layers.{2N}.mixer.)
MIXER_KEYS = {"in_proj.weight": "in_proj.weight", "conv1d.weight": "conv1d_weight", "conv1d.bias": "conv1d_bias",
              "dt_bias": "dt_bias", "A_log": "A_log", "D": "D", "norm.weight": "norm.weight",
              "out_proj.weight": "out_proj.weight"}


def is_mil_folder(folder: Path) -> bool:
    return (Path(folder) / MAMBA_CONFIG).is_file()


def config_from_mil(hf_config: dict, mamba_config: dict) -> ModelConfig:
    cfg = ModelConfig.from_hf(hf_config)
    ssm = mamba_config.get("ssm_cfg", {})
    ngroups, d_state = int(ssm.get("ngroups", 1)), int(ssm.get("d_state", 128))
    d_inner = int(mamba_config.get("d_inner") or cfg.hidden_size)
    if ngroups * d_state != d_inner:
        raise RadError(f"{MAMBA_CONFIG}: MIL layout needs ssm_cfg.ngroups * d_state == d_inner "
                       f"({ngroups} * {d_state} != {d_inner})")
    attn = set(int(i) for i in mamba_config.get("attn_layers", []))
    cfg.layout = [ATTENTION if i in attn else MAMBA for i in range(cfg.num_layers)]
    cfg.mamba = MambaConfig(num_heads=ngroups, head_dim=d_state, state_dim=d_state, num_groups=ngroups,
                            d_xb=int(mamba_config["d_xb"]), d_conv=int(ssm.get("d_conv", 4)),
                            chunk_size=int(ssm.get("chunk_size", 128)))
    cfg.__post_init__()
    return cfg


def read_mil_config(folder: Path) -> dict:
    return json.loads((Path(folder) / MAMBA_CONFIG).read_text())


def check_mil_expressible(cfg: ModelConfig) -> None:
    """MIL's format fixes nheads = ngroups, headdim = d_state and B of width d_xb; refuse anything else."""
    m = cfg.mamba_shape()
    d_inner = m.num_heads * m.head_dim
    problems = []
    if m.num_groups != m.num_heads:
        problems.append(f"mamba.num_groups={m.num_groups} != num_heads={m.num_heads}")
    if m.head_dim != m.state_dim:
        problems.append(f"mamba.head_dim={m.head_dim} != state_dim={m.state_dim}")
    if m.d_xb == d_inner and m.num_groups * m.state_dim != d_inner:
        problems.append("standard layout with B narrower than x")
    if problems:
        raise RadError("model is not in the MIL layout (" + "; ".join(problems) + "); MIL export needs "
                       "num_groups == num_heads and head_dim == state_dim")


def mamba_block_to_mcore(hf: dict, i: int) -> dict:
    src, mix = f"model.layers.{i}.mamba.", f"decoder.layers.{2 * i}.mixer."
    out = {mix + ours: hf[src + theirs] for theirs, ours in MIXER_KEYS.items()}
    out[f"decoder.layers.{2 * i}.norm.weight"] = hf[f"model.layers.{i}.input_layernorm.weight"]
    return out


def mamba_block_to_hf(sd: dict, i: int) -> dict:
    dst, mix = f"model.layers.{i}.mamba.", f"decoder.layers.{2 * i}.mixer."
    out = {dst + theirs: sd[mix + ours] for theirs, ours in MIXER_KEYS.items()}
    out[f"model.layers.{i}.input_layernorm.weight"] = sd[f"decoder.layers.{2 * i}.norm.weight"]
    return out


def mil_config_dict(cfg: ModelConfig) -> dict:
    """mamba_config.json for a hybrid in the MIL layout."""
    check_mil_expressible(cfg)
    m = cfg.mamba_shape()
    return {"d_model": cfg.hidden_size, "ssm_cfg": {"expand": 1, "ngroups": m.num_groups, "d_state": m.state_dim,
                                                    "d_conv": m.d_conv, "chunk_size": m.chunk_size},
            "rms_norm_eps": cfg.rms_norm_eps, "vocab_size": cfg.vocab_size, "d_inner": m.num_heads * m.head_dim,
            "d_xb": m.d_xb, "intermediate_size": cfg.intermediate_size, "hidden_act": "silu",
            "n_layer": cfg.num_layers, "attn_layers": cfg.attention_layers}


def mamba_shape_dict(cfg: ModelConfig) -> dict:
    return dataclasses.asdict(cfg.mamba_shape())


__all__ = ["is_mil_folder", "config_from_mil", "read_mil_config", "mamba_block_to_mcore", "mamba_block_to_hf",
           "mil_config_dict", "check_mil_expressible"]
