"""The probe under parallelism: TP=2 gives the same acceptance numbers, alpha, redundancy heuristics and chosen set as
TP=1 (greedy, fixed seed); DP=2 evaluates two candidates per round, with per-layer results identical to DP=1."""

import json

import pytest
import torch

from rad_megatron.config import ModelConfig
from rad_megatron.model import build_model
from rad_megatron.probe.run import run_probe
from rad_megatron.probe.score import ProbeSettings
from tests.helpers import ROOT, torchrun

DETERMINISTIC = ("skip", "acceptance", "mean_accepted", "mean_drafted", "throughput")


def _same(a, b):
    return [{k: t[k] for k in DETERMINISTIC} for t in a] == [{k: t[k] for k in DETERMINISTIC} for t in b]


def test_probe_tp2_and_dp2_match_tp1(dist, tmp_path):
    torch.manual_seed(3)
    cfg = ModelConfig(vocab_size=64, hidden_size=64, intermediate_size=96, num_layers=5, num_attention_heads=4,
                      num_kv_heads=2, layout=["attention", "attention", "mamba", "attention", "attention"],
                      mamba={"chunk_size": 8})
    model = build_model(cfg).eval()
    case = {"config": cfg.to_dict(), "k": 2, "trials": 4, "prompts": [[1, 2, 3, 4], [9, 8, 7], [5, 5, 6]],
            "settings": {"draft_len": 3, "max_new_tokens": 10},
            "state": {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}}
    torch.save(case, tmp_path / "case.pt")
    ref = run_probe(model, case["prompts"], k=2, trials=4, settings=ProbeSettings(**case["settings"]), seed=0)

    torchrun(2, ROOT / "tests/distributed/workers/probe_dist.py", str(tmp_path / "tp2.json"),
             str(tmp_path / "case.pt"), "2")
    tp2 = json.loads((tmp_path / "tp2.json").read_text())
    assert tp2["settings"]["tp"] == 2 and tp2["settings"]["dp"] == 1
    assert _same(tp2["per_layer"], ref["per_layer"]) and _same(tp2["trials"], ref["trials"])
    assert tp2["chosen"]["skip"] == ref["chosen"]["skip"]
    alpha = [t["expected_acceptance"] for t in ref["per_layer"]]
    assert [t["expected_acceptance"] for t in tp2["per_layer"]] == pytest.approx(alpha, abs=1e-5)
    for name in ("kl", "bi", "attn_sim"):  # TP-gathered logits, full hidden states: equal up to rounding
        assert tp2["redundancy"][name] == pytest.approx(ref["redundancy"][name], rel=1e-4, abs=1e-6)

    torchrun(2, ROOT / "tests/distributed/workers/probe_dist.py", str(tmp_path / "dp2.json"),
             str(tmp_path / "case.pt"), "1")
    dp2 = json.loads((tmp_path / "dp2.json").read_text())
    assert dp2["settings"]["dp"] == 2
    assert _same(dp2["per_layer"], ref["per_layer"])
    assert len(dp2["trials"]) == 4 and dp2["trials"][0]["skip"] == ref["trials"][0]["skip"]
