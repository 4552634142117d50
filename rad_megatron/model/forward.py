"""Calling the HybridModel the way every rad_megatron component needs: token ids in, full-vocabulary logits out."""

from __future__ import annotations

import torch
from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region


def position_ids_for(input_ids: torch.Tensor, offset: int = 0) -> torch.Tensor:
    b, s = input_ids.shape
    return torch.arange(offset, offset + s, device=input_ids.device).unsqueeze(0).expand(b, s)


def causal_mask(sq: int, offset: int, device=None) -> torch.Tensor:
    """[1, 1, sq, offset + sq] bool mask, True = masked: query i (at position offset + i) sees keys 0..offset + i."""
    q = torch.arange(sq, device=device)[:, None] + offset
    k = torch.arange(offset + sq, device=device)[None, :]
    return (k > q)[None, None]


def forward_logits(model, input_ids: torch.Tensor, gather: bool = True, inference_context=None,
                   attention_mask: torch.Tensor | None = None, position_offset: int = 0,
                   seq_idx: torch.Tensor | None = None) -> torch.Tensor:
    """[b, s] token ids -> logits [b, s, vocab] (gathered over TP) or this rank's vocab shard [b, s, V/tp].

    With gather=True, vocabulary padding added for TP divisibility is removed. attention_mask=None means causal;
    with a cache already holding `position_offset` tokens, several new tokens get the offset causal mask.
    seq_idx [b, s] (document id per token): packed documents, each seen alone (model.documents).
    """
    if seq_idx is not None:
        from rad_megatron.model.documents import packed_forward

        logits = packed_forward(model, input_ids, seq_idx, runtime_gather_output=False)
        return _gathered(model, logits) if gather else logits
    if attention_mask is None and inference_context is not None and position_offset > 0 and input_ids.shape[1] > 1:
        attention_mask = causal_mask(input_ids.shape[1], position_offset, input_ids.device)
    logits = model(input_ids=input_ids, position_ids=position_ids_for(input_ids, position_offset),
                   attention_mask=attention_mask, inference_context=inference_context, runtime_gather_output=False)
    return _gathered(model, logits) if gather else logits


def _gathered(model, logits: torch.Tensor) -> torch.Tensor:
    if model.rad_tp > 1:
        logits = gather_from_tensor_model_parallel_region(logits, group=model.rad_tp_group)
    return logits[..., : model.rad_config.vocab_size]
