"""Activation bytes per token that one hybrid layer keeps for its backward pass.

The method is Korthikanti et al. (2022, "Reducing Activation Recomputation in Large Transformer Models", section 4):
list every tensor the forward pass saves for the backward pass and add up their sizes. Their 34 + 5as/h bytes per
token and hidden unit describes GPT's kernels in 16-bit; here each layer kind of our hybrid (attention, Mamba-2,
SwiGLU MLP) is counted for the kernels it actually runs with (`Kernels`), since our pure-torch SSD keeps its chunk
matrices while the fused kernels keep only their inputs. Both specs run fused attention (flash / torch SDPA): no
s x s probabilities are kept and grouped K/V are not expanded.

Each count is split in two: `needed` (kept to propagate the gradient to the layer's input) and `wgrad` (kept only for
the layer's own weight gradients: norm outputs and linear-layer inputs), because a frozen layer does not keep the
latter, and layers before the first trainable parameter keep nothing (autograd records no graph there).

The CPU counts were read off the tensors autograd saves in our local-spec layers (torch RMSNorm, SDPA attention
(`model.attention`), unfused SwiGLU, `ssm.ssd.ssd_chunked`); `tests/unit/test_plan_memory.py` checks the total
against measured peak memory. The GPU counts follow from what Transformer Engine's LayerNormLinear, flash attention
and mamba_ssm's chunk scan save; they are not measured here.
"""

from __future__ import annotations

from dataclasses import dataclass

from rad_megatron.config import ATTENTION, MAMBA, ModelConfig
from rad_megatron.plan.params import kv_heads_per_rank, mamba_widths

FP32 = 4


@dataclass(frozen=True)
class Kernels:
    """Which implementation each op runs with; they differ in what they keep for the backward pass."""

    name: str
    """gpu | cpu."""
    te_norm_linear: bool
    """RMSNorm fused into the next linear (Transformer Engine) vs torch RMSNorm (which also keeps x * rstd)."""
    attention_output_copy: bool
    """The local spec's SDPA output [b, heads, s, d] is permuted back to [s, b, heads * d], a copy that linear_proj
    keeps for its weight gradient; TE's flash attention hands linear_proj the tensor it keeps anyway."""
    fused_ssd: bool
    """mamba_ssm chunk scan + causal_conv1d (keep their inputs) vs rad_megatron's torch chunked SSD."""
    grad_buffer: bool
    """Megatron DDP's fp32 gradient buffer, held all run (what the trainer uses), vs plain torch gradients made in
    the backward pass and freed by zero_grad(set_to_none=True)."""
    fused_adam: bool
    """Adam step without temporaries (TE/Apex FusedAdam) vs torch AdamW's two per-tensor temporaries."""


GPU = Kernels("gpu", te_norm_linear=True, attention_output_copy=False, fused_ssd=True, grad_buffer=True,
              fused_adam=True)
# What `rad distill` runs on CPU: the local spec's torch ops, Megatron DDP's gradient buffer, torch's AdamW
# (the fallback of Megatron's optimizer without TE/Apex)
CPU = Kernels("cpu", te_norm_linear=False, attention_output_copy=True, fused_ssd=False, grad_buffer=True,
              fused_adam=False)
KERNELS = {k.name: k for k in (GPU, CPU)}


@dataclass(frozen=True)
class LayerActs:
    """Bytes per token of one layer's saved activations."""

    needed: float
    """Kept to compute the gradient of the layer's input."""
    wgrad: float
    """Kept only for the layer's weight gradients (absent when the layer is frozen)."""

    @property
    def total(self) -> float:
        return self.needed + self.wgrad


def _norm(d: int, e: int, k: Kernels, sp: int = 1) -> LayerActs:
    """Input RMSNorm + the input of the linear it feeds. TE: x and rstd (fp32) kept, the normalised output only for
    the weight gradient. torch: x, rstd; x * rstd and the linear's input only for weight gradients.
    Under sequence parallelism (`sp` = the TP size) each rank holds 1/sp of the sequence here, and Megatron's
    column-parallel linear keeps its input un-gathered (it gathers again in the backward pass)."""
    if k.te_norm_linear:
        return LayerActs((e * d + FP32) / sp, e * d / sp)
    return LayerActs(e * (d + 1) / sp, 2 * e * d / sp)


def attention_acts(cfg: ModelConfig, tp: int, mbs: int, e: int, k: Kernels, recompute: str,
                   sp: int = 1) -> LayerActs:
    hd = cfg.num_attention_heads // tp * cfg.kv_channels
    kvd = kv_heads_per_rank(cfg, tp) * cfg.kv_channels
    heads = cfg.num_attention_heads // tp
    n = _norm(cfg.hidden_size, e, k, sp)
    rope = 4 * e * cfg.kv_channels / mbs  # unfused RoPE keeps cos and sin [s, d_h] for q and for k, per sequence
    # rotated q, k; v is a view keeping the whole qkv output; the attention output; fp32 log-sum-exp per head
    # (recomputed under selective recompute)
    core = e * (hd + kvd + (hd + 2 * kvd) + hd) + (0 if recompute == "selective" else FP32 * heads)
    return LayerActs(n.needed + rope + core, n.wgrad + (e * hd if k.attention_output_copy else 0))


