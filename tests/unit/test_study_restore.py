"""`rad study --restore`: a published report's runs become finished runs of a fresh folder (as the runs wrote them),
a report made with other settings is refused before anything is written, existing runs are kept, and a finished run
whose layers differ from what the evidence picks stops the study."""

import json

import pytest

from rad_megatron.errors import RadError
from rad_megatron.study.config import StudyConfig, StudyData, StudyTrain
from rad_megatron.study.restore import read_report, restore_study, restored_lines
from rad_megatron.study.run import _check_same_layers
from rad_megatron.study.train import RunSpec

CFG = StudyConfig(train=StudyTrain(steps=2, micro_batch_size=2, eval_every=1), data=StudyData(seq_len=8, held_out=3))


def _run(spec: RunSpec, sweep=False, steps=2, held=3):
    rows = [] if sweep else [{**spec.fields(), "kind": "eval", "step": 0, "tokens": 0, "example_kl": [0.5] * held}]
    for s in range(1, steps + 1):
        rows.append({**spec.fields(), "kind": "train", "step": s, "tokens": 16 * s, "loss": 1.0 / s, "seconds": 0.1})
        if not sweep:
            rows.append({**spec.fields(), "kind": "eval", "step": s, "tokens": 16 * s, "example_kl": [0.1 * s] * held})
    return [{**r, "phase": "lr sweep"} if sweep else r for r in rows]


def _report(tmp_path, rows, probe=None):
    prefix = tmp_path / "pub" / "conv"
    prefix.parent.mkdir(exist_ok=True)
    prefix.with_name("conv.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if probe is not None:
        prefix.with_name("conv_probe.json").write_text(json.dumps(probe))
    return prefix


RAD = RunSpec("rad", 4, "mil", 0, (1, 2, 3, 4), 1e-3)
UNI = RunSpec("uniform", 4, "mil", 0, (0, 7, 14, 21), 1e-3)


def test_restore_writes_each_run_as_it_was_and_keeps_existing_runs(tmp_path):
    rows = _run(RAD) + _run(UNI) + _run(RAD, sweep=True)
    probe = {"sources": ["x"], "per_layer": [{"skip": [0], "throughput": 1.0}],
             "seconds": {"per_layer": 100.0}, "searches": {"4": {"chosen": {"skip": [1]}, "seconds": {"search": 20.0}}}}
    prefix = _report(tmp_path, rows, probe)
    study = tmp_path / "study"
    (study / "runs" / UNI.name).mkdir(parents=True)
    (study / "runs" / UNI.name / "done.json").write_text(json.dumps({"seconds": 5.0}))  # computed here: kept
    assert restore_study(study, CFG, read_report(prefix, CFG), log=lambda m: None) == pytest.approx(120.0)
    metrics = (study / "runs" / RAD.name / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(m) for m in metrics] == _run(RAD)
    sweep = [json.loads(m) for m in (study / "runs" / "sweep" / RAD.name / "metrics.jsonl").read_text().splitlines()]
    assert sweep == [{k: v for k, v in r.items() if k != "phase"} for r in _run(RAD, sweep=True)]
    done = json.loads((study / "runs" / RAD.name / "done.json").read_text())
    assert done["seconds"] is None and done["layers"] == [1, 2, 3, 4] and done["final"] == _run(RAD)[-1]
    assert json.loads((study / "runs" / UNI.name / "done.json").read_text()) == {"seconds": 5.0}
    assert "sources" not in json.loads((study / "probe_per_layer.json").read_text())
    assert "1 grid runs and 1 LR-sweep runs made earlier" in restored_lines(study)[0] and "probe evidence too" in \
        restored_lines(study)[0]
    again = restore_study(study, CFG, read_report(prefix, CFG), log=lambda m: None)
    assert again is None  # nothing new, the probe file kept


@pytest.mark.parametrize("bad, field", [(dict(steps=3), "3 training steps (the config has train.steps=2)"),
                                        (dict(held=4), "another held-out size (the config has data.held_out=3)")])
def test_restore_refuses_a_report_made_with_other_settings(tmp_path, bad, field):
    prefix = _report(tmp_path, _run(UNI) + _run(RAD, **bad))
    with pytest.raises(RadError, match=rf"run {RAD.name} has {field.replace('(', '[(]').replace(')', '[)]')}"):
        read_report(prefix, CFG)
    with pytest.raises(RadError, match="does not exist; give a report's path without the suffix"):
        read_report(tmp_path / "nowhere", CFG)


def test_a_finished_run_with_other_layers_stops_the_study(tmp_path):
    (tmp_path / "done.json").write_text(json.dumps(RAD.fields()))
    _check_same_layers(tmp_path, RAD)
    with pytest.raises(RadError, match=r"layers \[1, 2, 3, 4\], but the probe evidence now picks \[1, 2, 3, 5\]"):
        _check_same_layers(tmp_path, RunSpec("rad", 4, "mil", 0, (1, 2, 3, 5), 1e-3))
