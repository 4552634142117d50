"""Bypassing blocks' mixers: the residual stream passes through unchanged (the self-speculative draft, and the
functional equivalent of a rad_zero-initialised Mamba layer). The blocks' MLPs still run."""

from __future__ import annotations

import contextlib

from megatron.core.transformer.transformer_layer import TransformerLayer

from rad_megatron.config import ATTENTION
from rad_megatron.errors import RadError
from rad_megatron.model.layout import mixer_layer_index


def _identity_for(layer):
    if isinstance(layer, TransformerLayer):  # HybridStack unpacks (hidden_states, context) from attention layers
        return lambda hidden_states, *args, **kwargs: (hidden_states, None)
    return lambda hidden_states, *args, **kwargs: hidden_states


def check_skip_set(cfg, blocks) -> list[int]:
    blocks = sorted(set(int(b) for b in blocks))
    for b in blocks:
        if not 0 <= b < cfg.num_layers:
            raise RadError(f"skip set names layer {b} but the model has layers 0..{cfg.num_layers - 1}")
        if cfg.layout[b] != ATTENTION:
            raise RadError(f"skip set names layer {b}, which is a {cfg.layout[b]} layer; only attention layers "
                           f"can be skipped (attention layers: {cfg.attention_layers})")
    return blocks


@contextlib.contextmanager
def skip_blocks(model, blocks):
    """Within the context, the mixer layer of each block in `blocks` returns its input (attention layers only)."""
    blocks = check_skip_set(model.rad_config, blocks)
    layers = [model.decoder.layers[mixer_layer_index(b)] for b in blocks]
    for layer in layers:
        layer.forward = _identity_for(layer)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward  # back to the class's forward
