"""The study report's arithmetic on synthetic curves: tokens to stay below a target, ratios, bootstrap intervals over
seeds and held-out examples, verdicts, the LR choice, the report's tables and files."""

import json
import math

import numpy as np
import pytest

from rad_megatron.study.metrics import (compare, draws, final_values, gather_curves, ratios, resampled,
                                        tokens_to_stay)

TOKENS = [0, 256, 512, 768]


def rows(strategy, per_seed, seeds=(0, 1), k=4, init="mil", counts=(10, 30)):
    """Eval rows whose per-example KL sums give held-out KL `per_seed[seed][t]` on every example."""
    out = []
    for seed in seeds:
        for t, kl in zip(TOKENS, per_seed[seed]):
            out.append({"kind": "eval", "strategy": strategy, "k": k, "init": init, "seed": seed, "tokens": t,
                        "heldout_kl": kl, "example_kl": [kl * c for c in counts],
                        "example_nll": [math.log(2.0) * c for c in counts], "example_tokens": list(counts)})
    return out


def test_tokens_to_stay_below_interpolates_and_ignores_a_dip():
    tokens = np.array(TOKENS, dtype=float)
    curves = np.array([[1.0, 0.6, 0.2, 0.2],    # crosses 0.4 halfway from 256 to 512, stays
                       [0.2, 0.9, 0.3, 0.3],    # starts below, pushed above (rad_zero's gate), back at 0.3
                       [0.1, 0.2, 0.3, 0.35],   # never above 0.4
                       [1.0, 0.3, 0.5, 0.6]])   # dips below, ends above: not reached
    got = tokens_to_stay(tokens, curves, np.full(4, 0.4))
    assert got[0] == pytest.approx(384.0) and got[1] == pytest.approx(256 + 256 * 0.5 / 0.6)
    assert got[2] == 0.0 and math.isnan(got[3])
    r = ratios(np.array([768.0, 768.0, 768.0, 0.0]), got)
    assert r[0] == pytest.approx(2.0) and math.isinf(r[2]) and r[3] == 0.0


def test_gather_and_resample_weight_examples_by_tokens_and_average_seeds():
    data = rows("rad", {0: [1.0, 0.5, 0.4, 0.3], 1: [3.0, 1.5, 1.2, 0.9]})
    data[0]["example_kl"] = [0.0, 4.0 * 30]  # seed 0, step 0: example 0 at KL 0, example 1 at KL 4
    c = gather_curves(data)[("rad", 4, "mil")]
    assert c.seeds == [0, 1] and c.kl.shape == (2, 4, 2) and list(c.tokens) == TOKENS
    kl = resampled(c, draws(2, 2, 0))[0]
    assert kl[0] == pytest.approx(((0 + 120) / 40 + 3.0) / 2)  # token-weighted within a seed, then seed mean
    assert kl[1:] == pytest.approx([1.0, 0.8, 0.6])
    assert resampled(c, draws(2, 2, 0), "ppl")[0] == pytest.approx([2.0] * 4)
    ws, we = draws(3, 5, 100)
    assert ws.shape == (101, 3) and (ws.sum(1) == 3).all() and (we.sum(1) == 5).all() and (we[0] == 1).all()


def test_compare_is_paired_and_a_clear_gap_is_a_verdict():
    base = rows("uniform", {0: [2.0, 1.6, 1.2, 1.0], 1: [2.2, 1.7, 1.3, 1.1]})
    rad = rows("rad", {0: [1.5, 0.9, 0.7, 0.6], 1: [1.6, 1.1, 0.8, 0.7]})
    same = rows("kl", {0: [1.5, 0.9, 0.7, 0.6], 1: [1.6, 1.1, 0.8, 0.7]})
    curves = gather_curves(base + rad + same)
    c = compare(curves[("rad", 4, "mil")], curves[("uniform", 4, "mil")], "uniform", 300)
    assert c.seeds == [0, 1] and c.t_base == pytest.approx(768.0)
    # target 1.05: rad's mean curve 1.55, 1.0, ... crosses it at 256 * 0.5 / 0.55
    assert c.t_rad == pytest.approx(256 * 0.5 / 0.55)
    assert c.ratio[0] == pytest.approx(768 / (256 * 0.5 / 0.55)) and c.ratio[1] > 1 and c.verdict == "win"
    assert c.diff[0] == pytest.approx(0.4) and c.diff[1] > 0
    tie = compare(curves[("rad", 4, "mil")], curves[("kl", 4, "mil")], "kl", 300)
    assert tie.ratio == (1.0, 1.0, 1.0) and tie.verdict == "tie" and tie.diff == (0.0, 0.0, 0.0)
    f = final_values(curves[("rad", 4, "mil")], 300)
    assert f["final_kl"][0] == pytest.approx(0.65) and f["final_kl"][1] <= 0.65 <= f["final_kl"][2]
    assert f["final_ppl"] == pytest.approx((2.0, 2.0, 2.0))


