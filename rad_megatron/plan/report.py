"""A job's plan: one row per rank group (student and teacher pipeline stages, the probe phase), FLOPs and time per
step; printed as a Markdown table, as JSON, or refused with the rank and the shortfall when a group does not fit."""

from __future__ import annotations

from dataclasses import dataclass, field

from rad_megatron.errors import RadError
from rad_megatron.plan.activations import Kernels
from rad_megatron.plan.flops import StepTime, step_time
from rad_megatron.plan.job import Job, Side
from rad_megatron.plan.memory import RankMemory, probe_memory, student_memory, teacher_memory
from rad_megatron.plan.params import total_params

GIB = 1024 ** 3
COLUMNS = ("weights", "grads", "optimizer", "activations", "logits", "cache", "stream")
HEADERS = ("weights", "grads", "optimizer", "activations", "logits/loss", "KV/SSM cache", "stream")


@dataclass
class Row:
    """One rank group: every rank in it holds `memory`."""

    group: str
    ranks: int
    memory: RankMemory
    hint: str
    """What to change when it does not fit."""


@dataclass
class Plan:
    job: Job
    kernels: Kernels
    gpu_mem_gib: float
    reserve_gib: float
    mfu: float
    peak_tflops: float
    rows: list[Row] = field(default_factory=list)
    time: StepTime | None = None

    @property
    def usable_bytes(self) -> float:
        return (self.gpu_mem_gib - self.reserve_gib) * GIB


def make_plan(job: Job, kernels: Kernels, gpu_mem_gib: float, reserve_gib: float = 2.0, mfu: float = 0.4,
              peak_tflops: float = 989.0) -> Plan:
    for name, v in (("--gpu-mem-gib", gpu_mem_gib), ("--mfu", mfu), ("--peak-tflops", peak_tflops)):
        if not v > 0:
            raise RadError(f"{name} must be > 0, got {v}")
    if not 0 <= reserve_gib < gpu_mem_gib or mfu > 1:
        raise RadError(f"need 0 <= --reserve-gib < --gpu-mem-gib and --mfu <= 1, got {reserve_gib}, "
                       f"{gpu_mem_gib}, {mfu}")
    plan = Plan(job, kernels, gpu_mem_gib, reserve_gib, mfu, peak_tflops)
    s, t = job.student, job.teacher
    for stage in range(s.pp):
        plan.rows.append(Row(_name("student", s, stage), s.tp * s.dp, student_memory(job, stage, kernels),
                             "lower distill.train.micro_batch_size, set system.recompute, or raise "
                             "distill.roles.student_tp / system.student_pp"))
    for stage in range(t.pp):
        plan.rows.append(Row(_name("teacher", t, stage), t.tp * t.dp, teacher_memory(job, stage, kernels),
                             "raise distill.roles.teacher_tp or system.teacher_pp, or lower the batch sizes"))
    if job.probe_tokens:
        plan.rows.append(Row("probe (before distill, TP 1)", job.world, probe_memory(job, kernels),
                             "set swap.layers to skip the probe, or lower data.seq_len"))
    plan.time = step_time(job, mfu, peak_tflops * 1e12)
    return plan


def _name(role: str, side: Side, stage: int) -> str:
    return f"{role} pp{stage}" if side.pp > 1 else role


def check_fits(plan: Plan) -> None:
    """RadError naming the rank group that needs the most beyond the GPU, and by how much."""
    over = [(r.memory.peak - plan.usable_bytes, r) for r in plan.rows if r.memory.peak > plan.usable_bytes]
    if not over:
        return
    short, row = max(over, key=lambda x: x[0])
    raise RadError(f"does not fit: a {row.group} rank needs {_gib(row.memory.peak)} at its peak "
                   f"({row.memory.phase}) but a GPU has {_gib(plan.usable_bytes)} usable ({plan.gpu_mem_gib:g} GiB - "
                   f"{plan.reserve_gib:g} GiB reserved), short by {_gib(short)}; {row.hint}")


