"""FLOPs per token and per optimizer step of a distillation job, and the step time they imply at a stated MFU.

Forward FLOPs per token follow Megatron-LM's `num_floating_point_operations` (perf.md 4b), per layer, at sequence
length s with the causal attention halved: attention 2·D·(H+2G)·d + 2·H·d·D + 2·s·H·d; SwiGLU MLP 6·D·F; Mamba-2
2·D·(in_proj width) + 2·d_inner·D + 7·d_inner·N (Megatron's SSD estimate) + the depthwise conv; logits 2·D·V.

Training is not a flat 3x forward here, because targeted distillation trains few layers: the backward pass computes
weight gradients (1x the layer's matmuls) only for trainable layers, and input gradients (1x the matmuls, 2x the
attention/SSD core) only from the first trainable layer on. That is "6N" when everything trains. Full recompute adds
one more forward of every layer that kept a graph (selective: of the attention cores); MFU counts model FLOPs
without recompute, as Megatron does, so the step time uses model FLOPs at the stated MFU. The teacher costs one
forward per student token.
"""

from __future__ import annotations

from dataclasses import dataclass

from rad_megatron.config import ATTENTION, MAMBA, ModelConfig
from rad_megatron.plan.job import Job
from rad_megatron.plan.params import is_trainable, mamba_widths, model_parts


@dataclass(frozen=True)
class PartFlops:
    """Forward FLOPs per token of one model piece: weight matmuls and the weight-free core (attention, SSD)."""

    matmul: float
    core: float


def part_flops(cfg: ModelConfig, kind: str, seq: int) -> PartFlops:
    d = cfg.hidden_size
    if kind == ATTENTION:
        hd, kvd = cfg.num_attention_heads * cfg.kv_channels, cfg.num_kv_heads * cfg.kv_channels
        return PartFlops(2 * d * (hd + 2 * kvd) + 2 * hd * d, 2 * seq * hd)
    if kind == MAMBA:
        w = mamba_widths(cfg)
        return PartFlops(2 * d * w.in_proj + 2 * w.d_inner * d, 7 * w.d_inner * w.state + 2 * w.conv * w.d_conv)
    if kind == "mlp":
        return PartFlops(6 * d * cfg.intermediate_size, 0.0)
    if kind == "output":
        return PartFlops(2 * d * cfg.vocab_size, 0.0)
    return PartFlops(0.0, 0.0)  # embedding lookup, final norm


def forward_flops(cfg: ModelConfig, seq: int) -> float:
    """Forward FLOPs per token (logits included)."""
    return sum(f.matmul + f.core for f in (part_flops(cfg, p.kind, seq) for p in model_parts(cfg, 1)))


def train_flops(cfg: ModelConfig, seq: int, group: str, new_layers: list[int], recompute: str) -> tuple[float, float]:
    """(model FLOPs, executed FLOPs incl. recompute) per token of one training step with trainable `group`."""
    parts = model_parts(cfg, 1)
    trainable = [is_trainable(p, cfg, group, new_layers) for p in parts]
    if not any(trainable):
        return forward_flops(cfg, seq), forward_flops(cfg, seq)
    first = trainable.index(True)
    model = recomputed = 0.0
    for i, p in enumerate(parts):
        f = part_flops(cfg, p.kind, seq)
        model += f.matmul + f.core
        if i > first:
            model += f.matmul + 2 * f.core  # input gradient
        elif i == first:
            model += 2 * f.core  # to reach this layer's own input projection
        if trainable[i]:
            model += f.matmul  # weight gradient
        if i >= first and p.kind in (ATTENTION, MAMBA, "mlp"):
            recomputed += {"full": f.matmul + f.core, "selective": f.core if p.kind == ATTENTION else 0.0,
                           "none": 0.0}[recompute]
    return model, model + recomputed


@dataclass
class StepTime:
    """FLOPs of one optimizer step on each side and the time they take at `mfu` of `peak_flops` per GPU."""

    tokens: int
    student_flops: float
    student_executed_flops: float
    teacher_flops: float
    student_s: float
    teacher_s: float

    @property
    def step_s(self) -> float:
        """The teacher streams ahead of the student, so a step takes the slower side's time."""
        return max(self.student_s, self.teacher_s)

    @property
    def bound(self) -> str:
        return "student" if self.student_s >= self.teacher_s else "teacher"


def step_time(job: Job, mfu: float, peak_flops: float) -> StepTime:
    """The worst stage's step (most FLOPs) on the student side; the teacher's forward for the same tokens."""
    tokens = job.global_batch * job.seq_len
    per_stage = [train_flops(job.student.model, job.seq_len, g, job.new_layers, job.recompute) for g, _ in job.stages]
    model, executed = max(per_stage)
    teacher = forward_flops(job.teacher.model, job.seq_len) * tokens
    rate = mfu * peak_flops
    return StepTime(tokens=tokens, student_flops=model * tokens, student_executed_flops=executed * tokens,
                    teacher_flops=teacher, student_s=model * tokens / (job.student.ranks * rate),
                    teacher_s=teacher / (job.teacher.ranks * rate))
