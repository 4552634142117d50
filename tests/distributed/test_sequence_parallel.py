"""Megatron's sequence parallelism with TP=2 (two gloo ranks, one torchrun) equals TP=1 on tiny hybrids with
attention, Mamba-2 (MIL and standard layouts) and MLP layers: the loss and every gradient after Megatron's gradient
finalisation (fp32, <= 1e-5), forward_logits and the teacher's top-k at a length TP does not divide (padded)."""

import json

import torch

from rad_megatron.config import ModelConfig
from rad_megatron.distill.stream import StreamConfig, teacher_targets
from rad_megatron.model import build_model, forward_logits
from rad_megatron.model.forward import position_ids_for
from tests.helpers import ROOT, torchrun

BASE = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_layers=2, num_attention_heads=4, num_kv_heads=2,
            tie_word_embeddings=False, layout=["mamba", "attention"])


def _case(cfg, seed):
    torch.manual_seed(seed)
    model = build_model(cfg)
    with torch.no_grad():  # random norms and SSM parameters, so a misplaced shard or a missed reduction shows
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", "layernorm.weight", "mixer.D", "mixer.dt_bias")):
                p.uniform_(0.5, 1.5)
    g = torch.Generator().manual_seed(seed)
    ids, labels = torch.randint(0, 128, (2, 24), generator=g), torch.randint(0, 128, (2, 24), generator=g)
    odd_ids, odd_labels = torch.randint(0, 128, (2, 23), generator=g), torch.randint(0, 128, (2, 23), generator=g)
    state = {k: v.clone() for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    with torch.no_grad():
        logits = forward_logits(model.eval(), odd_ids)
        vals, idx, _, _ = teacher_targets(model, odd_ids, odd_labels, torch.ones(2, 23), StreamConfig(top_k=8))
    loss = model.train()(input_ids=ids, position_ids=position_ids_for(ids), attention_mask=None,
                         labels=labels).mean()
    loss.backward()
    return {"config": cfg.to_dict(), "state": state, "ids": ids, "labels": labels, "loss": loss.item(),
            "grads": {n: p.grad.clone() for n, p in model.named_parameters()}, "odd_ids": odd_ids,
            "odd_labels": odd_labels, "logits": logits, "topk_values": vals, "topk_indices": idx}


def test_sequence_parallel_tp2_equals_tp1(dist, tmp_path):
    cases = {"mil_hybrid": _case(ModelConfig(**BASE, mamba={"chunk_size": 8}), 1),
             "standard_hybrid": _case(ModelConfig(**BASE, mamba={"d_xb": 64, "chunk_size": 8}), 2)}
    torch.save(cases, tmp_path / "cases.pt")
    out = tmp_path / "result.json"
    torchrun(2, ROOT / "tests/distributed/workers/sequence_parallel.py", str(out), str(tmp_path / "cases.pt"))
    res = json.loads(out.read_text())
    print(json.dumps(res, indent=1))
    for name, r in res.items():
        assert r["sequence_parallel"] and r["mixer_linears_sp"], r
        assert r["sp_marked_norms"] == 5, r  # 2 input/pre-MLP norms x 2 blocks + final
        assert r["loss_diff"] <= 1e-5 and r["grad_diff"] <= 1e-5, r
        assert r["norm_grad_diff_before_finalize"] > 1e-3, r  # the finalisation is what makes the norms right
        assert r["odd_length"] % 2 == 1 and r["logits_diff"] <= 1e-5, r
        assert r["topk_values_fp32"] and r["topk_values_diff"] <= 1e-5 and r["topk_indices_equal"], r
        assert r["decode_refused"], r