def _gib(b: float) -> str:
    return f"{b / GIB:.2f} GiB" if b >= GIB / 10 or b == 0 else f"{b / 2 ** 20:.1f} MiB"


def _describe(model, side: Side) -> str:
    kinds = f"{len(model.attention_layers)} attention + {len(model.mamba_layers)} Mamba blocks"
    return (f"{total_params(model) / 1e9:.2f} B params ({kinds}), TP {side.tp} x PP {side.pp} x DP {side.dp} "
            f"= {side.ranks} ranks")


def format_plan(plan: Plan, title: str = "") -> str:
    j, t = plan.job, plan.time
    lines = [f"rad plan{': ' + title if title else ''} on {j.nodes} node(s) x {j.gpus_per_node} GPUs "
             f"({plan.gpu_mem_gib:g} GiB, {plan.reserve_gib:g} GiB reserved), kernels {plan.kernels.name}, "
             f"{j.precision}, recompute {j.recompute}, sequence parallel {'on' if j.sequence_parallel else 'off'}, "
             f"distributed optimizer {'on' if j.distributed_optimizer else 'off'}",
             "",
             f"- student: {_describe(j.student.model, j.student)}; new Mamba layers {j.new_layers}; stages "
             + ", ".join(f"{g} x {n} steps" for g, n in j.stages),
             f"- teacher: {_describe(j.teacher.model, j.teacher)}",
             f"- batch: {j.micro_batch} x {j.grad_accum} accum x {j.student.dp} DP = {j.global_batch} sequences "
             f"x {j.seq_len} tokens = {t.tokens} tokens/step; stream top-k {j.top_k or 'full vocabulary'}, "
             f"lookahead {j.lookahead}"]
    lines += [f"- note: {n}" for n in j.notes]
    lines += ["", "| rank group | ranks | " + " | ".join(HEADERS) + " | peak | fits |",
              "|---" * (len(HEADERS) + 4) + "|"]
    for r in plan.rows:
        cells = [_gib(getattr(r.memory, c)) for c in COLUMNS]
        free = plan.usable_bytes - r.memory.peak
        fits = f"yes ({_gib(free)} free)" if free >= 0 else f"NO (short by {_gib(-free)})"
        lines.append(f"| {r.group} | {r.ranks} | " + " | ".join(cells)
                     + f" | {_gib(r.memory.peak)} ({r.memory.phase}) | {fits} |")
    lines += ["", f"FLOPs per step: student {t.student_flops / 1e15:.2f} PFLOP (model"
              + (f"; {t.student_executed_flops / 1e15:.2f} executed with recompute)" if j.recompute != "none" else ")")
              + f", teacher {t.teacher_flops / 1e15:.2f} PFLOP",
              f"Step time at MFU {plan.mfu:g} of {plan.peak_tflops:g} TFLOP/s per GPU: student {t.student_s:.2f} s, "
              f"teacher {t.teacher_s:.2f} s -> {t.step_s:.2f} s/step ({t.bound}-bound), {t.tokens / t.step_s:,.0f} "
              f"tokens/s; {j.total_steps} steps -> {_duration(j.total_steps * t.step_s)}"]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.1f} days"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds:.0f} s"


def plan_json(plan: Plan) -> dict:
    t = plan.time
    return {"usable_bytes": plan.usable_bytes, "kernels": plan.kernels.name,
            "rows": [{"group": r.group, "ranks": r.ranks, **r.memory.to_dict()} for r in plan.rows],
            "student_flops": t.student_flops, "student_executed_flops": t.student_executed_flops,
            "teacher_flops": t.teacher_flops, "tokens": t.tokens, "student_s": t.student_s, "teacher_s": t.teacher_s,
            "step_s": t.step_s, "bound": t.bound, "fits": all(r.memory.peak <= plan.usable_bytes for r in plan.rows)}
