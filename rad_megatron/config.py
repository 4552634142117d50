"""Model configuration: a Llama-family shape plus a per-layer hybrid layout.

`ModelConfig` is what the rest of rad_megatron passes around; `model.build` maps it to Megatron's `TransformerConfig`
and `HybridModel`. It is validated once, when it is made (`__post_init__`), and again against a TP size with
`check_parallel`, so that a bad value fails at the door with a message naming the field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from rad_megatron.errors import RadError, closest

ATTENTION = "attention"
MAMBA = "mamba"
LAYER_KINDS = (ATTENTION, MAMBA)


@dataclass
class RopeScaling:
    """Llama-3.1 style ("llama3") RoPE frequency scaling, as in the HF config's `rope_scaling`."""

    factor: float = 8.0
    """Wavelengths longer than `original_max_position_embeddings / low_freq_factor` are divided by this."""
    low_freq_factor: float = 1.0
    """Bounds the long-wavelength band that is scaled fully."""
    high_freq_factor: float = 4.0
    """Bounds the short-wavelength band that is kept as is; between the two bands the factor is interpolated."""
    original_max_position_embeddings: int = 8192
    """Context length the base model was pre-trained at."""


@dataclass
class MambaConfig:
    """Shape of the Mamba-2 mixers that replace attention layers.

    Left at None, each field takes the MambaInLlama (MIL) value derived from the attention shape:
    nheads = ngroups = n_heads, head_dim = d_state = attention head_dim, d_xb = n_kv_heads * head_dim.
    """

    num_heads: int | None = None
    """SSM heads (MIL: number of query heads)."""
    head_dim: int | None = None
    """Channels per SSM head (MIL: attention head_dim)."""
    state_dim: int | None = None
    """SSM state size N per head (MIL: attention head_dim)."""
    num_groups: int | None = None
    """Groups sharing B and C (MIL: number of query heads, so C gets one row block per head like Q)."""
    d_xb: int | None = None
    """Width of x and B before the per-head repeat (MIL: n_kv_heads * head_dim). Equal to num_heads * head_dim gives
    the standard Mamba-2 layout whose checkpoint keys match Megatron's MambaMixer."""
    d_conv: int = 4
    """Causal depthwise convolution width."""
    chunk_size: int = 128
    """Chunk length of the chunked SSD scan (training / prefill)."""


