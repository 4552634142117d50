"""Calling the HybridModel the way every rad_megatron component needs: token ids in, full-vocabulary logits out."""

from __future__ import annotations

import torch
from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

from rad_megatron.errors import RadError


def position_ids_for(input_ids: torch.Tensor, offset: int = 0) -> torch.Tensor:
    b, s = input_ids.shape
    return torch.arange(offset, offset + s, device=input_ids.device).unsqueeze(0).expand(b, s)


def causal_mask(sq: int, offset: int, device=None) -> torch.Tensor:
    """[1, 1, sq, offset + sq] bool mask, True = masked: query i (at position offset + i) sees keys 0..offset + i."""
    q = torch.arange(sq, device=device)[:, None] + offset
    k = torch.arange(offset + sq, device=device)[None, :]
    return (k > q)[None, None]


def sequence_parallel_padding(model, seq_len: int) -> int:
    """Tokens to append so that a sequence-parallel model can split `seq_len` over its TP ranks (0 without SP)."""
    if not model.config.sequence_parallel:
        return 0
    return (-seq_len) % model.config.tensor_model_parallel_size


def forward_logits(model, input_ids: torch.Tensor, gather: bool = True, inference_context=None,
                   attention_mask: torch.Tensor | None = None, position_offset: int = 0,
                   seq_idx: torch.Tensor | None = None) -> torch.Tensor:
    """[b, s] token ids -> logits [b, s, vocab] (gathered over TP) or this rank's vocab shard [b, s, V/tp].
    `model` may be wrapped in Megatron's DDP when gather=False (the student's training forward).

    With gather=True, vocabulary padding added for TP divisibility is removed. attention_mask=None means causal;
    with a cache already holding `position_offset` tokens, several new tokens get the offset causal mask.
    seq_idx [b, s] (document id per token): packed documents, each seen alone (model.documents).
    A sequence-parallel model splits the sequence over its TP ranks: a length TP does not divide is padded at the end
    and the padding's logits dropped (causal attention and the causal Mamba scan never let a token see later ones,
    so the real tokens' logits are unchanged). Cached decoding feeds one token at a time, which SP cannot split:
    build the model without sequence_parallel for it.
    """
    s = input_ids.shape[1]
    pad = sequence_parallel_padding(model, s)
    if model.config.sequence_parallel and inference_context is not None:
        raise RadError("a sequence-parallel model cannot decode with a cache; build it with "
                       "sequence_parallel=False (system.sequence_parallel: false) for generation")
    if pad:
        if attention_mask is not None:
            raise RadError(f"sequence length {s} is not divisible by the tensor-parallel size under sequence "
                           f"parallelism and an explicit attention mask cannot be padded; use a multiple of it")
        input_ids = torch.nn.functional.pad(input_ids, (0, pad))
        if seq_idx is not None:  # the padding is a document of its own
            seq_idx = torch.cat([seq_idx, (seq_idx[:, -1:] + 1).expand(-1, pad)], dim=1)
    if seq_idx is not None:
        from rad_megatron.model.documents import packed_forward

        logits = packed_forward(model, input_ids, seq_idx, runtime_gather_output=False)
    else:
        if attention_mask is None and inference_context is not None and position_offset > 0 and input_ids.shape[1] > 1:
            attention_mask = causal_mask(input_ids.shape[1], position_offset, input_ids.device)
        logits = model(input_ids=input_ids, position_ids=position_ids_for(input_ids, position_offset),
                       attention_mask=attention_mask, inference_context=inference_context,
                       runtime_gather_output=False)
    if pad:
        logits = logits[:, :s]
    return gathered_vocab(model, logits) if gather else logits


def gathered_vocab(model, logits: torch.Tensor) -> torch.Tensor:
    """This rank's vocab shard [..., V/tp] -> the full vocabulary [..., vocab_size] (TP gather, padding removed)."""
    if model.rad_tp > 1:
        logits = gather_from_tensor_model_parallel_region(logits, group=model.rad_tp_group)
    return logits[..., : model.rad_config.vocab_size]
