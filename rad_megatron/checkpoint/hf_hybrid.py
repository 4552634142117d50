"""rad_megatron hybrid <-> transformers' GraniteMoeHybrid folder (`--to hf-hybrid`): a hybrid architecture that
transformers ships (no trust_remote_code) and vLLM serves natively (GraniteMoeHybridForCausalLM). Why this one and
not Bamba / NemotronH / FalconH1 / Zamba2: docs/hf_hybrid_export.md.

The export is exact, not approximate: with num_local_experts=0 and every multiplier at its neutral value
(embedding 1, residual 1, logits 1, attention 1/sqrt(head_dim)) a GraniteMoeHybrid block is a Llama block whose
mixer is attention (full RoPE) or a standard Mamba-2 layer (gate-first grouped RMSNorm, per-head D, dt_bias,
conv bias, no projection bias), and its `shared_mlp` is the SwiGLU MLP with [gate; up] fused as in Megatron's fc1.

A MIL layer (d_xb < d_inner: x and B of width d_xb, repeated per head after the conv) is written as a standard
Mamba-2 layer by materialising the repeated x rows (d_inner / d_xb copies of each x head) and B rows (up to
num_groups B groups) of in_proj and of the depthwise conv (a depthwise conv of repeated channels is the repeated
conv). `rad_mamba_d_xb` in config.json records the narrow width, so the import takes one copy back (after checking
that the copies are equal) and the round trip is bit-exact. Key maps: the Llama / MIL ones (hf_llama.py, mil.py)
plus the renames below, litgpt-style.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from rad_megatron.checkpoint.hf_llama import hf_to_mcore, mcore_to_hf
from rad_megatron.config import ATTENTION, MAMBA, MambaConfig, ModelConfig
from rad_megatron.errors import RadError

MODEL_TYPE = "granitemoehybrid"
ARCHITECTURE = "GraniteMoeHybridForCausalLM"
D_XB_KEY = "rad_mamba_d_xb"
GATED_NORM_EPS = 1e-5  # the epsilon of our mixer's gated RMSNorm (ssm/mixer.py); GraniteMoeHybrid uses rms_norm_eps
# layer_types as transformers 4.x and vLLM write them; transformers 5 reads them as linear/full_attention
LAYER_TYPE = {ATTENTION: "attention", MAMBA: "mamba"}
LAYER_KIND = {"attention": ATTENTION, "full_attention": ATTENTION, "mamba": MAMBA, "linear_attention": MAMBA}
NEUTRAL = {"embedding_multiplier": 1.0, "residual_multiplier": 1.0, "logits_scaling": 1.0, "num_local_experts": 0,
           "position_embedding_type": "rope", "attention_bias": False, "mamba_proj_bias": False,
           "mamba_conv_bias": True}
TRANSFORMERS_DEFAULT = {"num_local_experts": 8, "position_embedding_type": None}  # where they are not neutral


# ---- what the architecture can express ------------------------------------------------------------------------
def hybrid_problems(cfg: ModelConfig) -> list[str]:
    """Why `cfg` cannot be written exactly as a GraniteMoeHybrid model (empty: it can)."""
    problems = []
    if cfg.kv_channels * cfg.num_attention_heads != cfg.hidden_size:
        problems.append(f"head_dim={cfg.kv_channels} x {cfg.num_attention_heads} heads != hidden_size="
                        f"{cfg.hidden_size} (GraniteMoeHybrid derives head_dim from hidden_size)")
    if not cfg.mamba_layers:
        return problems
    m = cfg.mamba_shape()
    d_inner = m.num_heads * m.head_dim
    if d_inner % cfg.hidden_size:
        problems.append(f"Mamba d_inner={d_inner} is not an integer multiple of hidden_size={cfg.hidden_size} "
                        f"(mamba_expand is an integer)")
    if not math.isclose(cfg.rms_norm_eps, GATED_NORM_EPS, rel_tol=1e-6):  # SmolLM2's is float32(1e-5)
        problems.append(f"rms_norm_eps={cfg.rms_norm_eps}: GraniteMoeHybrid's gated Mamba norm uses it, ours "
                        f"uses {GATED_NORM_EPS}")
    b_groups = (m.d_xb if m.d_xb != d_inner else m.num_groups * m.state_dim) // m.state_dim
    if m.num_groups % b_groups:
        problems.append(f"{b_groups} B groups do not divide mamba.num_groups={m.num_groups} (B and C share the "
                        f"group count there)")
    return problems


def check_hybrid_expressible(cfg: ModelConfig) -> None:
    problems = hybrid_problems(cfg)
    if problems:
        raise RadError(f"--to hf-hybrid: GraniteMoeHybrid cannot express this model exactly ({'; '.join(problems)});"
                       f" export it with --to mil")


def is_hybrid_folder(folder) -> bool:
    f = Path(folder) / "config.json"
    return f.is_file() and json.loads(f.read_text()).get("model_type") == MODEL_TYPE


# ---- config.json ----------------------------------------------------------------------------------------------
def _repeats(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """{component: (row unit, copies)} for x and B: how a MIL layer's rows are materialised."""
    m = cfg.mamba_shape()
    d_inner = m.num_heads * m.head_dim
    if m.d_xb == d_inner:
        return {"x": (m.head_dim, 1), "B": (m.state_dim, 1)}
    return {"x": (m.head_dim, d_inner // m.d_xb), "B": (m.state_dim, m.num_groups * m.state_dim // m.d_xb)}


def hybrid_config_dict(cfg: ModelConfig, dtype: torch.dtype = torch.float32, special_ids: dict | None = None) -> dict:
    """config.json of the GraniteMoeHybrid folder for `cfg`, validated by transformers' own config class."""
    from transformers import GraniteMoeHybridConfig

    check_hybrid_expressible(cfg)
    m = cfg.mamba_shape()
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling is not None:
        rs = cfg.rope_scaling
        rope.update(rope_type="llama3", factor=rs.factor, low_freq_factor=rs.low_freq_factor,
                    high_freq_factor=rs.high_freq_factor,
                    original_max_position_embeddings=rs.original_max_position_embeddings)
    hf = GraniteMoeHybridConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        shared_intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_kv_heads,
        rms_norm_eps=cfg.rms_norm_eps, max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings, rope_parameters=rope, hidden_act="silu",
        attention_multiplier=1.0 / math.sqrt(cfg.kv_channels), layer_types=[LAYER_TYPE[k] for k in cfg.layout],
        mamba_n_heads=m.num_heads, mamba_n_groups=m.num_groups, mamba_d_state=m.state_dim, mamba_d_head=m.head_dim,
        mamba_expand=m.num_heads * m.head_dim // cfg.hidden_size, mamba_d_conv=m.d_conv,
        mamba_chunk_size=m.chunk_size, architectures=[ARCHITECTURE], dtype=str(dtype).removeprefix("torch."),
        **NEUTRAL, **(special_ids or {}))
    d = hf.to_diff_dict()
    d.update(NEUTRAL, model_type=MODEL_TYPE, layer_types=[LAYER_TYPE[k] for k in cfg.layout],
             rope_theta=cfg.rope_theta, attention_multiplier=1.0 / math.sqrt(cfg.kv_channels))
    d.pop("time_step_limit", None)  # default (0, inf): no clamp, like ours; infinity is not JSON
    if cfg.mamba_layers and _repeats(cfg)["x"][1] > 1:
        d[D_XB_KEY] = m.d_xb
    return d


def _is_infinity(v) -> bool:
    # transformers 5 writes float("inf") in config.json as {"__float__": "Infinity"}
    return v == {"__float__": "Infinity"} or (isinstance(v, (int, float)) and math.isinf(v) and v > 0)


def config_from_hybrid(c: dict) -> ModelConfig:
    """ModelConfig of a GraniteMoeHybrid config.json; refuses one that is not a Llama-shaped hybrid."""
    got = {k: c.get(k, TRANSFORMERS_DEFAULT.get(k, v)) for k, v in NEUTRAL.items()}
    bad = [f"{k}={got[k]!r} (needs {v!r})" for k, v in NEUTRAL.items() if got[k] != v]
    tsl = c.get("time_step_limit")
    if tsl is not None and (tsl[0] != 0.0 or not _is_infinity(tsl[1])):
        bad.append(f"time_step_limit={tsl} (needs the default, no clamp)")
    kinds = [LAYER_KIND.get(t) for t in c.get("layer_types") or c.get("layers_block_type") or []]
    if len(kinds) != c["num_hidden_layers"] or None in kinds:
        bad.append(f"layer_types={c.get('layer_types')} (needs one 'attention' or 'mamba' per layer)")
    if bad:
        raise RadError(f"config.json: this GraniteMoeHybrid model is not a Llama-shaped hybrid rad_megatron can "
                       f"import ({'; '.join(bad)})")
    cfg = ModelConfig.from_hf({**c, "model_type": "llama", "intermediate_size": c["shared_intermediate_size"]})
    cfg.layout = kinds
    d_inner = int(c.get("mamba_expand", 2)) * cfg.hidden_size
    cfg.mamba = MambaConfig(num_heads=c["mamba_n_heads"], head_dim=d_inner // c["mamba_n_heads"],
                            state_dim=c["mamba_d_state"], num_groups=c["mamba_n_groups"],
                            d_xb=int(c.get(D_XB_KEY) or d_inner), d_conv=c.get("mamba_d_conv", 4),
                            chunk_size=c.get("mamba_chunk_size", 128))
    cfg.__post_init__()
    scale = c.get("attention_multiplier")
    if scale is not None and not math.isclose(scale, cfg.kv_channels ** -0.5, rel_tol=1e-6):
        raise RadError(f"config.json: attention_multiplier={scale} is not 1/sqrt(head_dim)="
                       f"{cfg.kv_channels ** -0.5:.6g}; rad_megatron's attention uses the standard scale")
    problems = hybrid_problems(cfg)
    if problems:
        raise RadError(f"config.json: {'; '.join(problems)}")
    return cfg


# ---- tensors --------------------------------------------------------------------------------------------------
def _widths(cfg: ModelConfig, wide: bool) -> tuple[list[int], list[int]]:
    """Row widths of in_proj [z, x, B, C, dt] and conv [x, B, C], narrow (ours) or materialised (exported)."""
    from rad_megatron.checkpoint.shard import mamba_components

    in_proj, _ = mamba_components(cfg)
    if wide:
        rep = _repeats(cfg)
        in_proj = [in_proj[0], in_proj[1] * rep["x"][1], in_proj[2] * rep["B"][1], in_proj[3], in_proj[4]]
    return in_proj, in_proj[1:4]


def _widen(t: torch.Tensor, widths: list[int], names: list[str], rep) -> torch.Tensor:
    parts = []
    for name, part in zip(names, torch.split(t, widths, dim=0)):
        unit, copies = rep.get(name, (1, 1))
        if copies > 1:
            part = part.reshape(-1, unit, *part.shape[1:]).repeat_interleave(copies, dim=0).reshape(-1, *part.shape[1:])
        parts.append(part)
    return torch.cat(parts, dim=0)


def _narrow(t: torch.Tensor, widths: list[int], names: list[str], rep, what: str) -> torch.Tensor:
    parts = []
    for name, part in zip(names, torch.split(t, widths, dim=0)):
        unit, copies = rep.get(name, (1, 1))
        if copies > 1:
            blocks = part.reshape(-1, copies, unit, *part.shape[1:])
            if not torch.equal(blocks, blocks[:, :1].expand_as(blocks)):
                raise RadError(f"{what}: the {name} rows are not {copies} equal copies as {D_XB_KEY} says; the "
                               f"folder was not written by rad convert --to hf-hybrid (drop {D_XB_KEY} to import "
                               f"it as a standard Mamba-2 layer)")
            part = blocks[:, 0].reshape(-1, *part.shape[1:])
        parts.append(part)
    return torch.cat(parts, dim=0)


IN_PROJ, CONV = ["z", "x", "B", "C", "dt"], ["x", "B", "C"]
MAMBA_TENSORS = {"in_proj.weight": IN_PROJ, "conv1d.weight": CONV, "conv1d.bias": CONV}


def mcore_to_hybrid(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Full (TP=1) Megatron state dict -> GraniteMoeHybrid tensors."""
    check_hybrid_expressible(cfg)
    hf = mcore_to_hf(sd, cfg)
    rep = _repeats(cfg) if cfg.mamba_layers else {}
    for i, kind in enumerate(cfg.layout):
        p = f"model.layers.{i}."
        hf[p + "shared_mlp.input_linear.weight"] = torch.cat([hf.pop(p + "mlp.gate_proj.weight"),
                                                              hf.pop(p + "mlp.up_proj.weight")], dim=0)
        hf[p + "shared_mlp.output_linear.weight"] = hf.pop(p + "mlp.down_proj.weight")
        if kind == MAMBA:
            for name, names in MAMBA_TENSORS.items():
                narrow = _widths(cfg, wide=False)[0 if names is IN_PROJ else 1]
                hf[p + "mamba." + name] = _widen(hf[p + "mamba." + name], narrow, names, rep)
    return hf


def hybrid_to_mcore(hf: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """GraniteMoeHybrid tensors -> full Megatron state dict (MIL rows taken back to d_xb; see the module doc)."""
    hf = dict(hf)
    rep = _repeats(cfg) if cfg.mamba_layers else {}
    for i, kind in enumerate(cfg.layout):
        p = f"model.layers.{i}."
        gate, up = hf.pop(p + "shared_mlp.input_linear.weight").chunk(2, dim=0)
        hf[p + "mlp.gate_proj.weight"], hf[p + "mlp.up_proj.weight"] = gate, up
        hf[p + "mlp.down_proj.weight"] = hf.pop(p + "shared_mlp.output_linear.weight")
        if kind == MAMBA:
            for name, names in MAMBA_TENSORS.items():
                wide = _widths(cfg, wide=True)[0 if names is IN_PROJ else 1]
                hf[p + "mamba." + name] = _narrow(hf[p + "mamba." + name], wide, names, rep, f"{p}mamba.{name}")
    return hf_to_mcore(hf, cfg)


def added_parameters(cfg: ModelConfig) -> int:
    """Parameters the materialised x/B rows add over our narrow layout (0 for a standard Mamba-2 layout)."""
    narrow_in, narrow_conv = _widths(cfg, wide=False)
    wide_in, wide_conv = _widths(cfg, wide=True)
    per_layer = (sum(wide_in) - sum(narrow_in)) * cfg.hidden_size
    per_layer += (sum(wide_conv) - sum(narrow_conv)) * (cfg.mamba_shape().d_conv + 1)
    return per_layer * len(cfg.mamba_layers)
