"""ModelConfig -> Megatron TransformerConfig -> HybridModel (local spec on CPU, TE spec where TE runs)."""

from __future__ import annotations

import contextlib
import dataclasses

import torch
import torch.nn.functional as F
from megatron.core.models.hybrid.hybrid_model import HybridModel
from megatron.core.transformer import TransformerConfig

from rad_megatron.config import ModelConfig
from rad_megatron.distributed.cpu import te_available
from rad_megatron.errors import RadError
from rad_megatron.model.layout import layout_to_pattern
from rad_megatron.model.spec import hybrid_spec


def padded_vocab_size(vocab_size: int, tp: int) -> int:
    """VocabParallelEmbedding needs a vocabulary divisible by TP; padded rows are never predicted (sliced off)."""
    return -(-vocab_size // tp) * tp


RECOMPUTE = ("none", "selective", "full")


def recompute_fields(recompute: str, num_layers: int) -> dict:
    """Megatron's activation-recompute settings for `recompute` (settings.SystemSection.recompute).

    selective: the core attention of every attention layer is recomputed in the backward pass (Megatron's default
    selective module; Megatron does nothing for Mamba layers under selective, our mixer recomputes its torch SSD
    scan: HybridMambaMixer._recompute_scan); full: every hybrid layer (Mamba, attention, MLP) keeps only its input
    and is recomputed, one layer per checkpoint ("uniform" over chunks of 1 layer, HybridStack's
    checkpointed_forward)."""
    if recompute not in RECOMPUTE:
        raise RadError(f"system.recompute='{recompute}' is not one of {', '.join(RECOMPUTE)}")
    if recompute == "none":
        return {}
    if recompute == "selective":
        return {"recompute_granularity": "selective"}
    return {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1}


def transformer_config(cfg: ModelConfig, tp: int = 1, pp: int = 1, dtype=torch.float32, recompute: str = "none",
                       sequence_parallel: bool = False) -> TransformerConfig:
    m = cfg.mamba_shape()
    return TransformerConfig(
        num_layers=2 * cfg.num_layers, hidden_size=cfg.hidden_size, ffn_hidden_size=cfg.intermediate_size,
        num_attention_heads=cfg.num_attention_heads, num_query_groups=cfg.num_kv_heads, kv_channels=cfg.kv_channels,
        normalization="RMSNorm", layernorm_epsilon=cfg.rms_norm_eps, gated_linear_unit=True, activation_func=F.silu,
        add_bias_linear=False, hidden_dropout=0.0, attention_dropout=0.0,
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
        sequence_parallel=sequence_parallel and tp > 1, **recompute_fields(recompute, 2 * cfg.num_layers),
        pipeline_dtype=dtype if pp > 1 else None,
        params_dtype=dtype, bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16,
        use_cpu_initialization=True, persist_layer_norm=False, bias_dropout_fusion=False,
        masked_softmax_fusion=False, apply_rope_fusion=False, gradient_accumulation_fusion=False,
        mamba_state_dim=m.state_dim, mamba_head_dim=m.head_dim, mamba_num_groups=m.num_groups,
        mamba_num_heads=m.num_heads, is_hybrid_model=True)


def _mixer_params(cfg: ModelConfig) -> dict:
    m = cfg.mamba_shape()
    return {"d_xb": m.d_xb, "d_conv": m.d_conv, "chunk_size": m.chunk_size}


def build_model(cfg: ModelConfig, tp: int = 1, dtype=torch.float32, use_te: bool | None = None,
                device: torch.device | str = "cpu", pg_collection=None, pp: int = 1, recompute: str = "none",
                sequence_parallel: bool = False) -> HybridModel:
    """Build this rank's shard of the hybrid model (Megatron parallel state must be initialised for `tp`, `pp`).

    Weights are random (seeded identically on every rank by init_distributed); load real ones with
    rad_megatron.checkpoint. `model.rad_config` keeps the ModelConfig for everything downstream.
    With pp > 1 this rank holds one pipeline stage (Megatron splits the 2L hybrid layers evenly; the first stage
    has the embedding, the last the final norm and output layer). Only checkpoint conversion uses pp > 1:
    forward_logits and the commands built on it run the whole model on one stage.
    `recompute` (none | selective | full) and `sequence_parallel` (with tp > 1) are Megatron's own training-time
    options (see recompute_fields); they change memory, never the numbers.
    """
    cfg.check_parallel(tp)
    if pp > 1 and (2 * cfg.num_layers) % pp:
        raise RadError(f"parallel.pp={pp} does not divide the {2 * cfg.num_layers} hybrid layers "
                       f"(2 x model.num_layers={cfg.num_layers}); choose a PP size that divides it")
    use_te = te_available() if use_te is None else use_te
    spec = hybrid_spec(use_te)
    spec.submodules.mamba_layer.submodules.mixer.params = _mixer_params(cfg)
    tcfg = transformer_config(cfg, tp=tp, pp=pp, dtype=dtype, recompute=recompute,
                              sequence_parallel=sequence_parallel)
    first, last = _pipeline_stage(pp, pg_collection)
    # A tied output layer on the last stage is synchronised from the first with a `.cuda()` copy inside
    # HybridModel.__init__; on CPU that copy needs Megatron's CUDA-on-CPU mode (a no-op on GPU and at pp=1).
    with _stage_init_context(pp):
        model = HybridModel(
            config=tcfg, hybrid_stack_spec=spec, vocab_size=padded_vocab_size(cfg.vocab_size, tp),
            max_sequence_length=cfg.max_position_embeddings, hybrid_layer_pattern=layout_to_pattern(cfg.layout),
            pre_process=first, post_process=last, parallel_output=True,
            share_embeddings_and_output_weights=cfg.tie_word_embeddings, position_embedding_type="rope",
            rotary_percent=1.0, rotary_base=int(cfg.rope_theta), pg_collection=pg_collection)
    _apply_rope_scaling(model, cfg)
    model.rad_config = cfg
    model.rad_tp = tp
    model.rad_pp = pp
    model.rad_tp_group = model.pg_collection.tp  # the teacher's own group when it runs on separate ranks
    return model.to(device=device)


def _pipeline_stage(pp: int, pg_collection=None) -> tuple[bool, bool]:
    """(is first stage, is last stage) of this rank; both True without pipeline parallelism. A model on its own
    groups (a distillation teacher) asks its own pipeline group."""
    if pp == 1:
        return True, True
    if pg_collection is not None:
        return pg_collection.pp.rank() == 0, pg_collection.pp.rank() == pg_collection.pp.size() - 1
    from megatron.core import parallel_state

    return parallel_state.is_pipeline_first_stage(), parallel_state.is_pipeline_last_stage()


def _stage_init_context(pp: int):
    if pp == 1:
        return contextlib.nullcontext()
    from rad_megatron.distributed.cpu import megatron_cuda_on_cpu

    return megatron_cuda_on_cpu()


def _apply_rope_scaling(model: HybridModel, cfg: ModelConfig) -> None:
    """HybridModel builds RotaryEmbedding without Llama-3.1 scaling; scale its inverse frequencies here.

    Megatron's RotaryEmbedding._apply_scaling is the HF "llama3" rule but its factors are only exposed as defaults;
    we pass the checkpoint's own factors.
    """
    rs = cfg.rope_scaling
    if rs is None:
        return
    rope = getattr(model, "rotary_pos_emb", None)
    if rope is None:
        raise RadError("model.rope_scaling is set but the model has no rotary embedding")
    rope.inv_freq = rope._apply_scaling(
        rope.inv_freq, factor=rs.factor, low_freq_factor=rs.low_freq_factor, high_freq_factor=rs.high_freq_factor,
        original_max_position_embeddings=rs.original_max_position_embeddings)
    rope.forward.cache_clear()


def model_config_of(model) -> ModelConfig:
    return dataclasses.replace(model.rad_config)
