"""Per-rank memory of a distillation job, in bytes: weights, gradients, optimizer state, activations, the logits and
loss workspace, KV/SSM caches and the teacher stream's buffers, and the peak they combine into.

Weights are in the run's precision. Gradients and Adam states exist for trainable parameters only (targeted
distillation trains few): gradients in fp32 in Megatron DDP's buffer (GPU) or in the parameter dtype (plain torch);
Adam keeps m and v in fp32, plus fp32 master weights under bf16, sharded over data-parallel replicas by the
distributed optimizer. Activations are `plan.activations` per layer, for the micro-batches a pipeline stage holds
(1F1B: min(pp - stage, grad_accum)), from the first trainable layer on. The logits workspace is what our vocab-parallel
log-softmax and KL (`distill.losses`) or the teacher's `stream.teacher_targets` hold at once.

Peak: the trainer's gradients live in Megatron DDP's buffer all run, so the peak is the sum of the columns, with the
larger of three workspaces: training (activations + loss), evaluation, and the optimizer step (torch AdamW's
temporaries; none with a fused Adam). Plain-torch gradients (`Kernels.grad_buffer` False) appear in the backward
pass as activations are freed and go before the next forward, so they join the optimizer-step phase instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from rad_megatron.plan.activations import FP32, Kernels, head_acts, layer_acts
from rad_megatron.plan.job import Job, Side
from rad_megatron.plan.params import is_trainable, mamba_widths, padded_vocab, stage_parts

HEADER_VALUES = 5  # float64 header of every stream message (distill.stream)


@dataclass
class RankMemory:
    """Bytes on one rank of a group."""

    weights: float = 0.0
    grads: float = 0.0
    optimizer: float = 0.0
    activations: float = 0.0
    logits: float = 0.0
    cache: float = 0.0
    stream: float = 0.0
    peak: float = 0.0
    phase: str = ""
    """Which phase sets the peak: train | eval | optimizer | inference."""
    phases: dict = field(default_factory=dict)
    """Bytes each phase adds to what is held all run (weights, optimizer state, gradient buffer, stream)."""

    def to_dict(self) -> dict:
        return asdict(self)


def message_bytes(batch: int, seq: int, vocab: int, top_k: int, value_bytes: int = FP32) -> int:
    """One teacher -> student message: header, top-k values (stream.dtype) and int32 indices (or the whole
    vocabulary's values)."""
    width = top_k or vocab
    return HEADER_VALUES * 8 + batch * seq * width * value_bytes + (batch * seq * top_k * 4 if top_k else 0)


def sp_split(job: Job, side: Side) -> int:
    """How many ways sequence parallelism splits a side's norm and residual activations (its TP size, or 1)."""
    return side.tp if job.sequence_parallel and side.tp > 1 else 1


# ---------------------------------------------------------------------------------------------------- student
def student_memory(job: Job, stage: int, kernels: Kernels) -> RankMemory:
    """The worst training stage (by peak) of pipeline stage `stage` of a student rank."""
    return max((_student(job, stage, kernels, group) for group in {g for g, _ in job.stages}),
               key=lambda m: m.peak)


def _student(job: Job, stage: int, k: Kernels, group: str) -> RankMemory:
    side, e = job.student, job.bytes_per_value
    cfg, last = side.model, stage == side.pp - 1
    parts = stage_parts(cfg, side.tp, side.pp, stage)
    trainable = [is_trainable(p, cfg, group, job.new_layers) for p in parts]
    n_train = sum(p.params for p, t in zip(parts, trainable) if t)
    m = RankMemory(weights=e * sum(p.params for p in parts))
    m.grads = (FP32 if k.grad_buffer else e) * n_train
    shard = side.dp if job.distributed_optimizer else 1
    m.optimizer = (2 * FP32 + (FP32 if e != FP32 else 0)) * n_train / shard  # m, v (+ fp32 master weights)
    m.activations = _train_activations(job, stage, k, group)
    vl = padded_vocab(cfg, side.tp) // side.tp
    train_ws = _student_loss_bytes(job, vl, e) * job.micro_batch * job.seq_len if last else 0.0
    eval_tokens = job.eval_batch * job.seq_len
    eval_ws = (_student_eval_bytes(job, vl, e) if last else 0.0) * eval_tokens + _transient(side, stage, k, job,
                                                                                            eval_tokens)
    m.logits = max(train_ws, eval_ws)
    if last:  # lookahead posted receives + the one being consumed; int64 copy of the indices for the loss
        batch = max(job.micro_batch, job.eval_batch)
        m.stream = ((job.lookahead + 1) * message_bytes(batch, job.seq_len, cfg.vocab_size, job.top_k,
                                                        job.stream_value_bytes)
                    + 8 * batch * job.seq_len * job.top_k)
    largest = max((p.largest for p, t in zip(parts, trainable) if t), default=0)
    adam_tmp = 0.0 if k.fused_adam else 2 * FP32 * largest  # sqrt(v) and its bias-corrected copy
    fixed = m.weights + m.optimizer + m.stream
    phases = {"train": m.activations + train_ws, "eval": eval_ws}
    if k.grad_buffer:
        fixed += m.grads
        phases["optimizer"] = adam_tmp
    else:
        phases["optimizer"] = m.grads + adam_tmp
    m.phase = max(phases, key=phases.get)
    m.peak = fixed + phases[m.phase]
    m.phases = phases
    return m


# Bytes per top-k entry and token alive at once inside `distill.losses.topk_kl`: the clamped int64 indices and the bool
# in-shard mask (kept for backward), the gathered student log-probs, the teacher's probabilities and logs with the tail
# bucket, the student's exp (kept), probabilities and logs, their difference and product.
KL_BYTES_PER_ENTRY = 8 + 1 + 4 + 4 + 4 + 4 + 4 + 4 + 4 + 4


def _student_loss_bytes(job: Job, vl: int, e: int) -> float:
    """Per token: the larger of two moments of `distill_loss`. In the vocab-parallel log-softmax: the logits, their
    fp32 copy scaled by 1/T, the shifted copy, its exp (kept for backward) and the log-probabilities, over the local
    vocabulary shard. In the top-k KL: the logits, exp and log-probabilities still held, plus the KL's k-wide tensors
    (k = the whole vocabulary when top_k is 0, on every TP rank). CE at T != 1 adds a second log-softmax."""
    k = job.top_k or job.student.model.vocab_size
    extra = vl * 2 * FP32 if job.ce_weight and job.temperature != 1.0 else 0
    return max(vl * (e + 4 * FP32), vl * (e + 2 * FP32) + KL_BYTES_PER_ENTRY * k) + extra


def _student_eval_bytes(job: Job, vl: int, e: int) -> float:
    """The same without a graph: the log-softmax's exp is freed after its sum."""
    k = job.top_k or job.student.model.vocab_size
    return max(vl * (e + 3 * FP32), vl * (e + 2 * FP32) + KL_BYTES_PER_ENTRY * k)


def _train_activations(job: Job, stage: int, k: Kernels, group: str) -> float:
    """Saved activations of this pipeline stage for its in-flight micro-batches (1F1B), counting only layers at or
    after the first trainable one (before it autograd records nothing)."""
    side = job.student
    cfg, e, tokens = side.model, job.bytes_per_value, job.micro_batch * job.seq_len
    all_parts = [p for s in range(side.pp) for p in stage_parts(cfg, side.tp, side.pp, s)]
    flags = [is_trainable(p, cfg, group, job.new_layers) for p in all_parts]
    if not any(flags):
        return 0.0
    first = flags.index(True)
    offset = sum(len(stage_parts(cfg, side.tp, side.pp, s)) for s in range(stage))
    sp = sp_split(job, side)
    per_token, largest = 0.0, 0.0
    for i, p in enumerate(stage_parts(cfg, side.tp, side.pp, stage)):
        if offset + i < first or p.kind in ("embedding", "output"):
            continue
        if p.kind == "final_norm":
            acts = head_acts(cfg, e, k, sp)
            out_trains = flags[offset + i + 1] if offset + i + 1 < len(flags) else False
            per_token += acts.total if (flags[offset + i] or out_trains) else acts.needed
            continue
        acts = layer_acts(cfg, p.kind, side.tp, job.seq_len, job.micro_batch, e, k, job.recompute, sp)
        per_token += acts.total if flags[offset + i] else acts.needed
        if job.recompute == "full":  # the layer being recomputed holds its full activations once
            full = layer_acts(cfg, p.kind, side.tp, job.seq_len, job.micro_batch, e, k, "none", sp)
            largest = max(largest, full.total)
    in_flight = min(side.pp - stage, job.grad_accum)
    return per_token * tokens * in_flight + largest * tokens


def _transient(side: Side, stage: int, k: Kernels, job: Job, tokens: int) -> float:
    """Working set of a forward pass without autograd: one layer's tensors at a time, bounded by what the layer
    would keep for backward, and the residual stream in and out."""
    cfg, e = side.model, job.bytes_per_value
    kinds = {p.kind for p in stage_parts(cfg, side.tp, side.pp, stage)} & {"attention", "mamba", "mlp"}
    batch = max(tokens // job.seq_len, 1)

    sp = sp_split(job, side)

    def per_token(kind):
        return layer_acts(cfg, kind, side.tp, job.seq_len, batch, e, k, "none", sp).total

    return (max((per_token(kind) for kind in kinds), default=0.0) + 2 * e * cfg.hidden_size / sp) * tokens


# ---------------------------------------------------------------------------------------------------- teacher
def teacher_memory(job: Job, stage: int, kernels: Kernels) -> RankMemory:
    """A teacher rank: weights, a forward pass without autograd, `teacher_targets`' workspace and sends in flight."""
    side, e = job.teacher, job.bytes_per_value
    cfg, last = side.model, stage == side.pp - 1
    parts = stage_parts(cfg, side.tp, side.pp, stage)
    batch = max(job.micro_batch, job.eval_batch)
    tokens = batch * job.seq_len
    m = RankMemory(weights=e * sum(p.params for p in parts))
    pipeline_sends = e * cfg.hidden_size * tokens * (side.pp - 1 - stage) if side.pp > 1 else 0.0
    m.activations = _transient(side, stage, kernels, job, tokens) + pipeline_sends
    if last:
        vl, v = padded_vocab(cfg, side.tp) // side.tp, padded_vocab(cfg, side.tp)
        per_token = e * vl + (e * v if side.tp > 1 else 0) + (FP32 * v if e != FP32 else 0) + FP32 * v
        per_token += 2 * FP32 * v if job.temperature != 1.0 else 0  # logits / T and a second log-softmax
        m.logits = per_token * tokens
        m.stream = (job.lookahead + 1) * message_bytes(batch, job.seq_len, cfg.vocab_size, job.top_k,
                                                       job.stream_value_bytes)
    m.phase = "inference"
    m.peak = m.weights + max(m.activations, m.logits) + m.stream
    return m


# ---------------------------------------------------------------------------------------------------- probe
def probe_memory(job: Job, kernels: Kernels) -> RankMemory:
    """The probe phase of `rad pipeline` (every rank, TP 1, one prompt at a time): the base model, its KV cache and
    Mamba states (plus one snapshot for speculative rollback), a prefill and its logits."""
    cfg, e, n = job.base, job.bytes_per_value, job.probe_tokens
    parts = stage_parts(cfg, 1, 1, 0)
    m = RankMemory(weights=e * sum(p.params for p in parts))
    kv = 2 * e * n * cfg.num_kv_heads * cfg.kv_channels * len(cfg.attention_layers)
    w = mamba_widths(cfg)
    ssm = (e * w.conv * w.d_conv + FP32 * w.heads * w.head_dim * w.state) * len(cfg.mamba_layers)
    m.cache = kv + 2 * ssm
    probe_side = Side("probe", cfg, 1, 1, 1)
    m.activations = _transient(probe_side, 0, kernels, _with_seq(job, n), n)
    m.logits = (e + FP32) * padded_vocab(cfg, 1) * n
    m.phase = "inference"
    m.peak = m.weights + m.cache + max(m.activations, m.logits)
    return m


def _with_seq(job: Job, seq: int) -> Job:
    from dataclasses import replace

    return replace(job, seq_len=seq)
