"""`rad plan`: parameter and FLOP counts against built models and published numbers, refusals of layouts that cannot
exist or fit (one line naming the rank and the shortfall), and the CLI."""

import json
from pathlib import Path

import pytest

from rad_megatron.config import ModelConfig
from rad_megatron.errors import RadError
from rad_megatron.plan import GPU, build_job, check_fits, make_plan
from rad_megatron.plan.flops import forward_flops, train_flops
from rad_megatron.plan.params import GROUPS, is_trainable, model_parts, total_params
from rad_megatron.settings import load_run_config, read_yaml
from tests.helpers import rad

ROOT = Path(__file__).resolve().parents[2]
MIL = ROOT / "configs" / "experiments" / "mil_50pct_70b_teacher.yaml"
TINY = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_layers=4, num_attention_heads=4, num_kv_heads=2)


@pytest.mark.parametrize("variant", [dict(tie_word_embeddings=True), dict(mamba={"num_groups": 2, "d_xb": 64})])
def test_parameter_counts_match_the_built_model(dist, variant):
    from rad_megatron.distill.targeting import apply_targeting
    from rad_megatron.model import build_model

    cfg = ModelConfig(**TINY, layout=["attention", "mamba", "attention", "mamba"], **variant)
    model = build_model(cfg)
    assert total_params(cfg) == sum(p.numel() for p in model.parameters())
    for group in GROUPS:  # which parameters each distillation stage trains, as distill.targeting selects them
        trained = sum(p.numel() for p in apply_targeting(model, group, [3]))
        assert sum(p.params for p in model_parts(cfg, 1) if is_trainable(p, cfg, group, [3])) == trained, group


def test_stream_message_size_matches_the_stream():
    from rad_megatron.distill.stream import message_bytes as stream_bytes
    from rad_megatron.plan.memory import message_bytes

    for k in (0, 64):
        assert message_bytes(2, 128, 49152, k) == stream_bytes(2, 128, 49152, k)


def test_flops_match_megatrons_formula_and_targeting():
    llama8b = ModelConfig.from_dict(read_yaml(ROOT / "configs/models/llama3.1-8b.yaml"))
    llama70b = ModelConfig.from_dict(read_yaml(ROOT / "configs/models/llama3.1-70b.yaml"))
    hybrid = ModelConfig.from_dict({**read_yaml(ROOT / "configs/models/llama3.1-8b.yaml"),
                                    "layout": ["mamba", "attention"] * 16})
    # perf.md 2c, derived there with Megatron's num_floating_point_operations: GFLOP per token at 2K and 8K
    assert forward_flops(llama8b, 2048) / 1e9 == pytest.approx(15.5, rel=5e-3)
    assert forward_flops(llama8b, 8192) / 1e9 == pytest.approx(17.2, rel=5e-3)
    assert forward_flops(llama70b, 2048) / 1e9 == pytest.approx(141.7, rel=5e-3)
    assert train_flops(hybrid, 2048, "all", [], "none")[0] / 1e9 == pytest.approx(47.6, rel=5e-3)
    full = train_flops(llama8b, 2048, "all", [], "none")
    assert full[0] == pytest.approx(3 * forward_flops(llama8b, 2048), rel=1e-12) and full[1] == full[0]
    late, early = (train_flops(hybrid, 2048, "new_mamba", [b], "none")[0] for b in (30, 0))
    assert forward_flops(hybrid, 2048) < late < early < full[0]  # backward only from the first trained layer
    layers_fwd = forward_flops(hybrid, 2048) - 2 * hybrid.hidden_size * hybrid.vocab_size  # without the logits
    assert train_flops(hybrid, 2048, "all", [], "full")[1] == pytest.approx(full_h := 3 * forward_flops(hybrid, 2048)
                                                                           + layers_fwd, rel=1e-12), full_h


def _job(*overrides, nodes=4):
    return build_job(load_run_config(MIL, list(overrides)), nodes, 8)


def test_refuses_a_layout_that_does_not_fit():
    # MIL's baseline with twice the micro-batch: the student's activations, full-vocabulary KL workspace and stream
    # buffers double past 80 GiB; full recompute and a top-64 stream bring it back
    plan = make_plan(_job("distill.train.micro_batch_size=4", "distill.train.grad_accum=2"), GPU, 80)
    student = next(r for r in plan.rows if r.group == "student")
    short = (student.memory.peak - plan.usable_bytes) / 2**30
    assert short > 0 and all(r.memory.peak <= plan.usable_bytes for r in plan.rows if r is not student)
    with pytest.raises(RadError, match=rf"does not fit: a student rank needs {student.memory.peak / 2**30:.2f} GiB "
                                       rf"at its peak \(train\) .* short by {short:.2f} GiB; lower "
                                       rf"distill.train.micro_batch_size"):
        check_fits(plan)
    check_fits(make_plan(_job("distill.train.micro_batch_size=4", "distill.train.grad_accum=2",
                              "system.recompute=full", "distill.train.stream.top_k=64"), GPU, 80))


def test_refuses_layouts_that_cannot_exist():
    with pytest.raises(RadError, match=r"the teacher needs 24 ranks .* needs 1 .*: 25 ranks, but the allocation has 8"):
        _job(nodes=1)
    with pytest.raises(RadError, match=r"student \(distill.roles.student_tp=5\): parallel.tp=5 does not divide "
                                       r"model.num_attention_heads=24"):
        _job("distill.roles.teacher_ranks=22", "distill.roles.teacher_tp=2", "distill.roles.student_tp=5")
    with pytest.raises(RadError, match=r"teacher \(system.teacher_pp=3\) does not divide the 160 hybrid layers"):
        _job("system.teacher_pp=3", "distill.roles.teacher_tp=8", "distill.roles.teacher_ranks=24")
    with pytest.raises(RadError, match=r"teacher_ranks=20 is not a multiple of teacher_tp x system.teacher_pp"):
        _job("distill.roles.teacher_ranks=20")
    with pytest.raises(RadError, match=r"teacher's vocabulary \(49152\) differs from the student's \(128256\)"):
        _job(f"distill.teacher.arch={ROOT / 'configs/models/smollm2-135m.yaml'}")
    with pytest.raises(RadError, match=r"swap.layers: block 0 is already a Mamba layer"):
        build_job(load_run_config(ROOT / "configs/experiments/rad_self_distill_3b.yaml", ["swap.layers=[0]"]), 1, 8)


def test_cli_prints_the_table_and_refuses_with_one_line():
    ok = rad("plan", str(ROOT / "configs/experiments/rad_kd_8b_teacher.yaml"), "--nodes", "1", "--json")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "| student | 4 |" in ok.stdout and "| teacher | 4 |" in ok.stdout and "s/step" in ok.stdout
    plan = json.loads(ok.stdout.strip().splitlines()[-1])
    assert plan["fits"] and plan["bound"] in ("student", "teacher") and plan["step_s"] > 0
    bad = rad("plan", str(MIL), "--nodes", "4", "distill.train.micro_batch_size=4")
    errors = [ln for ln in bad.stderr.splitlines() if ln.startswith("rad plan: error:")]
    assert bad.returncode == 2 and len(errors) == 1 and "does not fit: a student rank" in errors[0], bad.stderr[-2000:]
    assert "| student | 8 |" in bad.stdout and "NO (short by" in bad.stdout
