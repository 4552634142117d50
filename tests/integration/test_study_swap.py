"""`rad swap --strategy`: the layers a strategy picks are the ones swapped; a strategy without its probe evidence is one
line, exit 2, nothing written."""

import json

from tests.helpers import rad, tiny_hf_llama


def _probe_json(path, layers):
    # per-layer scores fall with the layer index; skip KL rises with it except for the last layer; block influence
    # is lowest for layers 1 and 2
    report = {"settings": {"objective": "throughput"},
              "per_layer": [{"skip": [b], "throughput": 1.0 - 0.1 * b} for b in layers],
              "chosen": {"skip": [1, 2]},
              "redundancy": {"kl": {str(b): (0.001 if b == layers[-1] else 0.1 * (b + 1)) for b in layers},
                             "bi": {str(b): (0.01 if b in (1, 2) else 0.5) for b in layers}}}
    path.write_text(json.dumps(report))
    return path


def test_swap_by_strategy(tmp_path):
    hf = tiny_hf_llama(tmp_path / "hf", seed=6, num_hidden_layers=4)
    probe = _probe_json(tmp_path / "probe.json", [0, 1, 2, 3])
    for strategy, want in (("kl", [0, 3]), ("bi", [1, 2])):
        out = tmp_path / strategy
        proc = rad("swap", "--hf", str(hf), "--strategy", strategy, "--k", "2", "--probe", str(probe),
                   "--init", "mil", "--out", str(out))
        assert proc.returncode == 0, proc.stderr[-2000:]
        meta = json.loads((out / "rad_meta.json").read_text())
        assert sorted(int(b) for b in meta["mamba_init"]) == want
        assert [i for i, kind in enumerate(meta["model"]["layout"]) if kind == "mamba"] == want
        assert f"picked by strategy {strategy}" in proc.stdout


def test_swap_strategy_without_probe_is_refused(tmp_path):
    out = tmp_path / "out"
    proc = rad("swap", "--hf", str(tmp_path / "unused"), "--strategy", "rad", "--k", "2", "--out", str(out))
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("rad swap")]
    assert len(lines) == 1 and "--strategy rad needs --probe" in lines[0], proc.stderr[-2000:]
    assert not out.exists()
