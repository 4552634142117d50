"""Self-speculative decoding is lossless: its greedy output equals plain greedy decoding of the full model for random
tiny models (pure attention and hybrid), many prompts, skip sets and draft lengths, adaptive drafts, and when every
draft token is rejected. The cached engine equals recomputation, batched and with mixed prompt lengths."""

import random

import pytest
import torch

from rad_megatron.config import ModelConfig
from rad_megatron.errors import RadError
from rad_megatron.inference import speculative
from rad_megatron.inference.engine import SamplingConfig, generate
from rad_megatron.inference.greedy import greedy_recompute
from rad_megatron.inference.speculative import speculative_generate
from rad_megatron.model import build_model

V = 64
LAYOUTS = {"attention": ["attention"] * 4, "hybrid": ["attention", "mamba", "attention", "attention"]}


def _model(layout, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=V, hidden_size=64, intermediate_size=96, num_layers=4, num_attention_heads=4,
                      num_kv_heads=2, layout=LAYOUTS[layout], mamba={"chunk_size": 8})
    return build_model(cfg).eval()


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_engine_equals_recompute_with_mixed_lengths(dist, layout):
    model = _model(layout)
    prompts = [[5, 6, 7, 8, 9], [1, 2, 3], [9, 8, 7, 6, 5, 4, 3]]
    got = generate(model, prompts, 12)
    want = [greedy_recompute(model, torch.tensor([p]), 12)[0, len(p):].tolist() for p in prompts]
    assert got == want


def test_engine_sampling_is_seeded_and_eos_stops(dist):
    model = _model("hybrid")
    a = generate(model, [[1, 2, 3]], 10, sampling=SamplingConfig(temperature=1.0, top_k=20, top_p=0.9, seed=3))
    b = generate(model, [[1, 2, 3]], 10, sampling=SamplingConfig(temperature=1.0, top_k=20, top_p=0.9, seed=3))
    assert a == b and len(a[0]) == 10
    greedy = generate(model, [[1, 2, 3]], 10)[0]
    stop = greedy[3]
    cut = generate(model, [[1, 2, 3]], 10, eos_id=stop)[0]
    assert cut == greedy[: greedy.index(stop) + 1]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_speculative_is_lossless(dist, layout):
    model = _model(layout, seed=1)
    rng = random.Random(0)
    attn = model.rad_config.attention_layers
    for _ in range(8):
        prompt = [rng.randrange(V) for _ in range(rng.randint(1, 9))]
        ref = generate(model, [prompt], 16)[0]
        skip = rng.sample(attn, rng.randint(1, len(attn)))
        for k in (1, 2, 4, 7):
            out, stats = speculative_generate(model, prompt, skip, k, 16)
            assert out == ref, (prompt, skip, k)
            assert stats.tokens == 16 and 0 <= stats.accepted <= stats.drafted
        out, _ = speculative_generate(model, prompt, skip, 4, 16, confidence=0.3)
        assert out == ref


def test_empty_skip_set_accepts_everything(dist):
    model = _model("hybrid")
    out, stats = speculative_generate(model, [3, 4, 5], [], 4, 13)
    assert out == generate(model, [[3, 4, 5]], 13)[0]
    assert stats.acceptance_rate == 1.0 and stats.mean_accepted == pytest.approx(stats.mean_drafted)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_lossless_when_every_draft_is_rejected(dist, layout, monkeypatch):
    model = _model(layout, seed=2)
    prompt = [7, 1, 4]
    ref = generate(model, [prompt], 15)[0]

    def wrong_draft(session, y0, skip, budget, confidence, device):  # always one off the verifier's choice
        start = session.offset - len(prompt) + 1
        return [(ref[min(start + i, len(ref) - 1)] + 1) % V for i in range(budget)], torch.zeros(budget, V)

    monkeypatch.setattr(speculative, "_draft", wrong_draft)
    out, stats = speculative_generate(model, prompt, [0], 4, 15)
    assert out == ref
    assert stats.accepted == 0 and stats.drafted > 0 and stats.steps == 14


def test_bad_skip_sets(dist):
    model = _model("hybrid")
    with pytest.raises(RadError, match="layer 1, which is a mamba layer"):
        speculative_generate(model, [1, 2], [1], 4, 4)
    with pytest.raises(RadError, match="skip set names layer 9"):
        speculative_generate(model, [1, 2], [9], 4, 4)
    with pytest.raises(RadError, match="non-empty prompt"):
        speculative_generate(model, [], [0], 4, 4)


def test_alpha_is_one_exactly_for_equal_distributions_and_lower_for_a_drifted_draft(dist, monkeypatch):
    logits = torch.randn(5, V, generator=torch.Generator().manual_seed(0)) * 4
    assert speculative.acceptance_probability(logits, logits).tolist() == pytest.approx([1.0] * 5, abs=1e-12)
    assert (speculative.acceptance_probability(logits, 2 * logits) < 1 - 1e-3).all()

    model = _model("hybrid", seed=3)
    _, same = speculative_generate(model, [3, 4, 5], [], 4, 13)  # drafting with nothing skipped: the same model
    assert same.acceptance_rate == 1.0 and same.expected_acceptance == pytest.approx(1.0, abs=1e-5)
    real_draft = speculative._draft

    def sharper(session, y0, skip, budget, confidence, device):  # the full model's argmax, a sharper distribution
        tokens, logits = real_draft(session, y0, (), budget, confidence, device)
        return tokens, 3.0 * logits

    monkeypatch.setattr(speculative, "_draft", sharper)
    out, drifted = speculative_generate(model, [3, 4, 5], [0], 4, 13)
    assert out == generate(model, [[3, 4, 5]], 13)[0]
    assert drifted.acceptance_rate == 1.0 and drifted.drafted > 0  # greedy acceptance cannot tell them apart
    assert drifted.alpha_positions == drifted.drafted and drifted.expected_acceptance < 0.99
