"""TP=2 (two gloo processes) equals TP=1 for hybrids with mixed attention/Mamba layers (MIL and standard Mamba-2
layouts, logits within 1e-5), and the swap initialisations hold per TP rank."""

import json

import torch

from rad_megatron.config import ModelConfig
from rad_megatron.model import build_model, forward_logits
from tests.helpers import ROOT, torchrun

BASE = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_layers=4, num_attention_heads=4, num_kv_heads=2,
            tie_word_embeddings=False)


def _case(cfg, seed):
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    with torch.no_grad():  # random norms and non-trivial SSM parameters, so a misplaced shard shows
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", "layernorm.weight", "mixer.D", "mixer.dt_bias")):
                p.uniform_(0.5, 1.5)
    ids = torch.randint(0, 128, (2, 23), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        logits = forward_logits(model, ids)
    state = {k: v.clone() for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    return {"config": cfg.to_dict(), "state": state, "ids": ids, "logits": logits}


def test_tp2_equals_tp1_for_hybrids(dist, tmp_path):
    layout = ["mamba", "attention", "mamba", "attention"]
    cases = {
        "mil_hybrid": _case(ModelConfig(**BASE, layout=layout, mamba={"chunk_size": 8}), 1),
        "standard_hybrid": _case(ModelConfig(**BASE, layout=layout, mamba={"d_xb": 64, "chunk_size": 8}), 2),
        "llama_swap": {**_case(ModelConfig(**BASE), 3), "swap_block": 2},
        "llama_swap_standard": {**_case(ModelConfig(**BASE, mamba={"d_xb": 64}), 4), "swap_block": 1},
    }
    torch.save(cases, tmp_path / "cases.pt")
    out = tmp_path / "result.json"
    torchrun(2, ROOT / "tests/distributed/workers/hybrid_tp.py", str(out), str(tmp_path / "cases.pt"))
    res = json.loads(out.read_text())
    print(res)
    for name in cases:
        assert res[f"{name}.logits_diff"] <= 1e-5, res
    for name in ("llama_swap", "llama_swap_standard"):
        assert res[f"{name}.mil_rows_equal"] and res[f"{name}.rad_zero_equals_skip"], res
