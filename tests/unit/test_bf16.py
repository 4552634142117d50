"""bf16 models: bf16 weights and activations with fp32 islands (Mamba's A_log and D, the SSM scan and its state, norm
statistics, logits before any softmax), tracking the fp32 model on the same weights."""

import torch

from rad_megatron.config import ModelConfig
from rad_megatron.model import build_model, forward_logits

CFG = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_layers=4, num_attention_heads=4, num_kv_heads=2,
           layout=["attention", "mamba", "attention", "mamba"], mamba={"chunk_size": 8})


def _pair(seed=0):
    """(fp32 model, bf16 model with the fp32 model's weights rounded to bf16)."""
    cfg = ModelConfig(**CFG)
    torch.manual_seed(seed)
    m32 = build_model(cfg).eval()
    with torch.no_grad():  # random norms and SSM parameters, larger matrices: logits with a real spread
        for name, p in m32.named_parameters():
            if name.endswith(("norm.weight", "layernorm.weight", "mixer.D", "mixer.dt_bias")):
                p.uniform_(0.5, 1.5)
            elif p.dim() == 2:
                p.mul_(3)
    m16 = build_model(cfg, dtype=torch.bfloat16).eval()
    m16.load_state_dict(m32.state_dict())
    return m32, m16


def test_bf16_parameters_keep_fp32_islands(dist):
    _, m16 = _pair()
    fp32 = sorted(n for n, p in m16.named_parameters() if p.dtype == torch.float32)
    assert fp32 == ["decoder.layers.2.mixer.A_log", "decoder.layers.2.mixer.D", "decoder.layers.6.mixer.A_log",
                    "decoder.layers.6.mixer.D"]
    assert all(p.dtype == torch.bfloat16 for n, p in m16.named_parameters() if n not in fp32)


def test_bf16_forward_tracks_fp32(dist):
    """Same weights, 64 tokens: bf16 logits within 5% of the fp32 logits' largest magnitude (measured 1.5-3% over
    seeds: a few bf16 roundings through eight layers), mean KL(fp32 || bf16) of the next-token distributions <= 1e-4
    (measured ~2e-5)."""
    m32, m16 = _pair()
    ids = torch.randint(0, 128, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = forward_logits(m32, ids), forward_logits(m16, ids)
    assert b.dtype == torch.bfloat16
    rel = ((a - b.float()).abs().max() / a.abs().max()).item()
    pa, pb = a.log_softmax(-1), b.float().log_softmax(-1)
    kl = (pa.exp() * (pa - pb)).sum(-1).mean().item()
    print(f"bf16 vs fp32: max rel logit diff {rel:.4f}, mean KL {kl:.2e}")
    assert rel <= 0.05 and kl <= 1e-4


def test_bf16_norm_statistics_in_fp32(dist):
    """The local norm upcasts: its bf16 output is the fp32 computation rounded once, not a bf16 reduction."""
    _, m16 = _pair()
    norm = m16.decoder.layers[0].input_layernorm
    x = (torch.randn(4, 7, 64) * 30).to(torch.bfloat16)
    ref = (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight.float())
    assert torch.equal(norm(x), ref.to(torch.bfloat16))


def test_bf16_decode_keeps_fp32_ssm_state(dist):
    """Cached decoding of the bf16 model: the SSM state is fp32 and the decoded logits equal the full forward's
    within bf16 rounding."""
    from megatron.core.inference.contexts import StaticInferenceContext

    _, m16 = _pair()
    ids = torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(1))
    ctx = StaticInferenceContext(1, 32)
    with torch.no_grad():
        full = forward_logits(m16, ids).float()
        forward_logits(m16, ids[:, :-1], inference_context=ctx)
        ctx.sequence_len_offset += ids.shape[1] - 1
        last = forward_logits(m16, ids[:, -1:], inference_context=ctx, position_offset=ids.shape[1] - 1).float()
    conv_state, ssm_state = ctx.key_value_memory_dict[m16.decoder.layers[2].mixer.layer_number]
    assert ssm_state.dtype == torch.float32 and conv_state.dtype == torch.bfloat16
    assert ((last[:, 0] - full[:, -1]).abs().max() / full.abs().max()).item() <= 0.04


def test_bf16_teacher_targets_in_fp32(dist):
    """The teacher side: bf16 logits are upcast before the log-softmax; top-k values are fp32 and equal the fp32
    log-softmax of the (upcast) bf16 logits."""
    from rad_megatron.distill.stream import StreamConfig, teacher_targets

    _, m16 = _pair()
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(2))
    labels, mask = torch.roll(ids, -1, 1), torch.ones(2, 16)
    with torch.no_grad():
        vals, idx, nll, tokens = teacher_targets(m16, ids, labels, mask, StreamConfig(top_k=8))
        ref_vals, ref_idx = forward_logits(m16, ids).float().log_softmax(-1).topk(8, dim=-1)
    assert vals.dtype == torch.float32 and torch.equal(vals, ref_vals) and torch.equal(idx.long(), ref_idx)
    assert tokens == 32 and nll > 0