def test_lr_choice_uses_the_training_loss_tail(tmp_path):
    from rad_megatron.study.config import StudyConfig, StudyTrain
    from rad_megatron.study.plan import choose_lrs, grid_specs, sweep_specs, tail_loss

    assert tail_loss([{"kind": "train", "step": s, "loss": v} for s, v in enumerate([9, 9, 9, 1, 3, 5, 7, 2], 1)]) \
        == pytest.approx(4.5)  # last quarter: steps 7, 8
    assert math.isinf(tail_loss([{"kind": "train", "step": 1, "loss": float("nan")}]))
    cfg = StudyConfig(strategies=["rad", "uniform"], ks=[4, 8], inits=["mil"], seeds=[0, 1],
                      train=StudyTrain(lr_sweep={"mil": [1e-3, 3e-3]}))
    sweep = sweep_specs(cfg, lambda s, k, seed: (k, seed))
    assert [(s.strategy, s.k, s.seed, s.lr) for s in sweep] == [("rad", 8, 0, 1e-3), ("rad", 8, 0, 3e-3),
                                                                ("uniform", 8, 0, 1e-3), ("uniform", 8, 0, 3e-3)]
    for spec, loss in zip(sweep, [0.5, 0.4, 0.3, float("nan")]):
        (tmp_path / spec.name).mkdir()
        (tmp_path / spec.name / "metrics.jsonl").write_text(json.dumps({"kind": "train", "step": 1, "loss": loss}))
        if spec.strategy == "rad":
            (tmp_path / spec.name / "done.json").write_text("{}")
    chosen = choose_lrs(cfg, sweep, tmp_path)
    assert chosen == {("rad", "mil"): {"lr": 3e-3, "tail_loss": {1e-3: 0.5, 3e-3: 0.4}}}  # uniform not finished
    grid = grid_specs(cfg, lambda s, k, seed: (k, seed), chosen)
    assert [s.name for s in grid] == ["rad-k4-mil-s0-lr3e-03", "rad-k8-mil-s0-lr3e-03", "rad-k4-mil-s1-lr3e-03",
                                      "rad-k8-mil-s1-lr3e-03"]


