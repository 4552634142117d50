"""The SDPA core attention equals Megatron's DotProductAttention (its reference) on the same module: training
(causal, with gradients), cached decoding, several new tokens with the offset mask, a padding mask, grouped and plain
heads. fp32 tolerance 1e-5 absolute on O(1) outputs."""

import pytest
import torch
from megatron.core.transformer.dot_product_attention import DotProductAttention

from rad_megatron.config import ModelConfig
from rad_megatron.model import build_model
from rad_megatron.model.attention import SDPAAttention
from rad_megatron.model.forward import causal_mask

TOL = dict(atol=1e-5, rtol=1e-5)


def _core(kv_heads: int) -> SDPAAttention:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, hidden_size=64, intermediate_size=96, num_layers=2, num_attention_heads=4,
                      num_kv_heads=kv_heads, layout=["attention", "attention"])
    cores = [m for m in build_model(cfg).modules() if isinstance(m, DotProductAttention)]
    assert cores and all(type(m) is SDPAAttention for m in cores)  # the local spec builds ours
    return cores[0]


def _qkv(sq: int, sk: int, kv_heads: int, b: int = 3, requires_grad: bool = False):
    g = torch.Generator().manual_seed(sq * 100 + sk)
    q = torch.randn(sq, b, 4, 16, generator=g)
    k, v = (torch.randn(sk, b, kv_heads, 16, generator=g) for _ in range(2))
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


@pytest.mark.parametrize("kv_heads", [2, 4])
def test_training_causal_forward_and_grads(dist, kv_heads):
    core = _core(kv_heads).train()
    q, k, v = _qkv(7, 7, kv_heads, requires_grad=True)
    ours = core(q, k, v, None)
    ref = DotProductAttention.forward(core, q, k, v, None)
    assert ours.shape == ref.shape == (7, 3, 64)
    torch.testing.assert_close(ours, ref, **TOL)
    w = torch.randn_like(ref)
    grads = [torch.autograd.grad((out * w).sum(), (q, k, v)) for out in (ours, ref)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("sq,sk", [(1, 9), (3, 9)])
def test_cached_steps_match_reference_with_offset_mask(dist, sq, sk):
    core = _core(2).eval()
    q, k, v = _qkv(sq, sk, 2)
    mask = causal_mask(sq, sk - sq) if sq > 1 else None
    ref = DotProductAttention.forward(core, q, k, v, mask)
    torch.testing.assert_close(core(q, k, v, mask), ref, **TOL)
    # without an explicit mask the new tokens are aligned to the last keys, as the offset mask says
    torch.testing.assert_close(core(q, k, v, None), ref, **TOL)


def test_padding_mask(dist):
    core = _core(2).eval()
    q, k, v = _qkv(6, 6, 2)
    mask = causal_mask(6, 0).expand(3, 1, 6, 6).clone()
    mask[1, ..., 4:] = True  # row 1's last two keys are padding
    torch.testing.assert_close(core(q, k, v, mask), DotProductAttention.forward(core, q, k, v, mask), **TOL)


def test_attention_dropout_in_training_uses_the_reference(dist):
    core = _core(2).train()
    core.attention_dropout.p = 0.5
    assert core._needs_reference(None, None)
    core.eval()
    assert not core._needs_reference(None, None)


def test_cached_logits_equal_full_forward(dist):
    """Prefill (all positions or the last only), single steps and a multi-token chunk through the KV cache give the
    full forward's logits."""
    from rad_megatron.inference.engine import InferenceSession
    from rad_megatron.model.forward import forward_logits

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, hidden_size=64, intermediate_size=96, num_layers=3, num_attention_heads=4,
                      num_kv_heads=2, layout=["attention", "mamba", "attention"], mamba={"chunk_size": 4})
    model = build_model(cfg).eval()
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = forward_logits(model, ids)
    session = InferenceSession(model, 2, 12)
    parts = [session.feed(ids[:, :5])] + [session.feed(ids[:, i:i + 1]) for i in range(5, 9)]
    parts.append(session.feed(ids[:, 9:12]))
    torch.testing.assert_close(torch.cat(parts, dim=1), full, **TOL)
    last = InferenceSession(model, 2, 12).feed(ids[:, :5], last_only=True)
    assert last.shape == (2, 1, 64)
    torch.testing.assert_close(last, full[:, 4:5], **TOL)
