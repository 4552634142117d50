"""Our Megatron HybridModel equals transformers' Llama (fp32, max |logit diff| <= 1e-4) at TP=1."""

import pytest
import torch

from rad_megatron.checkpoint.hf_import import model_from_hf
from rad_megatron.checkpoint.hf_llama import fuse_qkv, hf_to_mcore, mcore_to_hf, split_qkv
from rad_megatron.checkpoint.hf_source import HFSource
from rad_megatron.checkpoint.shard import load_full_state_dict
from rad_megatron.errors import RadError
from rad_megatron.model import forward_logits
from tests.helpers import HF_VARIANTS, hf_logits, tiny_hf_llama

TOL = 1e-4


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {name: tiny_hf_llama(root / name, seed=i, **kw) for i, (name, kw) in enumerate(HF_VARIANTS.items())}


@pytest.mark.parametrize("variant", list(HF_VARIANTS))
def test_logits_equal_transformers(dist, folders, variant):
    ids = torch.randint(0, 128, (2, 48), generator=torch.Generator().manual_seed(1))  # 48 > rope-scaling context 32
    model, cfg = model_from_hf(HFSource(folders[variant]))
    with torch.no_grad():
        ours = forward_logits(model, ids)
    ref = hf_logits(folders[variant], ids)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() <= TOL
    assert cfg.tie_word_embeddings == HF_VARIANTS[variant]["tie_word_embeddings"]


def test_rope_scaling_is_applied(dist, folders):
    scaled, _ = model_from_hf(HFSource(folders["gqa_rope_scaling"]))
    plain, _ = model_from_hf(HFSource(folders["gqa_untied"]))
    assert not torch.allclose(scaled.rotary_pos_emb.inv_freq, 1.0 / 500000.0 ** (torch.arange(0, 16, 2) / 16))
    assert torch.allclose(plain.rotary_pos_emb.inv_freq, 1.0 / 10000.0 ** (torch.arange(0, 16, 2) / 16))


def test_qkv_fuse_split_roundtrip():
    q, k, v = torch.randn(8 * 4, 32), torch.randn(2 * 4, 32), torch.randn(2 * 4, 32)
    fused = fuse_qkv(q, k, v, n_heads=8, n_kv=2)
    # group 0 holds q heads 0..3 then k_0 then v_0
    assert torch.equal(fused[:16], q[:16]) and torch.equal(fused[16:20], k[:4]) and torch.equal(fused[20:24], v[:4])
    assert all(torch.equal(a, b) for a, b in zip(split_qkv(fused, 8, 2), (q, k, v)))


def test_hf_keymap_roundtrip(folders):
    source = HFSource(folders["gqa_untied"])
    from rad_megatron.config import ModelConfig

    cfg = ModelConfig.from_hf(source.config())
    hf = source.state_dict()
    back = mcore_to_hf(hf_to_mcore(hf, cfg), cfg)
    assert set(back) == set(hf) and all(torch.equal(back[k], hf[k]) for k in hf)


def test_missing_and_misshaped_tensors_are_named(dist, folders):
    model, cfg = model_from_hf(HFSource(folders["gqa_untied"]))
    full = hf_to_mcore(HFSource(folders["gqa_untied"]).state_dict(), cfg)
    broken = dict(full)
    del broken["decoder.layers.3.mlp.linear_fc2.weight"]
    with pytest.raises(RadError, match=r"missing tensor 'decoder.layers.3.mlp.linear_fc2.weight'"):
        load_full_state_dict(model, broken, tp=1, tp_rank=0)
    broken = dict(full)
    broken["decoder.layers.0.self_attention.linear_proj.weight"] = torch.zeros(64, 32)
    with pytest.raises(RadError, match=r"'decoder.layers.0.self_attention.linear_proj.weight' has shape \(64, 32\)"):
        load_full_state_dict(model, broken, tp=1, tp_rank=0)


def test_sharded_keys_use_te_names(dist, folders):
    """The local spec writes checkpoint keys under the TE spec's fused-norm names, so CPU and GPU checkpoints agree."""
    model, _ = model_from_hf(HFSource(folders["gqa_untied"]))
    keys = {v.key for v in model.sharded_state_dict().values() if hasattr(v, "key")}
    assert "decoder.layers.0.self_attention.linear_qkv.layer_norm_weight" in keys
    assert "decoder.layers.1.mlp.linear_fc1.layer_norm_weight" in keys
    assert not any(k.endswith(("input_layernorm.weight", "pre_mlp_layernorm.weight")) for k in keys)
