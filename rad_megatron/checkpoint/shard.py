"""Tensor-parallel sharding of full (TP=1 layout) Megatron hybrid state dicts, and its inverse.

One rule per parameter kind, keyed on the name's suffix. Packed parameters (SwiGLU fc1, Mamba in_proj and conv) are
split per component so that rank r holds cat(component_0[r], component_1[r], ...), as Megatron's layers expect.
"""

from __future__ import annotations

import torch

from rad_megatron.config import ModelConfig
from rad_megatron.errors import RadError

ROW_PARALLEL = ("self_attention.linear_proj.weight", "mlp.linear_fc2.weight", "mixer.out_proj.weight")
COL_PARALLEL = ("self_attention.linear_qkv.weight", "mixer.dt_bias", "mixer.A_log", "mixer.D", "mixer.norm.weight")
VOCAB = ("embedding.word_embeddings.weight", "output_layer.weight")


def mamba_components(cfg: ModelConfig) -> tuple[list[int], list[int]]:
    """Global widths of the packed Mamba in_proj [z, x, B, C, dt] and conv [x, B, C]."""
    m = cfg.mamba_shape()
    d_inner = m.num_heads * m.head_dim
    b_width = m.d_xb if m.d_xb != d_inner else m.num_groups * m.state_dim
    in_proj = [d_inner, m.d_xb, b_width, m.num_groups * m.state_dim, m.num_heads]
    return in_proj, in_proj[1:4]


def _split_components(t: torch.Tensor, widths: list[int], tp: int, rank: int) -> torch.Tensor:
    parts = torch.split(t, widths, dim=0)
    return torch.cat([p.chunk(tp, dim=0)[rank] for p in parts], dim=0)


