"""A run config + an allocation -> the shapes `rad plan` sizes: each side's model and parallel layout, the batch, the
stream and the training stages; refused with one line when the layout cannot exist.

Rank rules are `distill.roles.init_roles`'s (students first, then teachers; each side's TP x PP divides its ranks, the
rest is data-parallel) plus Megatron's: TP divides the attention and Mamba heads, KV heads and FFN width
(`ModelConfig.check_parallel`; the vocabulary is padded to a multiple of TP), PP divides the 2L hybrid layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from rad_megatron.config import ATTENTION, MAMBA, ModelConfig
from rad_megatron.errors import RadError


@dataclass
class Side:
    """One role's model and layout."""

    name: str
    """student | teacher."""
    model: ModelConfig
    """Architecture (the student's after the swap)."""
    tp: int
    pp: int
    dp: int
    """Replicas (data-parallel size)."""

    @property
    def ranks(self) -> int:
        return self.tp * self.pp * self.dp


@dataclass
class Job:
    """Everything the memory and FLOP models need, resolved from a RunConfig and an allocation."""

    student: Side
    teacher: Side
    base: ModelConfig
    """The model before the swap (probed; the teacher of self-distillation)."""
    new_layers: list[int]
    layers_from_probe: bool
    """True when swap.layers is unset: the probe picks them and the plan assumes the first k attention layers."""
    stages: list[tuple[str, int]]
    """(trainable group, optimizer steps) per training stage."""
    micro_batch: int
    grad_accum: int
    seq_len: int
    eval_batch: int
    top_k: int
    lookahead: int
    temperature: float
    ce_weight: float
    precision: str
    recompute: str
    distributed_optimizer: bool
    sequence_parallel: bool
    """system.sequence_parallel (in effect on a side whose TP > 1)."""
    stream_value_bytes: int
    """Bytes per log-probability sent by the teacher (distill.train.stream.dtype)."""
    probe_tokens: int
    """Longest probe sequence (0: no probe): data.seq_len as the prompt bound + new tokens + draft + 1."""
    nodes: int
    gpus_per_node: int
    notes: list[str] = field(default_factory=list)

    @property
    def world(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def bytes_per_value(self) -> int:
        return 2 if self.precision == "bf16" else 4

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.grad_accum * self.student.dp

    @property
    def total_steps(self) -> int:
        return sum(steps for _, steps in self.stages)


def build_job(cfg, nodes: int, gpus_per_node: int) -> Job:
    """Resolve `cfg` (a RunConfig) against `nodes` x `gpus_per_node` ranks; RadError when the layout cannot exist."""
    from rad_megatron.distill.optim import uses_distributed_optimizer
    from rad_megatron.distill.system import check_system
    from rad_megatron.settings import build_data_config, build_model_config, build_roles, build_train_config

    for name, v in (("--nodes", nodes), ("--gpus-per-node", gpus_per_node)):
        if v < 1:
            raise RadError(f"{name} must be >= 1, got {v}")
    roles, train, data = build_roles(cfg.distill), build_train_config(cfg.distill), build_data_config(cfg.data)
    base = build_model_config(cfg.model)
    new_layers, from_probe = _new_layers(cfg, base)
    student_model = replace(base, layout=[MAMBA if i in new_layers else kind for i, kind in enumerate(base.layout)])
    t = cfg.distill.teacher
    teacher_model = build_model_config(t, "config.distill.teacher") if (t.arch or t.config or t.hf or t.ckpt) else base
    if teacher_model.vocab_size != base.vocab_size:
        raise RadError(f"the teacher's vocabulary ({teacher_model.vocab_size}) differs from the student's "
                       f"({base.vocab_size}); distillation streams log-probabilities over one shared vocabulary")
    check_system(cfg.system, roles, data.seq_len)  # what the trainer would refuse, refused here in the same words
    student, teacher = _sides(cfg, roles, student_model, teacher_model, nodes * gpus_per_node)
    probe_tokens = data.seq_len + cfg.probe.max_new_tokens + cfg.probe.draft_len + 1 if from_probe else 0
    job = Job(student=student, teacher=teacher, base=base, new_layers=new_layers, layers_from_probe=from_probe,
              stages=[(s.trainable, s.steps) for s in train.stages], micro_batch=train.micro_batch_size,
              grad_accum=train.grad_accum, seq_len=data.seq_len, eval_batch=train.eval_batch_size,
              top_k=train.stream.top_k, lookahead=train.stream.lookahead, temperature=train.stream.temperature,
              ce_weight=train.loss.ce, precision=cfg.system.precision, recompute=cfg.system.recompute,
              distributed_optimizer=uses_distributed_optimizer(train.optim),
              sequence_parallel=cfg.system.sequence_parallel,
              stream_value_bytes=train.stream.torch_dtype.itemsize,
              probe_tokens=probe_tokens, nodes=nodes, gpus_per_node=gpus_per_node)
    if from_probe:
        job.notes.append(f"swap.layers is unset: the probe picks {len(new_layers)} layers; planned with the first "
                         f"{len(new_layers)} attention layers {new_layers} (the earliest trainable layer keeps the "
                         f"most activations)")
    return job


def _new_layers(cfg, base: ModelConfig) -> tuple[list[int], bool]:
    attention = base.attention_layers
    if cfg.swap.layers is None:
        k = cfg.probe.k
        if not 1 <= k <= len(attention):
            raise RadError(f"probe.k={k} must be between 1 and the {len(attention)} attention layers of the model")
        return attention[:k], True
    layers = sorted(set(int(b) for b in cfg.swap.layers))
    for b in layers:
        if not 0 <= b < base.num_layers:
            raise RadError(f"swap.layers: block {b} is out of range (the model has {base.num_layers} blocks)")
        if base.layout[b] != ATTENTION:
            raise RadError(f"swap.layers: block {b} is already a Mamba layer; list attention layers only")
    return layers, False


def _sides(cfg, roles, student_model: ModelConfig, teacher_model: ModelConfig, world: int) -> tuple[Side, Side]:
    sys_ = cfg.system
    t_ranks, t_tp, s_tp = roles.teacher_ranks, roles.teacher_tp, roles.student_tp
    t_pp, s_pp = sys_.teacher_pp, sys_.student_pp
    if t_ranks < 1 or s_tp < 1 or t_tp < 1:
        raise RadError(f"distill.roles: teacher_ranks, teacher_tp and student_tp must be >= 1, got "
                       f"{t_ranks}, {t_tp}, {s_tp}")
    if t_ranks % (t_tp * t_pp):
        raise RadError(f"distill.roles.teacher_ranks={t_ranks} is not a multiple of teacher_tp x system.teacher_pp "
                       f"= {t_tp} x {t_pp}")
    students = world - t_ranks
    if students < s_tp * s_pp:
        raise RadError(f"the teacher needs {t_ranks} ranks (distill.roles.teacher_ranks) and one student replica "
                       f"needs {s_tp * s_pp} (student_tp x system.student_pp): {t_ranks + s_tp * s_pp} ranks, but the "
                       f"allocation has {world}; add nodes or lower distill.roles.teacher_ranks")
    if students % (s_tp * s_pp):
        raise RadError(f"the {students} student ranks ({world} - {t_ranks} teacher ranks) are not a multiple of "
                       f"student_tp x system.student_pp = {s_tp} x {s_pp}")
    _check_model(student_model, s_tp, s_pp, "student", "distill.roles.student_tp", "system.student_pp")
    _check_model(teacher_model, t_tp, t_pp, "teacher", "distill.roles.teacher_tp", "system.teacher_pp")
    return (Side("student", student_model, s_tp, s_pp, students // (s_tp * s_pp)),
            Side("teacher", teacher_model, t_tp, t_pp, t_ranks // (t_tp * t_pp)))


def _check_model(model: ModelConfig, tp: int, pp: int, side: str, tp_field: str, pp_field: str) -> None:
    try:
        model.check_parallel(tp)
    except RadError as e:
        raise RadError(f"{side} ({tp_field}={tp}): {e}") from None
    if (2 * model.num_layers) % pp:
        raise RadError(f"{side} ({pp_field}={pp}) does not divide the {2 * model.num_layers} hybrid layers "
                       f"(2 x {model.num_layers} blocks); choose a PP size that divides it")
