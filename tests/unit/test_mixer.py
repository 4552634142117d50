"""The Mamba mixer inside the hybrid model: cached decoding == parallel forward, state snapshot/restore is exact,
and the rad_zero / mil initialisations do what the method says (TP=1; TP=2 in tests/distributed)."""

import pytest
import torch
from megatron.core.inference.contexts import StaticInferenceContext

from rad_megatron.config import ModelConfig
from rad_megatron.errors import RadError
from rad_megatron.model import build_model, forward_logits
from rad_megatron.model.skip import skip_blocks
from rad_megatron.ssm.state import mamba_layer_numbers, restore_states, snapshot_states
from rad_megatron.swap import swap_attention_to_mamba

BASE = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_layers=4, num_attention_heads=4, num_kv_heads=2)
LAYOUTS = {"mil": {}, "standard": {"d_xb": 64}}  # MIL narrow x/B (d_xb = 2 * 16) and the standard Mamba-2 layout


def _hybrid(layout_kind="mil", seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(**BASE, layout=["attention", "mamba", "attention", "mamba"],
                      mamba={**LAYOUTS[layout_kind], "chunk_size": 8})
    return build_model(cfg).eval()


IDS = torch.randint(0, 128, (2, 21), generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("kind", list(LAYOUTS))
def test_cached_decoding_equals_parallel_forward(dist, kind):
    model = _hybrid(kind)
    with torch.no_grad():
        full = forward_logits(model, IDS)
        ctx = StaticInferenceContext(2, 64)
        outs = [forward_logits(model, IDS[:, :9], inference_context=ctx)]
        ctx.sequence_len_offset = 9
        for t in range(9, 15):  # token by token (the O(1) step path)
            outs.append(forward_logits(model, IDS[:, t:t + 1], inference_context=ctx, position_offset=t))
            ctx.sequence_len_offset += 1
        outs.append(forward_logits(model, IDS[:, 15:], inference_context=ctx, position_offset=15))  # a block of 6
    assert (torch.cat(outs, dim=1) - full).abs().max().item() <= 1e-5


def test_snapshot_advance_restore_is_bit_exact(dist):
    model = _hybrid()
    ctx = StaticInferenceContext(2, 64)
    with torch.no_grad():
        forward_logits(model, IDS[:, :10], inference_context=ctx)
        ctx.sequence_len_offset = 10
        layers = mamba_layer_numbers(model)
        assert layers == [3, 7]
        snap = snapshot_states(ctx, layers)
        before = {n: (c.clone(), s.clone()) for n, (c, s) in ctx.key_value_memory_dict.items() if n in layers}
        forward_logits(model, IDS[:, 10:14], inference_context=ctx, position_offset=10)
        assert not torch.equal(ctx.key_value_memory_dict[3][1], before[3][1]), "advancing must change the state"
        restore_states(ctx, snap)
        for n in layers:
            assert torch.equal(ctx.key_value_memory_dict[n][0], before[n][0])
            assert torch.equal(ctx.key_value_memory_dict[n][1], before[n][1])
        # and decoding from the restored state reproduces the same logits
        a = forward_logits(model, IDS[:, 10:14], inference_context=ctx, position_offset=10)
        restore_states(ctx, snap)
        b = forward_logits(model, IDS[:, 10:14], inference_context=ctx, position_offset=10)
    assert torch.equal(a, b)


def _llama(seed=1):
    torch.manual_seed(seed)
    return build_model(ModelConfig(**BASE)).eval()


def test_rad_zero_equals_skipping_attention(dist):
    model = _llama()
    swapped = swap_attention_to_mamba(model, [1, 2], init="rad_zero")
    with torch.no_grad():
        got = forward_logits(swapped, IDS)
        with skip_blocks(model, [1, 2]):
            want = forward_logits(model, IDS)
        plain = forward_logits(model, IDS)
    assert torch.equal(got, want)
    assert not torch.equal(got, plain)
    assert swapped.rad_config.layout == ["attention", "mamba", "mamba", "attention"]
    assert model.rad_config.layout == ["attention"] * 4, "the source model is untouched"


@pytest.mark.parametrize("kind", list(LAYOUTS))
def test_mil_rows_are_the_attention_weights(dist, kind):
    model = _llama()
    model.rad_config.mamba.d_xb = LAYOUTS[kind].get("d_xb")
    swapped = swap_attention_to_mamba(model, [2], init="mil")
    qkv = model.decoder.layers[4].self_attention.linear_qkv.weight.view(2, 4, 16, 64)  # [G, H/G + 2, d, D]
    q, k, v = qkv[:, :2].reshape(-1, 64), qkv[:, 2].reshape(-1, 64), qkv[:, 3].reshape(-1, 64)
    if kind == "standard":  # x and B per head: each KV head repeated H/G = 2 times
        k, v = (t.view(2, 16, 64).repeat_interleave(2, 0).reshape(-1, 64) for t in (k, v))
    mixer = swapped.decoder.layers[4].mixer
    z, x, B, C, dt = torch.split(mixer.in_proj.weight, mixer.in_proj_sizes)
    assert torch.equal(x, v) and torch.equal(B, k) and torch.equal(C, q)
    assert torch.equal(mixer.out_proj.weight, model.decoder.layers[4].self_attention.linear_proj.weight)
    assert torch.equal(swapped.decoder.layers[4].norm.weight, model.decoder.layers[4].input_layernorm.weight)
    assert torch.equal(swapped.decoder.layers[5].mlp.linear_fc1.weight, model.decoder.layers[5].mlp.linear_fc1.weight)


def test_swap_on_a_hybrid_and_bad_layers(dist):
    hybrid = _hybrid()
    again = swap_attention_to_mamba(hybrid, [0], init="random")
    assert again.rad_config.layout == ["mamba", "mamba", "attention", "mamba"]
    with pytest.raises(RadError, match="layer 1 is already a mamba layer"):
        swap_attention_to_mamba(hybrid, [1])
    with pytest.raises(RadError, match="layer 9 is out of range; the model has layers 0..3"):
        swap_attention_to_mamba(hybrid, [9])
    with pytest.raises(RadError, match="--init 'zero' is not one of"):
        swap_attention_to_mamba(hybrid, [0], init="zero")
