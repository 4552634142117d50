"""Per-block layout ('attention' | 'mamba') <-> Megatron's hybrid layer pattern.

One Llama block is two hybrid layers: a mixer layer and an MLP layer. Attention block i is `*-` at pattern positions
(2i, 2i+1); swapping it for Mamba makes it `M-`. So decoder.layers[2i] is block i's mixer and [2i+1] its MLP.
"""

from __future__ import annotations

from rad_megatron.config import ATTENTION, MAMBA
from rad_megatron.errors import RadError

_SYMBOL = {ATTENTION: "*", MAMBA: "M"}
_KIND = {v: k for k, v in _SYMBOL.items()}


def layout_to_pattern(layout: list[str]) -> str:
    return "".join(_SYMBOL[kind] + "-" for kind in layout)


def pattern_to_layout(pattern: str) -> list[str]:
    if len(pattern) % 2 or any(pattern[i + 1] != "-" or pattern[i] not in _KIND for i in range(0, len(pattern), 2)):
        raise RadError(f"hybrid pattern '{pattern}' is not a sequence of '*-' / 'M-' blocks")
    return [_KIND[pattern[i]] for i in range(0, len(pattern), 2)]


def mixer_layer_index(block: int) -> int:
    """Index in `decoder.layers` of block `block`'s attention or Mamba layer."""
    return 2 * block


def mlp_layer_index(block: int) -> int:
    return 2 * block + 1
