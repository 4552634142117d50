"""Which parameters train: parameter groups by module path, and the stage schedule (MIL trains the new layers
first, then more)."""

from __future__ import annotations

from dataclasses import dataclass, field

from rad_megatron.config import MAMBA
from rad_megatron.errors import RadError
from rad_megatron.model.layout import mixer_layer_index, mlp_layer_index
from rad_megatron.validation import rules

GROUPS = ("new_mamba", "all_mamba", "mamba_mlp", "all")


@dataclass
class Stage:
    """One training stage."""

    name: str = "stage1"
    """Label in logs."""
    trainable: str = field(default="new_mamba", metadata=rules(choices=GROUPS))
    """new_mamba (the layers swapped in this run; RAD's default) | all_mamba | mamba_mlp (Mamba layers and their
    MLPs) | all."""
    steps: int = field(default=10, metadata=rules(ge=1))
    """Optimizer steps of this stage."""
    lr: float = field(default=1e-3, metadata=rules(gt=0))
    """Peak learning rate (warmup then cosine to min_lr_ratio * lr within the stage)."""


def trainable_prefixes(cfg, group: str, new_layers: list[int]) -> list[str] | None:
    """Module-path prefixes of the trainable parameters; None means everything."""
    if group not in GROUPS:
        raise RadError(f"distill stage trainable='{group}' is not one of {', '.join(GROUPS)}")
    if group == "all":
        return None
    mamba = [b for b in cfg.mamba_layers]
    blocks = [b for b in new_layers if cfg.layout[b] == MAMBA] if group == "new_mamba" else mamba
    if not blocks:
        raise RadError(f"trainable='{group}' selects no layer (Mamba layers: {mamba}, new: {new_layers})")
    prefixes = [f"decoder.layers.{mixer_layer_index(b)}." for b in blocks]
    if group == "mamba_mlp":
        prefixes += [f"decoder.layers.{mlp_layer_index(b)}." for b in blocks]
    return prefixes


def global_name(name: str, layer_offset: int) -> str:
    """A pipeline stage's parameter name with its layer index made global (Megatron numbers a stage's layers from 0;
    `layer_offset` is the global index of the stage's first layer)."""
    head = "decoder.layers."
    if not layer_offset or not name.startswith(head):
        return name
    local, rest = name[len(head):].split(".", 1)
    return f"{head}{int(local) + layer_offset}.{rest}"


def layer_offset(model) -> int:
    """Global index of this pipeline stage's first hybrid layer (0 without pipeline parallelism)."""
    layers = model.decoder.layers
    return layers[0].layer_number - 1 if len(layers) else 0


def apply_targeting(model, group: str, new_layers: list[int]) -> list:
    """Set requires_grad by group (layer prefixes are global, so a swapped layer is found on whichever pipeline stage
    holds it); returns this stage's trainable parameters (in a fixed order)."""
    prefixes = trainable_prefixes(model.rad_config, group, new_layers)
    offset = layer_offset(model)
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(prefixes is None or global_name(name, offset).startswith(tuple(prefixes)))
        if p.requires_grad:
            params.append(p)
    return params