@dataclass
class ModelConfig:
    """A Llama-family decoder whose attention layers may be replaced by Mamba-2 layers."""

    vocab_size: int
    """Tokenizer vocabulary size (the model pads it internally to a multiple of the TP size if needed)."""
    hidden_size: int
    """Model width D."""
    intermediate_size: int
    """SwiGLU MLP width F."""
    num_layers: int
    """Decoder blocks L (each is a mixer, attention or Mamba, followed by an MLP)."""
    num_attention_heads: int
    """Query heads H."""
    num_kv_heads: int
    """Key/value heads G (GQA); must divide num_attention_heads."""
    head_dim: int | None = None
    """Per-head width d_h; None means hidden_size // num_attention_heads."""
    rms_norm_eps: float = 1e-5
    """Epsilon of every RMSNorm."""
    rope_theta: float = 10000.0
    """RoPE base."""
    rope_scaling: RopeScaling | None = None
    """Llama-3.1 RoPE scaling; None for plain RoPE."""
    max_position_embeddings: int = 4096
    """Longest sequence the model is built for (RoPE table length)."""
    tie_word_embeddings: bool = False
    """Output layer shares the input embedding (SmolLM2: True, Llama-3.1-8B: False)."""
    layout: list[str] | None = None
    """One entry per decoder block, 'attention' or 'mamba'; None means all attention (a plain Llama)."""
    mamba: MambaConfig = field(default_factory=MambaConfig)
    """Shape of the Mamba-2 layers (used only where layout says 'mamba')."""

    def __post_init__(self):
        if isinstance(self.rope_scaling, dict):
            self.rope_scaling = _from_dict(RopeScaling, self.rope_scaling, "model.rope_scaling")
        if isinstance(self.mamba, dict):
            self.mamba = _from_dict(MambaConfig, self.mamba, "model.mamba")
        if self.layout is None:
            self.layout = [ATTENTION] * self.num_layers
        self.layout = list(self.layout)
        self._validate()

    def _validate(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_attention_heads",
                     "num_kv_heads"):
            if int(getattr(self, name)) <= 0:
                raise RadError(f"model.{name} must be a positive integer, got {getattr(self, name)}")
        if self.num_attention_heads % self.num_kv_heads:
            raise RadError(f"model.num_kv_heads={self.num_kv_heads} must divide "
                           f"model.num_attention_heads={self.num_attention_heads}")
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise RadError(f"model.hidden_size={self.hidden_size} is not divisible by num_attention_heads="
                           f"{self.num_attention_heads}; set model.head_dim explicitly")
        if len(self.layout) != self.num_layers:
            raise RadError(f"model.layout has {len(self.layout)} entries but model.num_layers={self.num_layers}; "
                           f"give one entry ('attention' or 'mamba') per layer")
        for i, kind in enumerate(self.layout):
            if kind not in LAYER_KINDS:
                raise RadError(f"model.layout[{i}]='{kind}' is not a layer kind; use 'attention' or 'mamba'"
                               f"{closest(str(kind), LAYER_KINDS)}")

    # ---- derived shapes -------------------------------------------------------------------------------------------
    @property
    def kv_channels(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def attention_layers(self) -> list[int]:
        return [i for i, kind in enumerate(self.layout) if kind == ATTENTION]

    @property
    def mamba_layers(self) -> list[int]:
        return [i for i, kind in enumerate(self.layout) if kind == MAMBA]

    def mamba_shape(self) -> MambaConfig:
        """The Mamba shape with every None filled by its MIL default."""
        m = self.mamba
        nheads = m.num_heads or self.num_attention_heads
        head_dim = m.head_dim or self.kv_channels
        return dataclasses.replace(
            m, num_heads=nheads, head_dim=head_dim, state_dim=m.state_dim or self.kv_channels,
            num_groups=m.num_groups or nheads, d_xb=m.d_xb or self.num_kv_heads * self.kv_channels)

    def check_parallel(self, tp: int) -> None:
        """Raise a RadError when tensor-parallel size `tp` cannot shard this model."""
        if tp < 1:
            raise RadError(f"parallel.tp must be >= 1, got {tp}")
        if self.num_attention_heads % tp:
            raise RadError(f"parallel.tp={tp} does not divide model.num_attention_heads={self.num_attention_heads}; "
                           f"choose a TP size among {_divisors(self.num_attention_heads)}")
        if self.num_kv_heads % tp and tp % self.num_kv_heads:
            raise RadError(f"parallel.tp={tp} and model.num_kv_heads={self.num_kv_heads}: one must divide the other")
        if self.intermediate_size % tp:
            raise RadError(f"parallel.tp={tp} does not divide model.intermediate_size={self.intermediate_size}")
        if self.mamba_layers:
            m = self.mamba_shape()
            for name in ("num_heads", "num_groups"):
                if getattr(m, name) % tp:
                    raise RadError(f"parallel.tp={tp} does not divide model.mamba.{name}={getattr(m, name)} "
                                   f"(needed by the Mamba layers {self.mamba_layers})")
            kv_heads_xb = m.d_xb // m.head_dim
            if kv_heads_xb % tp:
                raise RadError(f"parallel.tp={tp} does not divide the {kv_heads_xb} x/B heads of the Mamba layers "
                               f"(model.mamba.d_xb={m.d_xb} / head_dim={m.head_dim})")

    # ---- conversion -----------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        return _from_dict(cls, d, "model")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_hf(cls, hf_config) -> "ModelConfig":
        """From a transformers `LlamaConfig` (or its dict)."""
        c = hf_config if isinstance(hf_config, dict) else hf_config.to_dict()
        arch = c.get("model_type", "llama")
        if arch not in ("llama", "mistral", "smollm2", "smollm3"):
            raise RadError(f"HF config model_type='{arch}' is not a Llama-family model; rad_megatron imports 'llama'")
        if c.get("attention_bias") or c.get("mlp_bias"):
            raise RadError("HF config has attention_bias/mlp_bias=True; rad_megatron supports bias-free Llama only")
        return cls(
            vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"],
            num_layers=c["num_hidden_layers"], num_attention_heads=c["num_attention_heads"],
            num_kv_heads=c.get("num_key_value_heads") or c["num_attention_heads"],
            head_dim=c.get("head_dim"), rms_norm_eps=c.get("rms_norm_eps", 1e-5),
            rope_theta=_rope_theta(c), rope_scaling=_rope_scaling_from_hf(c),
            max_position_embeddings=c.get("max_position_embeddings", 4096),
            tie_word_embeddings=bool(c.get("tie_word_embeddings", False)))


def _rope_theta(c: dict) -> float:
    # transformers >= 5 moves rope_theta into rope_parameters.
    params = c.get("rope_parameters") or {}
    return float(c.get("rope_theta") or params.get("rope_theta") or 10000.0)


def _rope_scaling_from_hf(c: dict) -> RopeScaling | None:
    rs = c.get("rope_scaling") or c.get("rope_parameters") or None
    if not rs:
        return None
    kind = rs.get("rope_type", rs.get("type", "default"))
    if kind == "default":
        return None
    if kind != "llama3":
        raise RadError(f"HF config rope_scaling type '{kind}' is not supported; rad_megatron handles 'llama3' scaling")
    return RopeScaling(factor=float(rs["factor"]), low_freq_factor=float(rs["low_freq_factor"]),
                       high_freq_factor=float(rs["high_freq_factor"]),
                       original_max_position_embeddings=int(rs["original_max_position_embeddings"]))


def _from_dict(cls, d: dict[str, Any], where: str):
    from rad_megatron.validation import from_dict  # typed like every config section (unknown keys, types)

    return from_dict(cls, d, where)


def _divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]
