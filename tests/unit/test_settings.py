"""YAML run configs: `base:` inheritance, dotted overrides (lists too), unknown keys refused with a suggestion."""

import pytest

from rad_megatron.errors import RadError
from rad_megatron.settings import build_train_config, load_run_config


def test_inheritance_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "probe: {k: 4, trials: 8}\ndistill:\n  train:\n    stages: [{name: a, steps: 5, lr: 0.001}]\n"
        "    grad_accum: 2\nout: runs/base\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nprobe: {trials: 20}\nout: runs/child\n")
    cfg = load_run_config(tmp_path / "child.yaml", ["distill.train.stages.0.lr=0.01", "swap.layers=[3,7]"])
    assert (cfg.probe.k, cfg.probe.trials, cfg.out) == (4, 20, "runs/child")
    assert cfg.swap.layers == [3, 7]
    train = build_train_config(cfg.distill)
    assert train.stages[0].lr == 0.01 and train.grad_accum == 2 and train.total_steps == 5


def test_bad_keys_are_named(tmp_path):
    (tmp_path / "c.yaml").write_text("probe: {trails: 3}\n")
    with pytest.raises(RadError, match=r"unknown config key 'config.probe.trails' \(did you mean 'trials'\?\)"):
        load_run_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("distill: {train: {stages: [{name: a, stepz: 3}]}}\n")
    with pytest.raises(RadError, match=r"config.distill.train.stages\[0\].stepz' \(did you mean 'steps'\?\)"):
        build_train_config(load_run_config(tmp_path / "d.yaml").distill)
    with pytest.raises(RadError, match="not an index"):
        load_run_config(tmp_path / "d.yaml", ["distill.train.stages.3.lr=1"])
    with pytest.raises(RadError, match="does not exist"):
        load_run_config(tmp_path / "missing.yaml")


def test_override_that_is_not_yaml_names_the_override_and_the_quoting(tmp_path):
    from rad_megatron.settings import apply_overrides

    with pytest.raises(RadError) as err:
        apply_overrides({"accuracy": {}}, ["accuracy.runs=[*-k4-*]"])  # `*` starts a YAML alias
    assert "override 'accuracy.runs=[*-k4-*]'" in str(err.value) and '[\\"*-k4-*\\"]' not in str(err.value)
    assert """'accuracy.runs=["*-k4-*"]'""" in str(err.value)
    assert apply_overrides({"accuracy": {}}, ['accuracy.runs=["*-k4-*"]'])["accuracy"]["runs"] == ["*-k4-*"]
