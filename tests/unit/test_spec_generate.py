"""Speculative generation (inference/spec_generate.py): greedy output is token-identical to plain greedy decoding on
20 GSM8K prompts for a self-draft and a separate draft model, both Mamba rollbacks (snapshot, recompute) and several
draft lengths; a draft equal to the target is always accepted; sampled output follows the target's distribution
(chi-square, tiny model, a draft model far enough from the target that accepting its tokens blindly would fail, and
the self-draft)."""

import json

import pytest
import torch

from rad_megatron.config import ModelConfig
from rad_megatron.errors import RadError
from rad_megatron.inference.draft import ModelDraft, SelfDraft
from rad_megatron.inference.engine import SamplingConfig, generate, next_token_probs
from rad_megatron.inference.spec_generate import accept_draft, speculative_decode
from rad_megatron.model import build_model, forward_logits
from tests.helpers import SHARED, one_torch_thread, tiny_tokenizer  # noqa: F401 (autouse fixture)

HYBRID = ["attention", "mamba", "attention", "mamba"]



def _model(layout, vocab=128, hidden=64, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 3 // 2, num_layers=len(layout),
                      num_attention_heads=4, num_kv_heads=2, layout=layout, max_position_embeddings=256,
                      mamba={"chunk_size": 8})
    return build_model(cfg).eval()


def _gsm8k_prompts(n=20, chars=48):
    tok = tiny_tokenizer()
    with open(SHARED / "data" / "gsm8k" / "test.jsonl") as f:
        questions = [json.loads(line)["question"] for _, line in zip(range(n), f)]
    return [tok(q.encode("ascii", "replace").decode()[:chars])["input_ids"] for q in questions]


def test_greedy_is_token_identical_on_gsm8k_prompts(dist):
    target, other = _model(HYBRID, seed=1), _model(["mamba", "attention", "mamba", "mamba"], seed=2)
    twin = _model(HYBRID, seed=3)
    twin.load_state_dict(target.state_dict())
    drafts = [lambda: SelfDraft([0]), lambda: SelfDraft([0, 2]), lambda: ModelDraft(other, "snapshot"),
              lambda: ModelDraft(other, "recompute")]
    accepted = {True: 0, False: 0}
    for i, prompt in enumerate(_gsm8k_prompts()):
        ref = generate(target, [prompt], 12)[0]
        rollback, k = ("snapshot", "recompute")[i % 2], 1 + i % 4
        out, stats = speculative_decode(target, prompt, 12, drafts[i % 4](), k=k, rollback=rollback)
        assert out == ref, (i, rollback, k)
        assert stats.tokens == 12 and 0 <= stats.accepted <= stats.drafted
        accepted[stats.accepted < stats.drafted] += 1
    assert accepted[True] > 0  # rollbacks were exercised
    for rollback in ("snapshot", "recompute"):  # a draft equal to the target: every token accepted
        out, stats = speculative_decode(target, prompt, 12, ModelDraft(twin, rollback), k=3, rollback=rollback)
        assert out == ref and stats.accepted == stats.drafted > 0


def _chi2_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson chi-square goodness of fit; cells expected below 5 are pooled into one."""
    n = counts.sum()
    expected = probs * n
    small = expected < 5
    obs = torch.cat([counts[~small], counts[small].sum()[None]]) if small.any() else counts
    exp = torch.cat([expected[~small], expected[small].sum()[None]]) if small.any() else expected
    keep = exp > 0
    stat = ((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum()
    df = int(keep.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), stat.double() / 2))


def _exact_marginals(model, prompt, vocab, steps=3):
    """P(token at each of the first `steps` new positions) under plain sampling at temperature 1, by enumeration."""
    seqs, probs = torch.tensor([prompt]), torch.ones(1, dtype=torch.float64)
    marginals = []
    for _ in range(steps):
        p = forward_logits(model, seqs)[:, -1].double().softmax(-1)  # [paths, V]
        joint = probs[:, None] * p
        marginals.append(joint.sum(0))
        seqs = torch.cat([seqs.repeat_interleave(vocab, 0), torch.arange(vocab).repeat(len(seqs))[:, None]], 1)
        probs = joint.reshape(-1)
    return marginals


def test_sampled_tokens_follow_the_target_distribution(dist):
    vocab, prompt = 8, [1, 2, 3]
    target = _model(["attention", "mamba"], vocab=vocab, hidden=32, seed=4)
    draft = _model(["mamba", "attention"], vocab=vocab, hidden=32, seed=5)
    with torch.no_grad():
        target.output_layer.weight.mul_(4)  # peaked, different distributions: a blind acceptance would show
        want = _exact_marginals(target, prompt, vocab)
        q0 = forward_logits(draft, torch.tensor([prompt]))[0, -1].double().softmax(-1)
    assert 0.5 * (want[0] - q0).abs().sum() > 0.2
    samples = 600
    counts = torch.zeros(3, vocab, dtype=torch.float64)
    for seed in range(samples):  # a draft model and the self-draft, each with both rollbacks
        rollback = ("snapshot", "recompute")[seed % 2]
        drafter = ModelDraft(draft, rollback) if seed % 4 < 2 else SelfDraft([0])
        out, _ = speculative_decode(target, prompt, 3, drafter, k=2, rollback=rollback,
                                    sampling=SamplingConfig(temperature=1.0, seed=seed))
        for pos, tok in enumerate(out):
            counts[pos, tok] += 1
    for pos in range(3):
        assert _chi2_pvalue(counts[pos], want[pos]) > 1e-3, (pos, counts[pos], want[pos] * samples)


def test_acceptance_rule_keeps_the_target_distribution():
    """accept_draft alone, on fixed p and q: the first emitted token ~ p1, and after an accepted d1 the next ~ p2."""
    gen = torch.Generator().manual_seed(0)
    p_logits = torch.randn(3, 6, generator=gen) * 2
    q = torch.randn(2, 6, generator=gen).mul(2).softmax(-1)
    sampling = SamplingConfig(temperature=1.0)
    first, second = torch.zeros(6, dtype=torch.float64), torch.zeros(6, dtype=torch.float64)
    for _ in range(4000):
        draft = [int(torch.multinomial(q[i], 1, generator=gen)) for i in range(2)]
        m, nxt = accept_draft(draft, q, p_logits, sampling, gen)
        first[draft[0] if m >= 1 else nxt] += 1
        if m >= 1:
            second[draft[1] if m >= 2 else nxt] += 1
    p = next_token_probs(p_logits, sampling).double()
    assert _chi2_pvalue(first, p[0]) > 1e-3 and _chi2_pvalue(second, p[1]) > 1e-3
    assert _chi2_pvalue(first, q[0].double()) < 1e-6  # the test can tell the draft's distribution apart


def test_bad_input(dist):
    target = _model(HYBRID, seed=1)
    with pytest.raises(RadError, match="draft length must be >= 1"):
        speculative_decode(target, [1, 2], 4, SelfDraft([0]), k=0)
    with pytest.raises(RadError, match="must share the target's tokenizer"):
        speculative_decode(target, [1, 2], 4, ModelDraft(_model(HYBRID, vocab=64)), k=2)
    with pytest.raises(RadError, match="layer 1, which is a mamba layer"):
        speculative_decode(target, [1, 2], 4, SelfDraft([1]), k=2)
    with pytest.raises(RadError, match="--rollback undo: choose one of snapshot, recompute"):
        speculative_decode(target, [1, 2], 4, SelfDraft([0]), k=2, rollback="undo")
