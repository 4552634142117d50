"""Attention pieces of the local (CPU / no Transformer Engine) spec that keep cached decoding linear in the new tokens.

SDPAAttention: Megatron-Core's DotProductAttention expands grouped K/V to every query head with `repeat_interleave` before its
batched matmuls. During cached decoding that copies the whole KV cache `heads / groups` times per layer and step: on
SmolLM2 (9 heads, 3 groups) it was half of a decode step on CPU. SDPA reads grouped K/V as they are
(`enable_gqa`) and fuses scale, mask and softmax. Features SDPA cannot express exactly here (softmax offsets,
query-key layer scaling, sliding windows, attention dropout while training) fall back to Megatron's implementation;
`DotProductAttention.forward` stays the reference the tests compare against.

RopeCachedSelfAttention also takes packed documents (model.documents: Megatron's PackedSeqParams in the `sbhd` layout
with a per-token document id): keys and queries are rotated at per-document positions and the core attention gets
the block-diagonal causal mask, so each document attends only to itself exactly as it would alone.

RopeCachedSelfAttention: with a static inference context Megatron caches keys before RoPE and rotates the whole
cache again at every step (only its flash-decode path, which needs CUDA kernels, caches rotated keys). Rotation at
position p depends on p alone, so rotating the new keys once before they are stored gives the same keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb
from megatron.core.transformer.attention import SelfAttention
from megatron.core.transformer.dot_product_attention import DotProductAttention

from rad_megatron.model.documents import document_mask, document_positions, is_document_params, rope_at_positions


def _bottom_right_causal(sq: int, sk: int, device) -> torch.Tensor:
    """[sq, sk] bool, True = may attend: query i is the token at position sk - sq + i."""
    q = torch.arange(sq, device=device)[:, None] + (sk - sq)
    return torch.arange(sk, device=device)[None, :] <= q


class SDPAAttention(DotProductAttention):
    """DotProductAttention with the same inputs and outputs ([sq, b, np, hn] in, [sq, b, np * hn] out), computed by
    torch SDPA without expanding grouped keys and values."""

    def _needs_reference(self, attention_bias, packed_seq_params) -> bool:
        c = self.config
        return (attention_bias is not None or packed_seq_params is not None or c.softmax_type != "vanilla"
                or c.apply_query_key_layer_scaling or self.scale_mask_softmax.window_size is not None
                or (self.training and self.attention_dropout.p > 0))

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if self._needs_reference(attention_bias, packed_seq_params):
            return super().forward(query, key, value, attention_mask, attn_mask_type, attention_bias,
                                   packed_seq_params)
        sq, b, heads, hn = query.shape
        sk = key.shape[0]
        allowed, causal = None, False
        if attention_mask is not None:
            allowed = ~attention_mask  # Megatron's masks are True where a score is masked out
        elif sq == sk and sq > 1:
            causal = True
        elif sq > 1:  # new tokens after a cache without an explicit mask: causal, aligned to the last key
            allowed = _bottom_right_causal(sq, sk, query.device)
        context = F.scaled_dot_product_attention(
            query.permute(1, 2, 0, 3), key.permute(1, 2, 0, 3), value.permute(1, 2, 0, 3), attn_mask=allowed,
            is_causal=causal, scale=self.softmax_scale, enable_gqa=key.shape[2] != heads)
        return context.permute(2, 0, 1, 3).reshape(sq, b, heads * hn)


class RopeCachedSelfAttention(SelfAttention):
    """SelfAttention whose static KV cache holds rotated keys, so a decode step rotates one key, not the cache;
    packed documents (sbhd PackedSeqParams with seq_idx) get per-document RoPE and a block-diagonal mask."""

    def forward(self, hidden_states, attention_mask, *args, rotary_pos_emb=None, packed_seq_params=None, **kwargs):
        if is_document_params(packed_seq_params):
            seq_idx = packed_seq_params.seq_idx
            attention_mask = document_mask(seq_idx)
            if rotary_pos_emb is not None:
                both = rotary_pos_emb if isinstance(rotary_pos_emb, tuple) else (rotary_pos_emb, rotary_pos_emb)
                positions = document_positions(seq_idx)
                rotary_pos_emb = tuple(None if f is None else rope_at_positions(f, positions) for f in both)
            packed_seq_params = None  # carried over as the mask and the positions: plain sbhd from here on
        return super().forward(hidden_states, attention_mask, *args, rotary_pos_emb=rotary_pos_emb,
                               packed_seq_params=packed_seq_params, **kwargs)

    def _adjust_key_value_for_inference(self, inference_context, query, key, value, rotary_pos_emb, *args,
                                        **kwargs):
        if (inference_context is None or not inference_context.is_static_batching() or rotary_pos_emb is None
                or self.config.flash_decode):
            return super()._adjust_key_value_for_inference(inference_context, query, key, value, rotary_pos_emb,
                                                           *args, **kwargs)
        start = inference_context.sequence_len_offset
        k_pos_emb = rotary_pos_emb[1]
        key = apply_rotary_pos_emb(key, k_pos_emb[start:start + key.shape[0]], config=self.config,
                                   mscale=self._yarn_concentration_factor, cp_group=self.pg_collection.cp)
        query, key, value, (q_pos_emb, _), mask_type, block_table = super()._adjust_key_value_for_inference(
            inference_context, query, key, value, rotary_pos_emb, *args, **kwargs)
        return query, key, value, (q_pos_emb, None), mask_type, block_table