def _merge_components(shards: list[torch.Tensor], widths: list[int], tp: int) -> torch.Tensor:
    local = [w // tp for w in widths]
    per_rank = [torch.split(s, local, dim=0) for s in shards]
    return torch.cat([torch.cat([pr[c] for pr in per_rank], dim=0) for c in range(len(widths))], dim=0)


def _kind(name: str) -> str:
    if name in VOCAB:
        return "vocab"
    if name.endswith("mlp.linear_fc1.weight"):
        return "fc1"
    if name.endswith("mixer.in_proj.weight"):
        return "in_proj"
    if name.endswith(("mixer.conv1d_weight", "mixer.conv1d_bias")):
        return "conv"
    if name.endswith(ROW_PARALLEL):
        return "row"
    if name.endswith(COL_PARALLEL):
        return "col"
    return "replicated"


def shard_tensor(name: str, t: torch.Tensor, cfg: ModelConfig, tp: int, rank: int,
                 padded_vocab: int | None = None) -> torch.Tensor:
    kind = _kind(name)
    if tp == 1 and kind != "vocab":
        return t
    if kind == "vocab":
        padded_vocab = padded_vocab or t.shape[0]
        if padded_vocab > t.shape[0]:
            t = torch.cat([t, t.new_zeros(padded_vocab - t.shape[0], *t.shape[1:])])
        return t.chunk(tp, dim=0)[rank]
    if kind == "fc1":
        gate, up = t.chunk(2, dim=0)
        return torch.cat([gate.chunk(tp, dim=0)[rank], up.chunk(tp, dim=0)[rank]], dim=0)
    if kind == "in_proj":
        return _split_components(t, mamba_components(cfg)[0], tp, rank)
    if kind == "conv":
        return _split_components(t, mamba_components(cfg)[1], tp, rank)
    if kind == "row":
        return t.chunk(tp, dim=1)[rank]
    if kind == "col":
        return t.chunk(tp, dim=0)[rank]
    return t


def shard_state_dict(full: dict[str, torch.Tensor], cfg: ModelConfig, tp: int, rank: int,
                     padded_vocab: int | None = None) -> dict[str, torch.Tensor]:
    return {k: shard_tensor(k, v, cfg, tp, rank, padded_vocab).contiguous() for k, v in full.items()}


def unshard_state_dicts(shards: list[dict[str, torch.Tensor]], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Inverse of shard_state_dict over all TP ranks' dicts (vocab padding removed)."""
    tp = len(shards)
    out = {}
    for name in shards[0]:
        parts = [s[name] for s in shards]
        kind = _kind(name)
        if tp == 1 or kind == "replicated":
            out[name] = parts[0]
        elif kind == "vocab":
            out[name] = torch.cat(parts, dim=0)[: cfg.vocab_size]
        elif kind == "fc1":
            gates, ups = zip(*(p.chunk(2, dim=0) for p in parts))
            out[name] = torch.cat([torch.cat(gates), torch.cat(ups)], dim=0)
        elif kind in ("in_proj", "conv"):
            widths = mamba_components(cfg)[0 if kind == "in_proj" else 1]
            out[name] = _merge_components(parts, widths, tp)
        else:
            out[name] = torch.cat(parts, dim=1 if kind == "row" else 0)
    if tp == 1:
        for name in VOCAB:
            if name in out:
                out[name] = out[name][: cfg.vocab_size]
    return out


# Local-spec names -> TE-spec names (norms fused into the following linear); identical in sharded checkpoints.
TE_NAMES = {".input_layernorm.weight": ".self_attention.linear_qkv.layer_norm_weight",
            ".pre_mlp_layernorm.weight": ".mlp.linear_fc1.layer_norm_weight",
            ".norm.weight": ".mixer.in_proj.layer_norm_weight"}


def to_local_names(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of to_model_names: a model's state dict (local or TE spec) under the local-spec names."""
    out = {}
    for k, v in sd.items():
        for local, te in TE_NAMES.items():
            if k.endswith(te):
                k = k[: -len(te)] + local
                break
        out[k] = v
    return out


def stage_state_dict(full: dict[str, torch.Tensor], model) -> dict[str, torch.Tensor]:
    """The part of a full state dict that `model`'s pipeline stage holds, its layers renumbered from 0.

    Megatron numbers a stage's layers locally (decoder.layers.0 ...) and records the global index in
    `layer_number`; a tied output layer on a last stage without the embedding is its own copy of the embedding.
    """
    if getattr(model, "rad_pp", 1) == 1:
        return full
    local_of = {layer.layer_number - 1: j for j, layer in enumerate(model.decoder.layers)}
    out = {}
    for k, v in full.items():
        if k.startswith("decoder.layers."):
            g, rest = k[len("decoder.layers."):].split(".", 1)
            if int(g) in local_of:
                out[f"decoder.layers.{local_of[int(g)]}.{rest}"] = v
        elif k.startswith("embedding.") and model.pre_process:
            out[k] = v
        elif k.startswith(("decoder.final_norm.", "output_layer.")) and model.post_process:
            out[k] = v
    if model.post_process and model.rad_config.tie_word_embeddings and not model.pre_process:
        out["output_layer.weight"] = full["embedding.word_embeddings.weight"]
    return out


def to_model_names(sd: dict[str, torch.Tensor], model_keys) -> dict[str, torch.Tensor]:
    """Rename local-spec keys to the model's (TE) keys where the model uses the fused-norm names."""
    model_keys = set(model_keys)
    out = {}
    for k, v in sd.items():
        if k not in model_keys:
            for local, te in TE_NAMES.items():
                if k.endswith(local) and k[: -len(local)] + te in model_keys:
                    k = k[: -len(local)] + te
                    break
        out[k] = v
    return out


def load_full_state_dict(model, full: dict[str, torch.Tensor], tp: int, tp_rank: int) -> None:
    """Shard `full` for this rank and copy it into `model`; a missing, unexpected or misshaped tensor is named."""
    from rad_megatron.model.build import padded_vocab_size

    cfg = model.rad_config
    padded = padded_vocab_size(cfg.vocab_size, tp)  # a later pipeline stage has no embedding to read it from
    full = stage_state_dict(full, model)
    local = to_model_names(shard_state_dict(full, cfg, tp, tp_rank, padded), model.state_dict().keys())
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    if cfg.tie_word_embeddings and getattr(model, "pre_process", True):
        own.pop("output_layer.weight", None)
        local.pop("output_layer.weight", None)
    missing = sorted(set(own) - set(local))
    unexpected = sorted(set(local) - set(own))
    if missing:
        raise RadError(f"checkpoint is missing tensor '{missing[0]}'" + (f" (and {len(missing) - 1} more)"
                                                                          if len(missing) > 1 else ""))
    if unexpected:
        raise RadError(f"checkpoint has unexpected tensor '{unexpected[0]}' for this model layout")
    for k, v in local.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise RadError(f"checkpoint tensor '{k}' has shape {tuple(v.shape)} on TP rank {tp_rank}, "
                           f"model expects {tuple(own[k].shape)}")
    with torch.no_grad():
        params = dict(model.named_parameters())
        params.update(dict(model.named_buffers()))
        for k, v in local.items():
            params[k].copy_(v.to(params[k].dtype))



def rebuilt(model, **build):
    """The same model (this rank's TP shard and pipeline stage, same weights) built again with other build_model
    runtime options (`build`: dtype, recompute, sequence_parallel, pp = the model's own)."""
    from rad_megatron.model.build import build_model

    build = {**build, "pp": getattr(model, "rad_pp", 1)}
    new = build_model(model.rad_config, tp=model.rad_tp, device=next(model.parameters()).device, **build)
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    missing = sorted(set(k for k in new.state_dict() if not k.endswith("_extra_state")) - set(own))
    if missing:
        raise RadError(f"rebuild: no weights for '{missing[0]}'")
    new.load_state_dict(own, strict=False)
    for name in ("rad_swaps", "rad_meta"):
        if hasattr(model, name):
            setattr(new, name, getattr(model, name))
    return new
