"""Hybrid-stack ModuleSpecs: a local (pure Megatron-Core, runs on CPU) spec and a Transformer-Engine spec.

Megatron-Core 0.19.2 ships only the TE hybrid spec. The local spec below keeps the sharded-checkpoint keys identical
to the TE one (norms are stored under the TE fused-linear names through `sharded_state_dict_keys_map`), so a checkpoint
written on CPU loads on GPU and back.
"""

from __future__ import annotations

from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_submodules
from megatron.core.models.hybrid.hybrid_block import HybridStack, HybridStackSubmodules
from megatron.core.ssm.mamba_layer import MambaLayer, MambaLayerSubmodules
from megatron.core.ssm.mlp_layer import MLPLayer
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules

from rad_megatron.model.attention import RopeCachedSelfAttention, SDPAAttention
from rad_megatron.model.norm import RMSNorm
from rad_megatron.ssm.mixer import HybridMambaMixer, HybridMambaMixerSubmodules


def local_hybrid_spec() -> ModuleSpec:
    g = get_gpt_layer_local_submodules(normalization="RMSNorm")
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear

    # fp32 statistics in bf16 and sequence parallelism (Megatron's torch norm refuses SP; see model/norm.py)
    g.input_layernorm = g.pre_mlp_layernorm = RMSNorm

    mixer = ModuleSpec(module=HybridMambaMixer, submodules=HybridMambaMixerSubmodules(
        in_proj=ColumnParallelLinear, out_proj=RowParallelLinear))
    # cached decoding linear in the new tokens: grouped K/V read in place, RoPE applied once per key
    g.self_attention.module = RopeCachedSelfAttention
    g.self_attention.submodules.core_attention = SDPAAttention
    return ModuleSpec(module=HybridStack, submodules=HybridStackSubmodules(
        mamba_layer=ModuleSpec(module=MambaLayer, submodules=MambaLayerSubmodules(
            norm=g.input_layernorm, mixer=mixer, mamba_bda=get_bias_dropout_add,
            sharded_state_dict_keys_map={"norm.": "mixer.in_proj.layer_norm_"})),
        attention_layer=ModuleSpec(module=TransformerLayer, submodules=TransformerLayerSubmodules(
            input_layernorm=g.input_layernorm, self_attention=g.self_attention, self_attn_bda=get_bias_dropout_add,
            sharded_state_dict_keys_map={"input_layernorm.": "self_attention.linear_qkv.layer_norm_"})),
        mlp_layer=ModuleSpec(module=MLPLayer, submodules=TransformerLayerSubmodules(
            pre_mlp_layernorm=g.pre_mlp_layernorm, mlp=g.mlp, mlp_bda=get_bias_dropout_add,
            sharded_state_dict_keys_map={"pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_"}))))


def te_hybrid_spec() -> ModuleSpec:
    """Megatron's TE hybrid spec with our Mamba mixer in the `M` slot (norm fused into in_proj, as TE does)."""
    from megatron.core.extensions.transformer_engine import TELayerNormColumnParallelLinear, TERowParallelLinear
    from megatron.core.models.hybrid.hybrid_layer_specs import hybrid_stack_spec

    mixer = ModuleSpec(module=HybridMambaMixer, submodules=HybridMambaMixerSubmodules(
        in_proj=TELayerNormColumnParallelLinear, out_proj=TERowParallelLinear))
    s = hybrid_stack_spec.submodules
    return ModuleSpec(module=HybridStack, submodules=HybridStackSubmodules(
        mamba_layer=ModuleSpec(module=MambaLayer, submodules=MambaLayerSubmodules(
            mixer=mixer, mamba_bda=get_bias_dropout_add)),
        attention_layer=s.attention_layer, mlp_layer=s.mlp_layer))


def hybrid_spec(use_te: bool) -> ModuleSpec:
    return te_hybrid_spec() if use_te else local_hybrid_spec()
