"""Layer-selection strategies on synthetic probe evidence, and the study's folder and config rules."""

import pytest

from rad_megatron.errors import RadError
from rad_megatron.study.strategies import ProbeEvidence, select_layers

LAYERS = list(range(10))
# layer b's probe score falls with b except two bumps; skip KL rises with b except layer 9
SCORES = {b: 1.0 - 0.05 * b for b in LAYERS} | {7: 0.99, 2: 0.1}
SKIP_KL = {b: 0.1 * (b + 1) for b in LAYERS} | {9: 0.01}


BI = {b: 0.5 - 0.04 * b for b in LAYERS}  # block influence falls with depth (ShortGPT's finding)
ATTN = {b: 0.3 if b % 3 else 0.01 * b for b in LAYERS}  # attention similarity: layers 0, 3, 6, 9 low


def evidence():
    return ProbeEvidence(scores=dict(SCORES), heuristics={"kl": dict(SKIP_KL), "bi": dict(BI), "attn_sim": dict(ATTN)},
                         searched={3: [1, 4, 7]})


def test_each_strategy_picks_what_it_promises():
    ev = evidence()
    assert select_layers("rad", 3, LAYERS, ev) == [1, 4, 7]
    assert select_layers("worst", 3, LAYERS, ev) == [2, 8, 9]  # lowest scores: 0.1, 0.6, 0.55
    assert select_layers("kl", 3, LAYERS, ev) == [0, 1, 9]  # smallest skip KL: 0.01, 0.1, 0.2
    assert select_layers("bi", 3, LAYERS, ev) == [7, 8, 9]  # lowest block influence
    assert select_layers("attn-sim", 3, LAYERS, ev) == [0, 3, 6]  # 0.0, 0.03, 0.06 (then 9 at 0.09)
    assert select_layers("uniform", 3, LAYERS) == [0, 3, 6]  # MIL: every n-th starting at the first
    assert select_layers("uniform", 5, LAYERS) == [0, 2, 4, 6, 8]
    assert select_layers("uniform", 10, LAYERS) == LAYERS
    assert select_layers("uniform-keep0", 3, LAYERS) == [2, 5, 9]  # the end of each third: floor((i+1)*10/3)-1
    assert select_layers("uniform-keep0", 5, LAYERS) == [1, 3, 5, 7, 9]  # same spacing as uniform, 0 kept
    assert select_layers("uniform-keep0", 4, list(range(30))) == [6, 14, 21, 29]


def test_worst_breaks_score_ties_by_alpha():
    ev = ProbeEvidence(scores={b: 1.0 for b in LAYERS}, alpha={b: 0.9 + 0.001 * ((7 * b) % 10) for b in LAYERS})
    assert select_layers("worst", 2, LAYERS, ev) == [0, 3]  # alpha 0.900 (layer 0), 0.901 (layer 3)


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


def test_missing_evidence_is_a_rad_error():
    with pytest.raises(RadError, match="needs the probe"):
        select_layers("rad", 3, LAYERS)
    with pytest.raises(RadError, match="searched set for k=4"):
        select_layers("rad", 4, LAYERS, evidence())
    with pytest.raises(RadError, match="no per-layer skip KL on its greedy continuation"):
        select_layers("kl", 2, LAYERS, ProbeEvidence(scores=dict(SCORES)))
    with pytest.raises(RadError, match="no per-layer block influence"):
        select_layers("bi", 2, LAYERS, ProbeEvidence(scores=dict(SCORES)))
    with pytest.raises(RadError, match="between 1 and"):
        select_layers("uniform", 11, LAYERS)
    with pytest.raises(RadError, match="not one of"):
        select_layers("best", 2, LAYERS)


def test_evidence_merges_reports():
    base = {"settings": {"objective": "acceptance"},
            "per_layer": [{"skip": [b], "acceptance": SCORES[b], "throughput": 0.0, "expected_acceptance": 0.5}
                          for b in LAYERS],
            "chosen": {"skip": [4, 1, 7]}, "sanity": {"per_layer_skip_kl": {str(b): v for b, v in SKIP_KL.items()}}}
    extra = {"redundancy": {"kl": {str(b): v for b, v in SKIP_KL.items()}, "calibration": {"prompts": 2}}}
    merged_study = {"searches": {"2": {"chosen": {"skip": [8, 3]}}}}
    ev = ProbeEvidence.from_reports([base, {"chosen": {"skip": [1, 2, 3, 4, 5]}}, extra, merged_study])
    assert ev.scores == SCORES and ev.objective == "acceptance" and ev.alpha == {b: 0.5 for b in LAYERS}
    assert ev.heuristics == {"kl": SKIP_KL}  # prompt-token skip KL (`sanity`) is not the kl strategy's evidence
    assert ev.searched == {3: [1, 4, 7], 5: [1, 2, 3, 4, 5], 2: [3, 8]}


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


def test_study_folder_from_before_a_new_config_field_continues(tmp_path):
    """A folder whose marker predates a field (e.g. model.cache, added with the teacher cache) continues while the
    field holds None; a value there is another setting."""
    import json

    from rad_megatron.study.config import StudyConfig
    from rad_megatron.study.run import _check_folder

    out = tmp_path / "study"
    cfg = StudyConfig(out=str(out))
    _check_folder(out, cfg, force=False)
    marker = json.loads((out / "study.json").read_text())
    del marker["comparable"]["model"]["cache"]
    (out / "study.json").write_text(json.dumps(marker))
    _check_folder(out, cfg, force=False)
    (out / "study.json").write_text(json.dumps(marker))
    cfg.model.cache = "elsewhere"
    with pytest.raises(RadError, match="other model settings"):
        _check_folder(out, cfg, force=False)


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

