"""Hugging Face Llama <-> Megatron hybrid state dicts (full, unsharded tensors; local-spec key names).

Block i of the Llama is hybrid layers 2i (attention or Mamba mixer) and 2i+1 (MLP). Attention q/k/v are fused into
`linear_qkv` interleaved per query group, [q_g0 .. q_g(H/G-1), k_g, v_g] for each KV group g; gate and up are
stacked into `linear_fc1` as [gate; up]. HF and Megatron both use rotate-half RoPE, so no permutation is needed.
"""

from __future__ import annotations

import torch

from rad_megatron.checkpoint.mil import mamba_block_to_hf, mamba_block_to_mcore
from rad_megatron.config import ATTENTION, MAMBA, ModelConfig

HF_LAYER = "model.layers.{i}."
MC_LAYER = "decoder.layers.{j}."


def fuse_qkv(q, k, v, n_heads: int, n_kv: int) -> torch.Tensor:
    d_h, hidden = k.shape[0] // n_kv, q.shape[1]
    qkv = torch.cat([q.view(n_kv, n_heads // n_kv, d_h, hidden), k.view(n_kv, 1, d_h, hidden),
                     v.view(n_kv, 1, d_h, hidden)], dim=1)
    return qkv.reshape(-1, hidden)


def split_qkv(qkv, n_heads: int, n_kv: int):
    hidden = qkv.shape[1]
    d_h = qkv.shape[0] // (n_heads + 2 * n_kv)
    g = qkv.view(n_kv, n_heads // n_kv + 2, d_h, hidden)
    q = g[:, : n_heads // n_kv].reshape(-1, hidden)
    return q, g[:, -2].reshape(-1, hidden), g[:, -1].reshape(-1, hidden)


def hf_to_mcore(hf: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """HF Llama (or MIL hybrid) tensors -> Megatron names; Mamba blocks use the MIL key map (mil.py)."""
    out = {"embedding.word_embeddings.weight": hf["model.embed_tokens.weight"],
           "decoder.final_norm.weight": hf["model.norm.weight"]}
    if not cfg.tie_word_embeddings:
        out["output_layer.weight"] = hf["lm_head.weight"]
    for i, kind in enumerate(cfg.layout):
        src, mix, mlp = HF_LAYER.format(i=i), MC_LAYER.format(j=2 * i), MC_LAYER.format(j=2 * i + 1)
        if kind == ATTENTION:
            out[mix + "input_layernorm.weight"] = hf[src + "input_layernorm.weight"]
            out[mix + "self_attention.linear_qkv.weight"] = fuse_qkv(
                hf[src + "self_attn.q_proj.weight"], hf[src + "self_attn.k_proj.weight"],
                hf[src + "self_attn.v_proj.weight"], cfg.num_attention_heads, cfg.num_kv_heads)
            out[mix + "self_attention.linear_proj.weight"] = hf[src + "self_attn.o_proj.weight"]
        elif kind == MAMBA:
            out.update(mamba_block_to_mcore(hf, i))
        out[mlp + "pre_mlp_layernorm.weight"] = hf[src + "post_attention_layernorm.weight"]
        out[mlp + "mlp.linear_fc1.weight"] = torch.cat([hf[src + "mlp.gate_proj.weight"],
                                                         hf[src + "mlp.up_proj.weight"]], dim=0)
        out[mlp + "mlp.linear_fc2.weight"] = hf[src + "mlp.down_proj.weight"]
    return out


def mcore_to_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Inverse of hf_to_mcore (Mamba blocks written in the MIL format)."""
    out = {"model.embed_tokens.weight": sd["embedding.word_embeddings.weight"],
           "model.norm.weight": sd["decoder.final_norm.weight"]}
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = sd["output_layer.weight"]
    for i, kind in enumerate(cfg.layout):
        dst, mix, mlp = HF_LAYER.format(i=i), MC_LAYER.format(j=2 * i), MC_LAYER.format(j=2 * i + 1)
        if kind == ATTENTION:
            out[dst + "input_layernorm.weight"] = sd[mix + "input_layernorm.weight"]
            q, k, v = split_qkv(sd[mix + "self_attention.linear_qkv.weight"], cfg.num_attention_heads,
                                cfg.num_kv_heads)
            out[dst + "self_attn.q_proj.weight"], out[dst + "self_attn.k_proj.weight"] = q, k
            out[dst + "self_attn.v_proj.weight"] = v
            out[dst + "self_attn.o_proj.weight"] = sd[mix + "self_attention.linear_proj.weight"]
        elif kind == MAMBA:
            out.update(mamba_block_to_hf(sd, i))
        out[dst + "post_attention_layernorm.weight"] = sd[mlp + "pre_mlp_layernorm.weight"]
        gate, up = sd[mlp + "mlp.linear_fc1.weight"].chunk(2, dim=0)
        out[dst + "mlp.gate_proj.weight"], out[dst + "mlp.up_proj.weight"] = gate, up
        out[dst + "mlp.down_proj.weight"] = sd[mlp + "mlp.linear_fc2.weight"]
    return out
