"""Snapshot and restore of Mamba inference states, for speculative rollback: an SSM state cannot be truncated the
way a KV cache can, so the verifier snapshots before it advances and restores what it must undo."""

from __future__ import annotations

import torch

StateSnapshot = dict[int, tuple[torch.Tensor, torch.Tensor]]


def mamba_layer_numbers(model) -> list[int]:
    from rad_megatron.ssm.mixer import HybridMambaMixer

    return [layer.layer_number for layer in model.decoder.layers
            if isinstance(getattr(layer, "mixer", None), HybridMambaMixer)]


def snapshot_states(inference_context, layer_numbers) -> StateSnapshot:
    """Copies of (conv_state, ssm_state) for each given layer present in the context."""
    cache = inference_context.key_value_memory_dict
    return {n: (cache[n][0].clone(), cache[n][1].clone()) for n in layer_numbers if n in cache}


def restore_states(inference_context, snapshot: StateSnapshot) -> None:
    """Write a snapshot back in place (the mixers hold references to these tensors)."""
    cache = inference_context.key_value_memory_dict
    for n, (conv, ssm) in snapshot.items():
        cache[n][0].copy_(conv)
        cache[n][1].copy_(ssm)
