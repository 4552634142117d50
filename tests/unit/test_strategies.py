"""Layer-selection strategies on synthetic probe evidence, and the convergence arithmetic the study reports."""

import math

import pytest

from rad_megatron.errors import RadError
from rad_megatron.study.metrics import fmt_values, speedup, tokens_to_target
from rad_megatron.study.strategies import STRATEGIES, ProbeEvidence, select_layers

LAYERS = list(range(10))
# layer b's probe score falls with b except two bumps; skip KL rises with b except layer 9
SCORES = {b: 1.0 - 0.05 * b for b in LAYERS} | {7: 0.99, 2: 0.1}
SKIP_KL = {b: 0.1 * (b + 1) for b in LAYERS} | {9: 0.01}


def evidence():
    return ProbeEvidence(scores=dict(SCORES), skip_kl=dict(SKIP_KL), searched={3: [1, 4, 7]})


def test_each_strategy_picks_what_it_promises():
    ev = evidence()
    assert select_layers("rad", 3, LAYERS, ev) == [1, 4, 7]
    assert select_layers("worst", 3, LAYERS, ev) == [2, 8, 9]  # lowest scores: 0.1, 0.6, 0.55
    assert select_layers("kl", 3, LAYERS, ev) == [0, 1, 9]  # smallest skip KL: 0.01, 0.1, 0.2
    assert select_layers("uniform", 3, LAYERS) == [0, 3, 6]  # MIL: every n-th starting at the first
    assert select_layers("uniform", 5, LAYERS) == [0, 2, 4, 6, 8]
    assert select_layers("uniform", 10, LAYERS) == LAYERS


def test_uniform_on_30_layers_matches_mil_interleaving():
    # MIL's 25%-Mamba Llama-3 config replaces layers 0, 4, 8, ..., 28 of 32
    assert select_layers("uniform", 8, list(range(32))) == list(range(0, 32, 4))
    picked = select_layers("uniform", 4, list(range(30)))
    assert picked == [0, 7, 15, 22] and len(set(picked)) == 4


def test_uniform_and_random_only_pick_attention_layers():
    attn = [0, 2, 3, 5, 8, 9, 11]  # some layers already Mamba
    assert set(select_layers("uniform", 3, attn)) <= set(attn)
    for seed in range(5):
        got = select_layers("random", 4, attn, seed=seed)
        assert len(got) == 4 and set(got) <= set(attn) and got == sorted(got)


def test_random_is_seeded():
    a = select_layers("random", 4, list(range(30)), seed=3)
    assert a == select_layers("random", 4, list(range(30)), seed=3)
    assert any(select_layers("random", 4, list(range(30)), seed=s) != a for s in range(4, 10))


def test_strategies_are_distinct_on_the_real_probe():
    import json
    from pathlib import Path

    report = json.loads((Path(__file__).resolve().parents[2] / "docs/results/probe_smollm2.json").read_text())
    ev = ProbeEvidence.from_reports([report])
    sets = {s: tuple(select_layers(s, 4, list(range(30)), ev, seed=0)) for s in STRATEGIES}
    assert sets["rad"] == tuple(report["chosen"]["skip"])
    assert len(set(sets.values())) == len(STRATEGIES)
    assert set(sets["worst"]).isdisjoint(sets["rad"])


def test_missing_evidence_is_a_rad_error():
    with pytest.raises(RadError, match="needs the probe"):
        select_layers("rad", 3, LAYERS)
    with pytest.raises(RadError, match="searched set for k=4"):
        select_layers("rad", 4, LAYERS, evidence())
    with pytest.raises(RadError, match="no per-layer skip KL"):
        select_layers("kl", 2, LAYERS, ProbeEvidence(scores=dict(SCORES)))
    with pytest.raises(RadError, match="between 1 and"):
        select_layers("uniform", 11, LAYERS)
    with pytest.raises(RadError, match="not one of"):
        select_layers("best", 2, LAYERS)


def test_evidence_merges_reports():
    base = {"settings": {"objective": "acceptance"},
            "per_layer": [{"skip": [b], "acceptance": SCORES[b], "throughput": 0.0} for b in LAYERS],
            "chosen": {"skip": [4, 1, 7]}, "sanity": {"per_layer_skip_kl": {str(b): v for b, v in SKIP_KL.items()}}}
    ev = ProbeEvidence.from_reports([base, {"chosen": {"skip": [1, 2, 3, 4, 5]}}])
    assert ev.scores == SCORES and ev.skip_kl == SKIP_KL and ev.objective == "acceptance"
    assert ev.searched == {3: [1, 4, 7], 5: [1, 2, 3, 4, 5]}


def test_tokens_to_target_interpolates():
    curve = [(0, 1.0), (100, 0.6), (200, 0.2), (300, 0.25)]
    assert tokens_to_target(curve, 0.4) == pytest.approx(150.0)
    assert tokens_to_target(curve, 0.6) == pytest.approx(100.0)
    assert tokens_to_target(curve, 1.5) == 0.0
    assert tokens_to_target(curve, 0.1) is None
    assert speedup(150.0, 50.0) == pytest.approx(3.0)
    assert math.isinf(speedup(150.0, 0.0)) and speedup(0.0, 0.0) == 1.0 and speedup(150.0, None) is None


def test_fmt_values():
    assert fmt_values([1.0, 3.0], ".2f") == "2.00 ± 1.41"
    assert fmt_values([2.0, math.inf], ".2f") == "2.00 / ∞"
    assert fmt_values([None, 5.0], ".0f", 640) == "> 640 / 5"


