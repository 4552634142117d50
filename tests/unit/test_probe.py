"""The probe's pieces: cost model, top-k rule, search bookkeeping, and the CLI's bad-input errors."""

import json

import pytest
import torch

from rad_megatron.config import ModelConfig
from rad_megatron.errors import RadError
from rad_megatron.model import build_model
from rad_megatron.probe.cost import cost_model_throughput, draft_cost, flops_costs
from rad_megatron.probe.run import run_probe
from rad_megatron.probe.score import ProbeSettings
from rad_megatron.probe.search import top_k_set
from tests.helpers import rad, tiny_hf_llama

CFG = dict(vocab_size=64, hidden_size=64, intermediate_size=96, num_layers=4, num_attention_heads=4, num_kv_heads=2)


def test_cost_model():
    cfg = ModelConfig(**CFG, layout=["attention", "mamba", "attention", "attention"])
    costs = flops_costs(cfg)
    assert set(costs["attention"]) == {"0", "2", "3"} and 0 < sum(costs["attention"].values()) < 1
    assert draft_cost(costs, []) == 1.0 and draft_cost(costs, [0, 2]) < draft_cost(costs, [0])
    # all K accepted with a free draft: K + 1 tokens per forward
    free = {"attention": {"0": 1.0}}
    assert cost_model_throughput(4, 4, free, [0]) == pytest.approx(5.0)
    assert cost_model_throughput(0, 4, costs, []) == pytest.approx(1 / 5)


def test_top_k_rule():
    x = {"x000": 0.1, "x002": 0.9, "x005": 0.5, "x007": 0.7}
    assert top_k_set(x, [0, 2, 5, 7], 2) == [2, 7]
    assert top_k_set(x, [0, 2, 5, 7], 4) == [0, 2, 5, 7]


def test_run_probe_records_everything(dist):
    torch.manual_seed(0)
    model = build_model(ModelConfig(**CFG)).eval()
    prompts = [[1, 2, 3, 4], [9, 8, 7]]
    report = run_probe(model, prompts, k=2, trials=5, settings=ProbeSettings(draft_len=3, max_new_tokens=8))
    assert [t["skip"] for t in report["per_layer"]] == [[0], [1], [2], [3]]
    assert len(report["trials"]) == 5 and all(len(t["skip"]) == 2 for t in report["trials"])
    best = max(t["throughput"] for t in report["trials"])
    assert report["chosen"]["throughput"] == best
    assert report["baseline_no_skip"]["acceptance"] == 1.0
    assert report["trials"][0]["skip"] == report["top_k_by_per_layer"], "the first trial is the per-layer top-k"
    assert report["baseline_no_skip"]["expected_acceptance"] == pytest.approx(1.0, abs=1e-5)
    assert all(0 < t["expected_acceptance"] <= 1 + 1e-9 and t["expected_throughput"] > 0 for t in report["per_layer"])
    ranked = sorted(report["per_layer"], key=lambda t: (-t["throughput"], -t["expected_acceptance"], t["skip"]))
    assert report["per_layer_ranking"] == [t["skip"][0] for t in ranked]  # alpha breaks throughput ties
    assert set(report["redundancy"]) == {"kl", "bi", "attn_sim", "calibration"}
    assert set(report["redundancy"]["bi"]) == {"0", "1", "2", "3"}
    with pytest.raises(RadError, match="--k 5 must be between 1 and the number of attention layers \\(4\\)"):
        run_probe(model, prompts, k=5, trials=2, settings=ProbeSettings())


def _err(proc, text):
    assert proc.returncode == 2, proc.stderr[-1500:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("rad probe")]
    assert len(lines) == 1 and text in lines[0], proc.stderr[-1500:]


def test_probe_cli_end_to_end_and_bad_input(tmp_path):
    hf = tiny_hf_llama(tmp_path / "hf", seed=1, num_hidden_layers=3)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"question": q}) for q in ["2+2?", "name a cat", "hi"]))
    out = tmp_path / "probe.json"
    proc = rad("probe", "--hf", str(hf), "--prompts", str(prompts), "--k", "2", "--trials", "3", "--max-new-tokens",
               "6", "--draft-len", "3", "--no-eos", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert len(report["per_layer"]) == 3 and len(report["trials"]) == 3 and len(report["chosen"]["skip"]) == 2
    assert out.with_suffix(".png").stat().st_size > 10_000
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    _err(rad("probe", "--hf", str(hf), "--prompts", str(empty), "--out", str(tmp_path / "x.json")),
         "no prompts found")
    _err(rad("probe", "--hf", str(hf), "--prompts", str(prompts), "--k", "4", "--out", str(tmp_path / "x.json")),
         "--k 4 must be between 1 and the number of attention layers (3)")
    _err(rad("probe", "--hf", str(hf), "--prompts", str(prompts), "--out", str(out)), "refusing to overwrite")
    assert not (tmp_path / "x.json").exists()
