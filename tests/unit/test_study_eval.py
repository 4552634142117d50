"""The study's held-out evaluation (answer positions only through the output layer) equals the trainer's loss terms
computed on full logits, per example and overall."""

import math

import pytest
import torch

from rad_megatron.config import ModelConfig
from rad_megatron.distill.losses import LossWeights, distill_loss
from rad_megatron.distill.stream import StreamConfig, teacher_targets
from rad_megatron.model import build_model
from rad_megatron.model.forward import forward_logits
from rad_megatron.study.train import evaluate

V = 64


def test_answer_only_evaluation_equals_full_logits(dist):
    torch.manual_seed(0)
    cfg = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_layers=3, num_attention_heads=4, num_kv_heads=2)
    teacher, student = build_model(ModelConfig(**cfg)).eval(), build_model(ModelConfig(**cfg)).eval()
    ids = torch.randint(0, V, (5, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(5, 12)
    for r, (a, b) in enumerate([(3, 12), (5, 9), (0, 0), (2, 4), (7, 12)]):  # row 2: answer cut off entirely
        mask[r, a:b] = 1
    held = {"input_ids": ids[:, :-1], "labels": ids[:, 1:], "loss_mask": mask[:, 1:]}
    targets = []
    for i in range(0, 5, 3):
        b = {k: v[i:i + 3] for k, v in held.items()}
        targets.append(teacher_targets(teacher, b["input_ids"], b["labels"], b["loss_mask"], StreamConfig(top_k=8)))
    got = evaluate(student, held, targets, 3, V)
    assert got["example_tokens"] == held["loss_mask"].sum(1).tolist()
    for r in range(5):
        m = held["loss_mask"][r:r + 1]
        if not m.any():
            assert got["example_kl"][r] == 0.0
            continue
        vals, idx = targets[r // 3][0][r % 3:r % 3 + 1], targets[r // 3][1][r % 3:r % 3 + 1]
        logits = forward_logits(student, held["input_ids"][r:r + 1])
        _, terms = distill_loss(logits, vals, idx.long(), held["labels"][r:r + 1], m, LossWeights(fkl=1.0, ce=1.0),
                                None, 0, V)
        assert got["example_kl"][r] / m.sum().item() == pytest.approx(terms["fkl"], rel=1e-5)
        assert got["example_nll"][r] / m.sum().item() == pytest.approx(terms["ce"], rel=1e-5)
    n = held["loss_mask"].sum().item()
    assert got["heldout_kl"] == pytest.approx(sum(got["example_kl"]) / n)
    assert got["heldout_ppl"] == pytest.approx(math.exp(sum(got["example_nll"]) / n))