def mlp_acts(cfg: ModelConfig, tp: int, e: int, k: Kernels, sp: int = 1) -> LayerActs:
    """SwiGLU as our TransformerConfig builds it (bias_activation_fusion off): fc1's output [2F] (SiLU's input is a
    view of it), SiLU's output and the linear half [F each]; fc2's input [F] only for its weight gradient."""
    f = cfg.intermediate_size // tp
    n = _norm(cfg.hidden_size, e, k, sp)
    return LayerActs(n.needed + e * 4 * f, n.wgrad + e * f)


def mamba_acts(cfg: ModelConfig, tp: int, seq: int, e: int, k: Kernels, sp: int = 1) -> LayerActs:
    w = mamba_widths(cfg)
    d_inner, heads, groups = w.d_inner // tp, w.heads // tp, w.groups // tp
    conv, in_proj, hn = w.conv // tp, w.in_proj // tp, heads * w.state
    x_copy = d_inner if w.x // w.head_dim < w.heads else 0  # per-head repeat of a narrow x (MIL) is a new tensor
    b_copy = hn if w.b // w.state < w.heads else 0
    c_copy = hn if w.groups < w.heads else 0
    n = _norm(cfg.hidden_size, e, k, sp)
    wgrad = n.wgrad + e * d_inner + FP32 * d_inner  # out_proj input; normalised output before the norm weight
    if k.fused_ssd:
        # in_proj output (z and dt views keep it), conv output (C's view keeps it), per-head copies, scan output,
        # and our fp32 gated RMSNorm: y and z in fp32 (copies unless fp32), SiLU(z), gated, 1/rms per group
        fp32_copies = 2 * d_inner if e != FP32 else 0
        needed = (e * (in_proj + conv + x_copy + b_copy + c_copy + d_inner)
                  + FP32 * (fp32_copies + 2 * d_inner + groups))
        return LayerActs(n.needed + needed, wgrad)
    needed, x_for_d = _torch_ssd(w, tp, seq, e, x_copy)
    return LayerActs(n.needed + needed, wgrad + x_for_d)


def _torch_ssd(w, tp: int, seq: int, e: int, x_copy: int) -> tuple[float, float]:
    """`ssm.ssd.ssd_chunked` and the mixer around it (fp32 inside), per token: (needed, kept only for D's grad)."""
    d_inner, heads, groups = w.d_inner // tp, w.heads // tp, w.groups // tp
    conv, in_proj = w.conv // tp, w.in_proj // tp
    q = min(w.chunk, seq)
    padded = -(-seq // q) * q
    r, chunks = padded / seq, padded // q
    x_store = FP32 * x_copy if x_copy else e * conv  # per-head x: MIL's repeat, else a view of the conv output
    pad = FP32 * d_inner * r if padded > seq else 0  # the padded x copy (then x itself is kept only for D's grad)
    needed = (e * in_proj  # in_proj output, kept by the z view the gated norm saves
            + e * conv * (2 + (w.d_conv - 1) / seq)  # conv input with its d_conv-1 history, conv output
            + (0 if pad else x_store) + pad
            + FP32 * heads * (1 + r)  # softplus input, step sizes
            # within-chunk decay, C.B and the masked scores [heads, chunk]; B, C, X operand copies; decays
            + FP32 * r * (3 * heads * q + 5 * heads * w.state + 3 * d_inner + 2 * heads)
            + FP32 * (2 * chunks + 1) * heads * w.head_dim * w.state / seq  # chunk states, entering states
            + FP32 * (3 * d_inner + groups))  # gated norm: y, SiLU(z), gated; 1/rms per group
    return needed, (x_store if pad else 0.0)  # with padding, the unpadded x is kept only for D's gradient


def layer_acts(cfg: ModelConfig, kind: str, tp: int, seq: int, mbs: int, e: int, k: Kernels,
               recompute: str, sp: int = 1) -> LayerActs:
    """Saved activations per token of one hybrid layer ('attention' | 'mamba' | 'mlp') under `recompute`.
    Full recompute keeps only each layer's input (the layer is re-run in the backward pass), 1/sp of it under
    sequence parallelism (`sp`: the TP size when system.sequence_parallel, else 1)."""
    if recompute == "full":
        return LayerActs(e * cfg.hidden_size / sp, 0.0)
    if kind == ATTENTION:
        return attention_acts(cfg, tp, mbs, e, k, recompute, sp)
    if kind == MAMBA:
        return mamba_acts(cfg, tp, seq, e, k, sp)
    return mlp_acts(cfg, tp, e, k, sp)


def head_acts(cfg: ModelConfig, e: int, k: Kernels, sp: int = 1) -> LayerActs:
    """Final norm and the output layer's input (the embedding keeps only its int64 token ids: 8 bytes)."""
    n = _norm(cfg.hidden_size, e, k, sp)
    return LayerActs(n.needed, n.wgrad)