def test_tokens_to_target_trained_ignores_the_start():
    cliff = [(0, 0.2), (100, 0.9), (200, 0.5), (300, 0.3)]  # starts below target, jumps up, recovers
    assert tokens_to_target(cliff, 0.4) == 0.0
    assert tokens_to_target(cliff, 0.4, trained=True) == pytest.approx(250.0)
    assert tokens_to_target([(0, 0.2), (100, 0.35)], 0.4, trained=True) == 100


def test_study_folder_refuses_other_settings_and_force_keeps_the_probe(tmp_path):
    from rad_megatron.study.config import StudyConfig
    from rad_megatron.study.run import _check_folder

    out = tmp_path / "study"
    cfg = StudyConfig(out=str(out))
    _check_folder(out, cfg, force=False)
    (out / "probe_search_k8.json").write_text("{}")
    (out / "runs" / "rad-k4-mil-s0").mkdir(parents=True)
    _check_folder(out, cfg, force=False)  # same settings: continue
    cfg.seeds = [0, 1, 2]  # the grid may grow
    _check_folder(out, cfg, force=False)
    cfg.train.steps += 1
    with pytest.raises(RadError, match="other train settings"):
        _check_folder(out, cfg, force=False)
    assert (out / "runs").is_dir()
    _check_folder(out, cfg, force=True)
    assert not (out / "runs").exists() and (out / "probe_search_k8.json").is_file()
    cfg.probe.search_trials += 1
    _check_folder(out, cfg, force=True)
    assert not (out / "probe_search_k8.json").exists()


def test_init_lr_replaces_lr_per_init_and_bad_entries_are_refused(tmp_path):
    from rad_megatron.study.config import load_study_config

    cfg = tmp_path / "study.yaml"
    cfg.write_text("train: {lr: 3.0e-4, init_lr: {mil: 1.0e-3}}\n")
    c = load_study_config(cfg)
    assert c.train.lr_for("mil") == 1e-3 and c.train.lr_for("rad_zero") == 3e-4
    with pytest.raises(RadError, match=r"config.train.init_lr: keys \['zero'\] must be among mil, rad_zero, random"):
        load_study_config(cfg, ["train.init_lr={zero: 1.0e-3}"])
    with pytest.raises(RadError, match=r"config.train.init_lr.mil=-0.001: must be a number > 0"):
        load_study_config(cfg, ["train.init_lr={mil: -1.0e-3}"])
    # YAML 1.1 reads 1e-3 as a string; a float field takes it as the number it spells
    assert load_study_config(cfg, ["train.init_lr={mil: 1e-3}"]).train.lr_for("mil") == 1e-3


def test_gpu_study_is_the_cpu_study_with_a_larger_budget():
    from tests.helpers import ROOT

    from rad_megatron.study.config import load_study_config

    cpu = load_study_config(ROOT / "configs/study_smollm2.yaml")
    gpu = load_study_config(ROOT / "configs/study_smollm2_gpu.yaml")
    assert (gpu.strategies, gpu.ks, gpu.inits, gpu.seeds) == (cpu.strategies, cpu.ks, cpu.inits, cpu.seeds)
    assert gpu.probe == cpu.probe and gpu.train.init_lr == cpu.train.init_lr and gpu.train.top_k == cpu.train.top_k
    tokens = [c.train.steps * c.train.micro_batch_size * c.data.seq_len for c in (cpu, gpu)]
    assert tokens[1] >= 16 * tokens[0] and gpu.data.held_out > cpu.data.held_out and gpu.accuracy.runs is None
    assert gpu.out != cpu.out and gpu.report_dir != cpu.report_dir  # never overwrites the CPU study or its report
    with pytest.raises(RadError, match="no `quick:` mapping"):
        load_study_config(ROOT / "configs/study_smollm2_gpu.yaml", quick=True)


def test_publish_copies_the_report_whole(tmp_path):
    from rad_megatron.study.report import publish

    out, docs = tmp_path / "study", tmp_path / "docs" / "results"
    out.mkdir()
    files = {"convergence.md": b"# report", "convergence.png": b"\x89PNG", "convergence.jsonl": b"{}\n"}
    for name, data in files.items():
        (out / name).write_bytes(data)
    publish(out, docs)
    assert sorted(p.name for p in docs.iterdir()) == ["convergence.jsonl", "convergence.md", "convergence.png"]
    assert (docs / "convergence.png").read_bytes() == b"\x89PNG"


def test_rad_against_each_baseline_uses_that_baselines_final_kl():
    from rad_megatron.study.metrics import summarize
    from rad_megatron.study.report import rad_vs_lines

    def run(strategy, kls):
        return [{"kind": "eval", "strategy": strategy, "k": 4, "init": "mil", "seed": 0, "tokens": 100 * i,
                 "heldout_kl": kl, "heldout_ppl": 1.0} for i, kl in enumerate(kls)]

    rows = run("rad", [1.0, 0.5, 0.3]) + run("random", [1.0, 0.8, 0.4]) + run("uniform", [2.0, 1.5, 1.2])
    rad = {c.strategy: c for c in summarize(rows, reference="random")}["rad"]
    assert rad.tokens == [pytest.approx(150.0)]  # crosses random's final 0.4 halfway from 0.5 (100) to 0.3 (200)
    assert rad.ratio == [pytest.approx(200 / 150)]
    lines = rad_vs_lines(rows, ["rad", "uniform", "random"])
    assert [ln.split("|")[3].strip() for ln in lines[2:]] == ["uniform", "random"]
    assert lines[3].split("|")[9].strip() == "1.33 ± 0.00"


def test_accuracy_summary_averages_scored_seeds_per_strategy():
    from rad_megatron.study.report import accuracy_lines

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
