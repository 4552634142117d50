"""Attention -> Mamba-2 replacement with the three initialisations of the method (arXiv 2408.15237, 2505.22135).

For each chosen block the attention layer becomes a Mamba layer; its MLP and both norms are kept (the attention's
input norm becomes the Mamba layer's norm). New mixer weights, per init:
  mil       C <- W_Q, B <- W_K, x <- W_V (repeated per head unless the MIL narrow d_xb layout is used),
            out_proj <- W_O; z and dt rows, conv, A_log, dt_bias and D keep the Mamba-2 default init.
  rad_zero  in_proj = 0, out_proj <- W_O, rest as mil. The gate z is 0, so the layer outputs exactly 0 and the
            model equals the original with those attention layers skipped.
  random    Mamba-2 default init for everything.
All copies are rank-local: each TP rank takes its own heads, so swapping works at any TP size without gathering.
"""

from __future__ import annotations

import contextlib

import copy

import torch

from rad_megatron.checkpoint.hf_llama import split_qkv
from rad_megatron.config import ATTENTION, MAMBA, ModelConfig
from rad_megatron.distill.targeting import layer_offset
from rad_megatron.errors import RadError
from rad_megatron.model import build_model
from rad_megatron.model.layout import mixer_layer_index

INITS = ("mil", "rad_zero", "random")


def swapped_config(cfg: ModelConfig, blocks, tp: int) -> ModelConfig:
    """The config with `blocks` turned into Mamba layers; raises a RadError naming the bad entry."""
    blocks = [int(b) for b in blocks]
    if not blocks:
        raise RadError("--layers is empty; name at least one attention layer to replace")
    for b in blocks:
        if not 0 <= b < cfg.num_layers:
            raise RadError(f"--layers: layer {b} is out of range; the model has layers 0..{cfg.num_layers - 1}")
        if cfg.layout[b] != ATTENTION:
            raise RadError(f"--layers: layer {b} is already a {cfg.layout[b]} layer; choose among the attention "
                           f"layers {cfg.attention_layers}")
    if len(set(blocks)) != len(blocks):
        raise RadError(f"--layers names a layer twice: {blocks}")
    new = copy.deepcopy(cfg)
    for b in blocks:
        new.layout[b] = MAMBA
    new.check_parallel(tp)
    return new


def _check_mil_shape(cfg: ModelConfig):
    m = cfg.mamba_shape()
    H, G, d = cfg.num_attention_heads, cfg.num_kv_heads, cfg.kv_channels
    want = {"num_heads": H, "head_dim": d, "state_dim": d, "num_groups": H}
    bad = [f"mamba.{k}={getattr(m, k)} (needs {v})" for k, v in want.items() if getattr(m, k) != v]
    if m.d_xb not in (G * d, H * d):
        bad.append(f"mamba.d_xb={m.d_xb} (needs {G * d} or {H * d})")
    if bad:
        raise RadError("init 'mil'/'rad_zero' copies attention weights and needs the MIL Mamba shape: " + ", ".join(bad))


def _norm_weight(layer):
    norm = getattr(layer, "input_layernorm", None) or getattr(layer, "norm", None)
    if norm is not None and hasattr(norm, "weight"):
        return norm.weight
    return layer.self_attention.linear_qkv.layer_norm_weight  # TE: norm fused into the linear


def _set_mamba_norm(layer, weight):
    target = layer.norm.weight if hasattr(layer.norm, "weight") else layer.mixer.in_proj.layer_norm_weight
    target.copy_(weight)


@torch.no_grad()
def _init_from_attention(mixer, attn, cfg: ModelConfig, tp: int, init: str):
    mixer.out_proj.weight.copy_(attn.linear_proj.weight)
    w = mixer.in_proj.weight
    if init == "rad_zero":
        w.zero_()
        return
    G, H = cfg.num_kv_heads, cfg.num_attention_heads
    if G % tp:
        raise RadError(f"init 'mil' at TP={tp} needs num_kv_heads={G} divisible by TP")
    q, k, v = split_qkv(attn.linear_qkv.weight, H // tp, G // tp)
    if not mixer.shape.mil_layout:  # standard layout: x and B are per head, so repeat each KV head H/G times
        d = cfg.kv_channels
        k, v = (t.view(G // tp, d, -1).repeat_interleave(H // G, dim=0).reshape(-1, t.shape[-1]) for t in (k, v))
        if mixer.in_proj_sizes[2] != k.shape[0]:
            raise RadError("init 'mil' in the standard layout needs mamba.num_groups == num_attention_heads")
    z, x, B, C, _ = torch.split(w, mixer.in_proj_sizes, dim=0)
    x.copy_(v)
    B.copy_(k)
    C.copy_(q)


@contextlib.contextmanager
def _seeded_rng_tracker(seed: int):
    """Megatron initialises the Mamba conv / dt / A parameters inside the model-parallel RNG tracker's fork, whose
    state advances with every model built in the process; reseed it from `seed` for this build (so the same seed gives
    the same layers however many swaps came before) and put the process's RNG streams back afterwards."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import get_cuda_rng_tracker, model_parallel_cuda_manual_seed

    if not parallel_state.model_parallel_is_initialized():
        yield
        return
    tracker = get_cuda_rng_tracker()
    saved, default = tracker.get_states(), torch.get_rng_state()
    model_parallel_cuda_manual_seed(seed)
    torch.set_rng_state(default)
    try:
        yield
    finally:
        tracker.set_states(saved)


@torch.no_grad()
def swap_attention_to_mamba(model, blocks, init: str = "rad_zero", seed: int = 0):
    """A new model (same TP) with `blocks` replaced; `model` is left untouched. Call on every TP rank."""
    if init not in INITS:
        raise RadError(f"--init '{init}' is not one of {', '.join(INITS)}")
    cfg, tp = model.rad_config, model.rad_tp
    new_cfg = swapped_config(cfg, blocks, tp)
    if init != "random":
        _check_mil_shape(new_cfg)
    torch.manual_seed(seed)  # identical on every rank: the full-matrix CPU init then slices consistently
    with _seeded_rng_tracker(seed):
        new = build_model(new_cfg, tp=tp, dtype=model.config.params_dtype, pp=getattr(model, "rad_pp", 1),
                          device=next(model.parameters()).device)
    # a pipeline stage numbers its layers from 0: swap the blocks whose mixer sits on this stage
    offset, count = layer_offset(model), len(model.decoder.layers)
    local = [mixer_layer_index(b) - offset for b in blocks if 0 <= mixer_layer_index(b) - offset < count]
    old_sd, new_sd = model.state_dict(), new.state_dict()
    swapped_prefixes = tuple(f"decoder.layers.{j}." for j in local)
    for k, v in new_sd.items():
        if k.startswith(swapped_prefixes) or k.endswith("_extra_state") or k not in old_sd:
            continue
        v.copy_(old_sd[k])
    for j in local:
        old_layer, new_layer = model.decoder.layers[j], new.decoder.layers[j]
        _set_mamba_norm(new_layer, _norm_weight(old_layer))
        if init != "random":
            _init_from_attention(new_layer.mixer, old_layer.self_attention, new_cfg, tp, init)
    new.rad_swaps = list(getattr(model, "rad_swaps", [])) + [{"layers": sorted(int(b) for b in blocks),
                                                              "init": init, "seed": seed}]
    return new.eval() if not model.training else new