def test_report_tables_and_files(tmp_path):
    from rad_megatron.study.config import StudyConfig, StudyTrain
    from rad_megatron.study.report import write_report

    data = rows("uniform", {0: [2.0, 1.6, 1.2, 1.0], 1: [2.2, 1.7, 1.3, 1.1]}) + \
        rows("rad", {0: [1.5, 0.9, 0.7, 0.6], 1: [1.6, 1.1, 0.8, 0.7]}) + \
        rows("random", {0: [0.3, 0.2, 0.2, 0.2], 1: [0.4, 0.3, 0.2, 0.2]})
    cfg = StudyConfig(strategies=["rad", "uniform", "random"], ks=[4], inits=["mil"], out=str(tmp_path / "s"),
                      report_dir=str(tmp_path / "docs"), report_name="conv", bootstrap=200, notes=["no GPU here"],
                      train=StudyTrain(steps=3, eval_every=1, lr_sweep={"mil": [1e-3, 3e-3]}))
    grid = [{"run": f"{s}-k4-mil-s{seed}", "strategy": s, "k": 4, "init": "mil", "seed": seed,
             "layers": [1, 2] if s == "rad" else [0, 3]} for s in cfg.strategies for seed in (0, 1)]
    plan = {"grid": grid, "grid_planned": 6, "grid_done": 6, "sweep_planned": 6, "sweep_done": 6,
            "lr": [{"strategy": "rad", "init": "mil", "lr": 3e-3, "tail_loss": {1e-3: 0.5, 3e-3: 0.4}}]}
    probe = {"settings": {"objective": "throughput"}, "per_layer_ranking": [2, 1, 3, 0],
             "per_layer": [{"skip": [b], "throughput": 1 - b / 10, "expected_acceptance": 0.9} for b in range(4)],
             "redundancy": {"bi": {str(b): 0.1 * b for b in range(4)}}}
    (tmp_path / "s").mkdir()
    md = write_report(tmp_path / "s", cfg, "rad study --config x", plan, probe, ["p.json"], data, {},
                      {"probe": 60.0, "grid runs": 600.0})
    text = md.read_text()
    assert "k=4, mil: RAD is faster than uniform; slower than random." in text
    assert "RAD faster in 1, level in 0, slower in 1" in text
    assert "Per baseline, over the (k, init) cells: uniform 1 faster / 0 level / 0 slower; random 0 faster / 0 " \
        "level / 1 slower." in text
    assert "| 4 | mil | uniform | 0,1 | 1.050 [" in text and "| RAD faster |" in text
    assert "| rad | mil | 1e-03 | 3e-03 | 3e-03 |" not in text and "| rad | mil | 0.5000 | **0.4000** | 3e-03 |" in text
    assert "| 2 | 0.800 | 0.9000 | 1 |  | 0.2000 |  | rad@k4 |" in text
    assert "every 256 tokens (and at 0) on 2 held-out examples" in text and "total 0.18 h" in text
    assert "## Limits\n\n* no GPU here\n" in text
    for f in ("conv.md", "conv.png", "conv.jsonl", "conv_probe.json"):
        assert (tmp_path / "docs" / f).read_bytes() == (tmp_path / "s" / f).read_bytes()
    assert (tmp_path / "docs" / "conv.png").read_bytes()[:4] == b"\x89PNG"
    assert len((tmp_path / "docs" / "conv.jsonl").read_text().splitlines()) == len(data)


def test_accuracy_summary_averages_scored_seeds_per_strategy():
    from rad_megatron.study.tables import accuracy_lines

    plan = [{"run": f"{s}-k4-mil-s{seed}", "strategy": s, "k": 4, "init": "mil", "seed": seed}
            for seed in (0, 1) for s in ("rad", "uniform")]
    acc = {"teacher": {"n": 200, "flexible": 0.03, "strict": 0.0},
           "rad-k4-mil-s0": {"n": 200, "flexible": 0.02, "strict": 0.0},
           "rad-k4-mil-s1": {"n": 200, "flexible": 0.04, "strict": 0.01},
           "uniform-k4-mil-s0": {"n": 200, "flexible": 0.01, "strict": 0.0}}
    text = "\n".join(accuracy_lines(acc, plan, ["rad", "uniform"]))
    assert "the teacher and 3 of 4 final students" in text
    assert "| 4 | mil | 0.030 (2) | 0.010 (1) |" in text  # rad: mean of two seeds; uniform: one scored
    assert f"= {math.sqrt(0.07 / 3 * (1 - 0.07 / 3) / 200):.3f} at the students' mean p = 0.023" in text
    assert text.index("| teacher | 200 | 0.030 | 0.000 |") < text.index("| rad-k4-mil-s0 |")


def test_report_of_a_folder_without_finished_grid_runs(tmp_path):
    from rad_megatron.study.config import StudyConfig
    from rad_megatron.study.report import write_report

    cfg = StudyConfig(strategies=["rad", "uniform"], ks=[4], inits=["mil"], report_name="conv", bootstrap=10)
    plan = {"grid": [], "grid_planned": 2, "grid_done": 0, "sweep_planned": 0, "sweep_done": 0, "lr": []}
    md = write_report(tmp_path, cfg, "rad study", plan, {}, [], [], {}, {})
    assert "grid runs finished: 0 of 2" in md.read_text() and "No (k, init) has finished" in md.read_text()
    assert (tmp_path / "conv.png").read_bytes()[:4] == b"\x89PNG"
