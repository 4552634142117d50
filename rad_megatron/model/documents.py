"""Several documents packed into one row: the model sees each document alone.

A packed batch carries `seq_idx` [b, s], the document id of every token (non-decreasing along a row). From it:
  * positions restart at 0 with each document (RoPE sees per-document positions);
  * attention is block-diagonal causal (a token attends to earlier tokens of its own document only);
  * the Mamba-2 mixers reset their conv history and SSM state at every boundary (ssm.mixer, ssm.ssd).

Two carriers of that information into Megatron's HybridModel, both through its `packed_seq_params` argument:
  * local spec (CPU, no Transformer Engine): Megatron's PackedSeqParams with qkv_format="sbhd" and `seq_idx` [b, s];
    model.attention.RopeCachedSelfAttention turns it into per-document RoPE and a block-diagonal boolean mask for
    SDPA, and the mixer reads `seq_idx`;
  * TE spec (GPU): the `thd` layout Megatron and TE use for packed sequences (all rows flattened to one, documents
    delimited by `cu_seqlens`; TE's fused attention and Megatron's RoPE restart per document, the mixer gets the
    `seq_idx` PackedSeqParams derives from `cu_seqlens`). Written for a GPU with TE, not run on one here.
"""

from __future__ import annotations

import torch
from megatron.core.packed_seq_params import PackedSeqParams


def document_positions(seq_idx: torch.Tensor) -> torch.Tensor:
    """[b, s] document ids -> [b, s] positions, 0 at each document's first token."""
    b, s = seq_idx.shape
    idx = torch.arange(s, device=seq_idx.device).expand(b, s)
    starts = torch.ones_like(seq_idx, dtype=torch.bool)
    starts[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
    first = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values  # start of the current document
    return idx - first


def document_mask(seq_idx: torch.Tensor) -> torch.Tensor:
    """[b, 1, s, s] boolean, True = masked (Megatron's convention): causal and within one document."""
    s = seq_idx.shape[1]
    causal = torch.ones(s, s, dtype=torch.bool, device=seq_idx.device).tril()
    same = seq_idx[:, :, None] == seq_idx[:, None, :]
    return ~(same & causal)[:, None]


def rope_at_positions(freqs: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Megatron's rotary table [>= s, 1, 1, d] read at per-row positions [b, s] -> [s, b, 1, d] (broadcasts
    against [s, b, heads, d] queries and keys exactly as the [s, 1, 1, d] table does)."""
    return freqs[:, 0, 0][positions.t()].unsqueeze(2)


def local_params(seq_idx: torch.Tensor) -> PackedSeqParams:
    """The local spec's carrier: rows stay rows ([s, b, h] activations), `seq_idx` [b, s] says who is who."""
    s = seq_idx.shape[1]
    return PackedSeqParams(qkv_format="sbhd", seq_idx=seq_idx, max_seqlen_q=s, max_seqlen_kv=s)


def is_document_params(p) -> bool:
    return p is not None and p.qkv_format == "sbhd" and p.seq_idx is not None


def thd_params(seq_idx: torch.Tensor) -> PackedSeqParams:
    """The TE carrier: every row's documents as one flat sequence of b * s tokens delimited by cu_seqlens."""
    b, s = seq_idx.shape
    flat = seq_idx + torch.arange(b, device=seq_idx.device)[:, None] * (int(seq_idx.max()) + 1)  # rows apart
    flat = flat.reshape(-1)
    starts = torch.ones_like(flat, dtype=torch.bool)
    starts[1:] = flat[1:] != flat[:-1]
    bounds = torch.nonzero(starts).flatten()
    cu = torch.cat([bounds, bounds.new_tensor([flat.numel()])]).to(torch.int32)
    longest = int((cu[1:] - cu[:-1]).max())
    return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=longest,
                           max_seqlen_kv=longest, total_tokens=flat.numel())


def uses_te(model) -> bool:
    """Whether the model was built with the Transformer-Engine spec (then packed documents go as `thd`)."""
    found = getattr(model, "rad_uses_te", None)
    if found is None:
        found = any(type(m).__name__.startswith("TE") for m in model.modules())
        model.rad_uses_te = found
    return found


def packed_forward(model, input_ids: torch.Tensor, seq_idx: torch.Tensor, **kwargs) -> torch.Tensor:
    """Logits [b, s, V/tp] of a packed batch, each document on its own (see the module docstring)."""
    if uses_te(model):
        b, s = input_ids.shape
        out = model(input_ids=input_ids.reshape(1, b * s), position_ids=document_positions(seq_idx).reshape(1, b * s),
                    attention_mask=None, packed_seq_params=thd_params(seq_idx), **kwargs)
        return out.reshape(b, s, -1)
    return model(input_ids=input_ids, position_ids=document_positions(seq_idx), attention_mask=None,
                 packed_seq_params=local_params(seq_idx), **kwargs)
