"""Parameter counts of a `ModelConfig` without building it: per hybrid layer, per tensor-parallel rank and pipeline
stage, and which parameters a distillation stage trains.

The model is Megatron's hybrid stack as `model.build` makes it: an embedding, then for each block a mixer layer
(attention or Mamba-2, each with its input RMSNorm) and an MLP layer (pre-MLP RMSNorm + SwiGLU), then the final norm
and the output layer (absent when tied to the embedding, except on the last of several pipeline stages, which keeps
its own copy). Norms are replicated over TP; everything else is split. The vocabulary is padded to a multiple of TP.
"""

from __future__ import annotations

from dataclasses import dataclass

from rad_megatron.config import ATTENTION, MAMBA, ModelConfig

GROUPS = ("new_mamba", "all_mamba", "mamba_mlp", "all")  # distill.targeting's trainable groups


@dataclass(frozen=True)
class Part:
    """One piece of the model on one TP rank: the embedding, a mixer or MLP layer, the final norm or the output."""

    kind: str
    """embedding | attention | mamba | mlp | final_norm | output."""
    block: int | None
    """Decoder block of a mixer/MLP layer; None for model-level pieces."""
    params: int
    """Parameters on one TP rank."""
    largest: int
    """Elements of its largest tensor on one TP rank (sizes optimizer-step temporaries)."""


@dataclass(frozen=True)
class MambaWidths:
    """Global widths of one Mamba-2 mixer, as `ssm.mixer.MixerShape` lays them out."""

    d_inner: int
    x: int
    b: int
    c: int
    heads: int
    head_dim: int
    state: int
    groups: int
    d_conv: int
    chunk: int

    @property
    def conv(self) -> int:
        return self.x + self.b + self.c

    @property
    def in_proj(self) -> int:
        return self.d_inner + self.conv + self.heads


def mamba_widths(cfg: ModelConfig) -> MambaWidths:
    m = cfg.mamba_shape()
    d_inner = m.num_heads * m.head_dim
    mil = m.d_xb != d_inner  # MIL's narrow x/B; the standard layout has B = ngroups * d_state
    return MambaWidths(d_inner=d_inner, x=m.d_xb, b=m.d_xb if mil else m.num_groups * m.state_dim,
                       c=m.num_groups * m.state_dim, heads=m.num_heads, head_dim=m.head_dim, state=m.state_dim,
                       groups=m.num_groups, d_conv=m.d_conv, chunk=m.chunk_size)


def padded_vocab(cfg: ModelConfig, tp: int) -> int:
    return -(-cfg.vocab_size // tp) * tp


def kv_heads_per_rank(cfg: ModelConfig, tp: int) -> int:
    return max(cfg.num_kv_heads // tp, 1)  # TP > kv heads replicates them (ModelConfig.check_parallel allows it)


def layer_part(cfg: ModelConfig, kind: str, block: int | None, tp: int) -> Part:
    """Parameters of one hybrid layer (mixer or MLP) on one TP rank, its RMSNorm included."""
    d = cfg.hidden_size
    if kind == ATTENTION:
        qkv = d * (cfg.num_attention_heads // tp + 2 * kv_heads_per_rank(cfg, tp)) * cfg.kv_channels
        proj = cfg.num_attention_heads // tp * cfg.kv_channels * d
        return Part(kind, block, d + qkv + proj, max(qkv, proj))
    if kind == MAMBA:
        w = mamba_widths(cfg)
        in_proj, out_proj = d * w.in_proj // tp, w.d_inner // tp * d
        small = w.conv // tp * (w.d_conv + 1) + 3 * w.heads // tp + w.d_inner // tp  # conv, dt_bias/A_log/D, norm
        return Part(kind, block, d + in_proj + out_proj + small, max(in_proj, out_proj))
    if kind == "mlp":
        fc1, fc2 = d * 2 * cfg.intermediate_size // tp, cfg.intermediate_size // tp * d
        return Part(kind, block, d + fc1 + fc2, fc1)
    raise ValueError(kind)


def model_parts(cfg: ModelConfig, tp: int) -> list[Part]:
    """Every piece in forward order on one TP rank: embedding, (mixer, MLP) per block, final norm, output."""
    vocab_rows = padded_vocab(cfg, tp) // tp * cfg.hidden_size
    parts = [Part("embedding", None, vocab_rows, vocab_rows)]
    for block, kind in enumerate(cfg.layout):
        parts += [layer_part(cfg, kind, block, tp), layer_part(cfg, "mlp", block, tp)]
    parts.append(Part("final_norm", None, cfg.hidden_size, cfg.hidden_size))
    parts.append(Part("output", None, 0 if cfg.tie_word_embeddings else vocab_rows, vocab_rows))
    return parts


def stage_parts(cfg: ModelConfig, tp: int, pp: int, stage: int) -> list[Part]:
    """The pieces on pipeline stage `stage` of `pp`: Megatron splits the 2L hybrid layers evenly; the first stage
    has the embedding, the last the final norm and output layer (a tied output layer gets its own copy when pp > 1)."""
    parts = model_parts(cfg, tp)
    layers = parts[1:-2]
    per = len(layers) // pp
    out = layers[stage * per:(stage + 1) * per]
    if stage == 0:
        out = [parts[0]] + out
    if stage == pp - 1:
        output = parts[-1]
        if pp > 1 and cfg.tie_word_embeddings:
            output = Part("output", None, parts[0].params, parts[0].largest)
        out = out + [parts[-2], output]
    return out


def is_trainable(part: Part, cfg: ModelConfig, group: str, new_layers: list[int]) -> bool:
    """Whether `part` trains in a stage with trainable group `group` (distill.targeting's rule)."""
    if group == "all":
        return True
    if part.block is None:
        return False
    mamba_block = cfg.layout[part.block] == MAMBA
    if part.kind == MAMBA:
        return group in ("all_mamba", "mamba_mlp") or part.block in new_layers
    return part.kind == "mlp" and group == "mamba_mlp" and mamba_block


def total_params(cfg: ModelConfig) -> int:
    return sum(p.params for p in model_parts(cfg, 1))
