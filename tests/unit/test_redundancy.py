"""The redundancy heuristics (probe.redundancy) against direct computations with transformers on a tiny Llama: bi from
output_hidden_states, attn-sim from the attention module's own output, kl with transformers' attention switched off
at the generated positions of its own greedy continuation."""

import pytest
import torch

from rad_megatron.checkpoint.hf_import import model_from_hf
from rad_megatron.checkpoint.hf_source import HFSource
from rad_megatron.probe.redundancy import redundancy_scores
from tests.helpers import tiny_hf_llama

PROMPTS = [[5, 9, 17, 33, 2, 70], [40, 41, 42], [100, 3, 64, 64, 8]]
NEW = 7


def _one_minus_cos(x, y, lengths):
    cos = torch.nn.functional.cosine_similarity(x.double(), y.double(), dim=-1)
    return torch.cat([1 - cos[i, :n] for i, n in enumerate(lengths)]).mean().item()


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    folder = tiny_hf_llama(tmp_path_factory.mktemp("hf") / "m", seed=11, num_hidden_layers=4, tie_word_embeddings=False)
    return folder, AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@torch.no_grad()
def test_heuristics_match_transformers(dist, both):
    folder, hf = both
    ours, _ = model_from_hf(HFSource(folder))
    got = redundancy_scores(ours.eval(), PROMPTS, NEW, eos_id=None)
    seqs = [hf.generate(torch.tensor([p]), max_new_tokens=NEW, do_sample=False)[0].tolist() for p in PROMPTS]
    assert got["calibration"]["generated_positions"] == len(PROMPTS) * NEW
    lengths = [len(s) for s in seqs]
    ids = torch.zeros(len(seqs), max(lengths), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
    attn_out = {}
    hooks = [layer.self_attn.register_forward_hook(lambda m, a, out, b=b: attn_out.__setitem__(b, out[0]))
             for b, layer in enumerate(hf.model.layers)]
    out = hf(ids, output_hidden_states=True)  # right padding cannot reach the real positions (causal)
    for h in hooks:
        h.remove()
    hs = out.hidden_states  # hs[b] = input of decoder layer b; the last one is after the final norm
    full = out.logits.double().log_softmax(-1)
    for b in range(4):
        inputs = hs[b]
        outputs = hs[b + 1] if b < 3 else None
        if outputs is not None:  # block influence straight from output_hidden_states
            assert got["bi"][str(b)] == pytest.approx(_one_minus_cos(inputs, outputs, lengths), abs=1e-5)
        assert got["attn_sim"][str(b)] == pytest.approx(_one_minus_cos(inputs, inputs + attn_out[b], lengths),
                                                        abs=1e-5)
        layer = hf.model.layers[b].self_attn
        original = layer.forward
        layer.forward = lambda hidden_states, *a, **k: (torch.zeros_like(hidden_states), None)
        try:
            part = hf(ids).logits.double().log_softmax(-1)
        finally:
            layer.forward = original
        kl = torch.cat([(full[i, len(p) - 1: n - 1].exp() * (full[i, len(p) - 1: n - 1] - part[i, len(p) - 1: n - 1]))
                        .sum(-1) for i, (p, n) in enumerate(zip(PROMPTS, lengths))])
        assert got["kl"][str(b)] == pytest.approx(kl.mean().item(), rel=1e-4, abs=1e-7)
    assert len(set(got["bi"].values())) == 4 and all(0 < v < 2 for v in got["attn_sim"].values())
