"""A MambaInLlama-format HF hybrid loads into our model and gives the logits of a reference forward written here
(plain torch, a token-by-token SSM loop, HF-style attention), independent of rad_megatron's mixer and of Megatron."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from rad_megatron.checkpoint.hf_import import model_from_hf
from rad_megatron.checkpoint.hf_source import HFSource
from rad_megatron.model import forward_logits
from tests.helpers import TINY, tiny_hf_llama

H, G, D = TINY["num_attention_heads"], TINY["num_key_value_heads"], TINY["hidden_size"]
d = D // H
D_XB, D_INNER, MAMBA_LAYERS = G * d, H * d, [1]


def make_mil_folder(folder):
    tiny_hf_llama(folder, seed=3, tie_word_embeddings=False)
    sd = load_file(str(folder / "model.safetensors"))
    g = torch.Generator().manual_seed(11)
    for i in MAMBA_LAYERS:
        for k in [k for k in sd if k.startswith(f"model.layers.{i}.self_attn.")]:
            del sd[k]
        p = f"model.layers.{i}.mamba."
        sd[p + "in_proj.weight"] = torch.randn(D_INNER + 2 * D_XB + D_INNER + H, D, generator=g) * 0.2
        sd[p + "conv1d.weight"] = torch.randn(D_INNER + 2 * D_XB, 1, 4, generator=g) * 0.5
        sd[p + "conv1d.bias"] = torch.randn(D_INNER + 2 * D_XB, generator=g) * 0.1
        sd[p + "dt_bias"] = torch.randn(H, generator=g) * 0.5 - 2
        sd[p + "A_log"] = torch.rand(H, generator=g) * 2
        sd[p + "D"] = torch.randn(H, generator=g)
        sd[p + "norm.weight"] = torch.rand(D_INNER, generator=g) + 0.5
        sd[p + "out_proj.weight"] = torch.randn(D, D_INNER, generator=g) * 0.1
    save_file(sd, str(folder / "model.safetensors"))
    mamba_cfg = {"d_model": D, "ssm_cfg": {"expand": 1, "ngroups": H, "d_state": d}, "rms_norm_eps": 1e-5,
                 "vocab_size": TINY["vocab_size"], "d_inner": D_INNER, "d_xb": D_XB,
                 "intermediate_size": TINY["intermediate_size"], "hidden_act": "silu",
                 "n_layer": TINY["num_hidden_layers"],
                 "attn_layers": [i for i in range(TINY["num_hidden_layers"]) if i not in MAMBA_LAYERS]}
    (folder / "mamba_config.json").write_text(json.dumps(mamba_cfg))
    return folder, sd


# ---------------------------------------------------------------- reference forward (independent of the library)
def rms(x, w, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x, theta=10000.0):  # x [b, h, s, d], rotate-half convention
    s = x.shape[2]
    inv = 1.0 / theta ** (torch.arange(0, d, 2).float() / d)
    ang = torch.outer(torch.arange(s).float(), inv)
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def attention(x, sd, p):
    b, s, _ = x.shape
    q = (x @ sd[p + "q_proj.weight"].T).view(b, s, H, d).transpose(1, 2)
    k = (x @ sd[p + "k_proj.weight"].T).view(b, s, G, d).transpose(1, 2).repeat_interleave(H // G, 1)
    v = (x @ sd[p + "v_proj.weight"].T).view(b, s, G, d).transpose(1, 2).repeat_interleave(H // G, 1)
    q, k = rope(q), rope(k)
    att = (q @ k.transpose(-1, -2)) / d ** 0.5
    att = att.masked_fill(torch.triu(torch.ones(s, s, dtype=torch.bool), 1), float("-inf")).softmax(-1)
    return (att @ v).transpose(1, 2).reshape(b, s, H * d) @ sd[p + "o_proj.weight"].T


def mil_mamba(u, sd, p):
    b, s, _ = u.shape
    z, xBC, dt = torch.split(u @ sd[p + "in_proj.weight"].T, [D_INNER, 2 * D_XB + D_INNER, H], -1)
    w, bias = sd[p + "conv1d.weight"][:, 0], sd[p + "conv1d.bias"]
    pad = torch.cat([torch.zeros(b, 3, xBC.shape[-1]), xBC], 1)
    xBC = F.silu(torch.stack([(pad[:, t:t + 4] * w.T).sum(1) for t in range(s)], 1) + bias)
    x, B, C = torch.split(xBC, [D_XB, D_XB, D_INNER], -1)
    x = x.view(b, s, G, d).repeat_interleave(H // G, 2)
    B = B.view(b, s, G, d).repeat_interleave(H // G, 2)
    C = C.view(b, s, H, d)
    dt = F.softplus(dt + sd[p + "dt_bias"])
    A = -torch.exp(sd[p + "A_log"])
    state, ys = torch.zeros(b, H, d, d), []
    for t in range(s):
        state = state * torch.exp(dt[:, t] * A)[..., None, None] + \
            (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", state, C[:, t]) + sd[p + "D"][:, None] * x[:, t])
    y = torch.stack(ys, 1) * F.silu(z.view(b, s, H, d))  # gate, then RMSNorm per head (group = d)
    y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-5)
    return (y.reshape(b, s, D_INNER) * sd[p + "norm.weight"]) @ sd[p + "out_proj.weight"].T


def reference_logits(sd, ids):
    h = sd["model.embed_tokens.weight"][ids]
    for i in range(TINY["num_hidden_layers"]):
        p = f"model.layers.{i}."
        u = rms(h, sd[p + "input_layernorm.weight"])
        h = h + (mil_mamba(u, sd, p + "mamba.") if i in MAMBA_LAYERS else attention(u, sd, p + "self_attn."))
        u = rms(h, sd[p + "post_attention_layernorm.weight"])
        h = h + (F.silu(u @ sd[p + "mlp.gate_proj.weight"].T) * (u @ sd[p + "mlp.up_proj.weight"].T)) \
            @ sd[p + "mlp.down_proj.weight"].T
    return rms(h, sd["model.norm.weight"]) @ sd["lm_head.weight"].T


def test_mil_folder_matches_reference_forward(dist, tmp_path):
    folder, sd = make_mil_folder(tmp_path / "mil")
    model, cfg = model_from_hf(HFSource(folder))
    assert cfg.layout == ["attention", "mamba", "attention"] and cfg.mamba_shape().d_xb == D_XB
    ids = torch.randint(0, TINY["vocab_size"], (2, 19), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = forward_logits(model, ids)
        ref = reference_logits(sd, ids)
    assert (ours - ref).abs().max().item() <= 1e-4


def test_mil_roundtrip_keys(dist, tmp_path):
    from rad_megatron.checkpoint.hf_llama import hf_to_mcore, mcore_to_hf

    folder, sd = make_mil_folder(tmp_path / "mil")
    _, cfg = model_from_hf(HFSource(folder))
    back = mcore_to_hf(hf_to_mcore(sd, cfg), cfg)
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)


def test_mil_config_must_be_mil_shaped(tmp_path):
    from rad_megatron.checkpoint.mil import config_from_mil
    from rad_megatron.errors import RadError

    folder, _ = make_mil_folder(tmp_path / "mil")
    bad = json.loads((folder / "mamba_config.json").read_text())
    bad["ssm_cfg"]["ngroups"] = 2
    with pytest.raises(RadError, match="ngroups \\* d_state == d_inner"):
        config_from_mil(json.loads((folder / "config.json").read_text()), bad)


def test_swap_seed_fixes_the_new_layers_however_many_builds_came_before(dist, tmp_path):
    """Mamba conv/dt/A are drawn inside Megatron's RNG-tracker fork, whose state advances with every build: the same
    swap seed must still give the same layers on the second call, and a different seed different ones."""
    from rad_megatron.swap import swap_attention_to_mamba

    base, _ = model_from_hf(HFSource(tiny_hf_llama(tmp_path / "hf", num_hidden_layers=3)))
    one, two, other = (swap_attention_to_mamba(base, [1], init="rad_zero", seed=s).state_dict() for s in (7, 7, 8))
    keys = [k for k in one if not k.endswith("_extra_state")]
    assert all(torch.equal(one[k], two[k]) for k in keys)
    assert not torch.equal(one["decoder.layers.2.mixer.dt_bias"], other["decoder.layers.2.mixer.dt_bias"])
