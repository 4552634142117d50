"""Plan == trainer: every `system.*` setting is resolved by the one function both `rad distill` / `rad pipeline` and
`rad plan` call (distill.system), a setting the trainer cannot run is refused by both with the same line, and the
planner sizes what the trainer now runs (sequence parallelism, bf16 mixed precision, the stream's dtype)."""

import argparse
import dataclasses

import pytest
import torch

from rad_megatron.distill.roles import RoleLayout
from rad_megatron.distill.system import DTYPES, resolve_system
from rad_megatron.errors import RadError
from rad_megatron.settings import SystemSection
from tests.helpers import ROOT, rad

EXPERIMENTS = sorted((ROOT / "configs/experiments").glob("*.yaml"))
# One changed value per system.* field. A new field fails this test until the trainer resolves it and it is listed.
CHANGED = {"precision": "bf16", "recompute": "full", "student_pp": 2, "teacher_pp": 2, "sequence_parallel": True}


def test_every_system_field_changes_what_the_trainer_builds():
    assert {f.name for f in dataclasses.fields(SystemSection)} == set(CHANGED), "a system.* field the trainer ignores"
    layout = RoleLayout(teacher_ranks=4, teacher_tp=2, student_tp=2)
    base = resolve_system(SystemSection(), layout, seq_len=64)
    for name, value in CHANGED.items():
        changed = resolve_system(dataclasses.replace(SystemSection(), **{name: value}), layout, seq_len=64)
        assert changed != base, f"system.{name}={value!r} changes nothing the trainer runs"


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_configs_reach_the_trainer(path, tmp_path):
    """`rad distill`'s own setup of each experiment config: what each side builds is what the config says."""
    from rad_megatron.commands.distill import prepare_run

    args = argparse.Namespace(config=str(path), overrides=[], out=str(tmp_path / "run"), resume=False, force=False)
    cfg, system, _, _ = prepare_run(args)
    s = cfg.system
    assert system.student.dtype == system.teacher.dtype == DTYPES[s.precision]
    assert system.mixed_precision == (s.precision == "bf16")
    assert system.student.recompute == s.recompute and system.teacher.recompute == "none"
    assert (system.layout.student_pp, system.layout.teacher_pp) == (s.student_pp, s.teacher_pp)
    assert (system.student.pp, system.teacher.pp) == (s.student_pp, s.teacher_pp)
    assert system.student.sequence_parallel == (s.sequence_parallel and system.layout.student_tp > 1)
    assert system.teacher.sequence_parallel == (s.sequence_parallel and system.layout.teacher_tp > 1)
    build = system.student.options()
    assert set(build) == {"dtype", "recompute", "sequence_parallel", "pp"}  # build_model's runtime options


def test_sequence_parallel_needs_a_divisible_sequence():
    layout = RoleLayout(teacher_ranks=1, student_tp=2)
    with pytest.raises(RadError, match="data.seq_len=47 is not a multiple of 2"):
        resolve_system(SystemSection(sequence_parallel=True), layout, seq_len=47)
    assert resolve_system(SystemSection(sequence_parallel=True), layout, seq_len=48).student.sequence_parallel
    # at TP 1 there is nothing to split: accepted and off
    assert not resolve_system(SystemSection(sequence_parallel=True), RoleLayout(), seq_len=47).student.sequence_parallel


def test_plan_and_distill_refuse_the_same_setting(tmp_path):
    """`rad plan` and `rad distill` both refuse, in one line and before launching anything, what the trainer cannot
    run (here: sequence parallelism with a sequence length TP does not divide)."""
    bad = ["system.sequence_parallel=true", "distill.roles.student_tp=2", "data.seq_len=2047"]
    config = ROOT / "configs/experiments/rad_kd_8b_teacher.yaml"
    plan = rad("plan", str(config), *bad, "--nodes", "1", "--gpus-per-node", "8")
    train = rad("distill", "--config", str(config), *bad, "--out", str(tmp_path / "run"))
    want = "data.seq_len=2047 is not a multiple of 2"
    for proc, name in ((plan, "plan"), (train, "distill")):
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"rad {name}: error"), proc.stderr
        assert want in lines[0]
    assert not (tmp_path / "run").exists()


def _job(overrides):
    from rad_megatron.plan import build_job
    from rad_megatron.settings import load_run_config

    return build_job(load_run_config(ROOT / "configs/experiments/mil_50pct_70b_teacher.yaml", overrides), 4, 8)


def test_plan_models_sequence_parallel_precision_and_stream_dtype():
    from rad_megatron.plan import GPU
    from rad_megatron.plan.memory import student_memory, teacher_memory

    tp2 = ["distill.roles.student_tp=2"]
    plain, sp = _job(tp2), _job(tp2 + ["system.sequence_parallel=true"])
    a, b = student_memory(plain, 0, GPU), student_memory(sp, 0, GPU)
    assert b.activations < a.activations and b.weights == a.weights  # SP splits activations, not weights
    fp32, bf16 = _job(["system.precision=fp32"]), _job(["system.precision=bf16"])
    s32, s16 = student_memory(fp32, 0, GPU), student_memory(bf16, 0, GPU)
    assert s16.weights == s32.weights / 2 and s16.grads == s32.grads  # bf16 weights, fp32 gradient buffer
    assert s16.optimizer == pytest.approx(s32.optimizer * 3 / 2)  # + fp32 main weights beside Adam's m and v
    half = _job(["distill.train.stream.dtype=bf16"])
    assert teacher_memory(half, 0, GPU).stream < teacher_memory(bf16, 0, GPU).stream
    assert torch.bfloat16.itemsize == half.stream_value_bytes == 2


def test_take_moves_one_micro_batch_and_only_the_fields_asked():
    """Training data stays on the host; `schedule.take` is the one place a micro-batch is cut out and moved."""
    from rad_megatron.distill.schedule import take

    data = {"input_ids": torch.arange(40).view(10, 4), "labels": torch.arange(40).view(10, 4) + 1}
    b = take(data, [7, 2], "cpu", ("input_ids",))
    assert list(b) == ["input_ids"] and b["input_ids"].tolist() == [[28, 29, 30, 31], [8, 9, 10, 11]]
    assert b["input_ids"].untyped_storage().data_ptr() != data["input_ids"].untyped_storage().data_ptr()
    assert set(take(data, slice(0, 2), "cpu")) == {"input_ids", "labels"}
