"""Distillation losses: the TP-aware forms equal plain torch references; top-k with k = V equals the full KL."""

import pytest
import torch
import torch.nn.functional as F

from rad_megatron.distill.losses import LossWeights, distill_loss, full_kl, topk_kl, vocab_parallel_log_softmax

V = 50


def _logits(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 7, V, generator=g) * 2, torch.randn(2, 7, V, generator=g) * 2


def _ref_fkl(t, s, T=1.0):
    p, logq = F.log_softmax(t / T, -1), F.log_softmax(s / T, -1)
    return (p.exp() * (p - logq)).sum(-1)


def test_log_softmax_and_full_kl_match_torch(dist):
    t, s = _logits(0)
    assert torch.allclose(vocab_parallel_log_softmax(s, None), F.log_softmax(s, -1), atol=1e-6)
    logp, logq = F.log_softmax(t, -1), F.log_softmax(s, -1)
    assert torch.allclose(full_kl(logq, logp, None), _ref_fkl(t, s), atol=1e-6)
    rev = (logq.exp() * (logq - logp)).sum(-1)
    assert torch.allclose(full_kl(logq, logp, None, reverse=True), rev, atol=1e-6)


@pytest.mark.parametrize("reverse", [False, True])
def test_topk_with_k_equal_vocab_is_full_kl(dist, reverse):
    t, s = _logits(1)
    logp, logq = F.log_softmax(t, -1), F.log_softmax(s, -1)
    vals, idx = logp.topk(V, -1)
    assert torch.allclose(topk_kl(logq, vals, idx, None, 0, reverse), full_kl(logq, logp, None, reverse), atol=1e-5)


def test_topk_tail_is_a_lower_bound_and_tightens(dist):
    t, s = _logits(2)
    logp, logq = F.log_softmax(t, -1), F.log_softmax(s, -1)
    full = full_kl(logq, logp, None)
    prev = None
    for k in (1, 5, 20, 49):
        vals, idx = logp.topk(k, -1)
        kl = topk_kl(logq, vals, idx, None, 0)
        assert (kl <= full + 1e-5).all()
        if prev is not None:
            assert (kl >= prev - 1e-5).all(), "more buckets never lower the KL (data processing inequality)"
        prev = kl


def test_mixed_loss_masks_prompt_tokens_and_scales_by_t2(dist):
    t, s = _logits(3)
    s.requires_grad_(True)
    labels = torch.randint(0, V, (2, 7))
    mask = torch.ones(2, 7)
    mask[:, :3] = 0  # prompt tokens
    T = 2.0
    vals, idx = F.log_softmax(t / T, -1).topk(V, -1)
    loss, terms = distill_loss(s, vals, idx, labels, mask, LossWeights(fkl=1.0, rkl=0.5, ce=0.25, temperature=T),
                               None, 0)
    m = mask.bool()
    fkl = _ref_fkl(t, s.detach(), T)[m].mean()
    logp, logq = F.log_softmax(t / T, -1), F.log_softmax(s.detach() / T, -1)
    rkl = (logq.exp() * (logq - logp)).sum(-1)[m].mean()
    ce = F.cross_entropy(s.detach()[m], labels[m])
    assert terms["fkl"] == pytest.approx(fkl.item(), abs=1e-5)
    assert terms["rkl"] == pytest.approx(rkl.item(), abs=1e-5)
    assert terms["ce"] == pytest.approx(ce.item(), abs=1e-5)
    assert loss.item() == pytest.approx((T * T * (fkl + 0.5 * rkl) + 0.25 * ce).item(), abs=1e-4)
    loss.backward()
    assert s.grad[:, :3].abs().max() == 0 and s.grad[:, 3:].abs().max() > 0
