"""Each CPU shim: the Megatron call it replaces fails on CPU, and after the shim the call works and is right."""

import pytest
import torch

from rad_megatron.distributed import cpu

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU shims are applied only without CUDA")


def test_all_shims_applied_on_cpu(dist):
    assert set(cpu._APPLIED) == set(cpu.CPU_SHIMS)


def test_rng_tracker(dist):
    from megatron.core.tensor_parallel import get_cuda_rng_tracker, model_parallel_cuda_manual_seed

    with pytest.raises(AssertionError, match="CUDA"):
        cpu._ORIGINALS["rng_tracker"]().add("x", 1)
    model_parallel_cuda_manual_seed(7)
    tracker = get_cuda_rng_tracker()
    assert isinstance(tracker, cpu.CPURNGStatesTracker)
    outer = torch.get_rng_state()
    states = tracker.get_states()
    with tracker.fork():
        a = torch.rand(4)
    assert torch.equal(torch.get_rng_state(), outer), "fork must restore the outer generator state"
    tracker.set_states(states)
    with tracker.fork():
        b = torch.rand(4)
    assert torch.equal(a, b), "same tracked state must give the same numbers"
    with tracker.fork():
        c = torch.rand(4)
    assert not torch.equal(b, c), "a fork must advance its own state"


def test_current_device(dist):
    with pytest.raises((AssertionError, RuntimeError)):
        cpu._ORIGINALS["current_device"]()
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

    emb = RotaryEmbedding(kv_channels=8, rotary_percent=1.0)
    assert torch.cuda.current_device() == "cpu" and emb(5).device.type == "cpu"


def test_causal_mask(dist):
    from megatron.core.fusions import fused_softmax

    with pytest.raises((AssertionError, RuntimeError)):
        cpu._ORIGINALS["causal_mask"](3)
    mask = fused_softmax.get_default_causal_mask(3)
    assert torch.equal(mask, torch.tensor([[0, 1, 1], [0, 0, 1], [0, 0, 0]], dtype=torch.bool))


def test_final_norm(dist):
    from megatron.core.models.hybrid import hybrid_block

    from rad_megatron.config import ModelConfig
    from rad_megatron.model import build_model
    from rad_megatron.model.norm import RMSNorm

    with pytest.raises(Exception, match="Transformer Engine"):
        cpu._ORIGINALS["final_norm"](config=None, hidden_size=8)
    assert hybrid_block.TENorm is RMSNorm
    model = build_model(ModelConfig(vocab_size=16, hidden_size=16, intermediate_size=32, num_layers=1,
                                    num_attention_heads=2, num_kv_heads=1, rms_norm_eps=1e-6))
    assert isinstance(model.decoder.final_norm, RMSNorm) and model.decoder.final_norm.eps == 1e-6


def test_cuda_sync(dist):
    with pytest.raises((AssertionError, RuntimeError)):
        cpu._ORIGINALS["cuda_sync"]()
    torch.cuda.synchronize()  # the shim: a no-op that dist_checkpointing's writer can call


def _tiny_model():
    from rad_megatron.config import ModelConfig
    from rad_megatron.model import build_model

    torch.manual_seed(0)
    return build_model(ModelConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=2,
                                   num_attention_heads=2, num_kv_heads=1))


def test_megatron_optimizer_on_cpu_matches_torch_adamw(dist):
    """Megatron's DDP + optimizer hard-code CUDA (buffers, `.type()` asserts, streams); inside the scoped mode they run
    on CPU and three updates equal torch's AdamW on the same gradients (same seeds, fp32)."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    from rad_megatron.distill.optim import OptimConfig, StageOptimizer

    with pytest.raises((AssertionError, RuntimeError), match="cuda|CUDA"):
        model = _tiny_model()
        get_megatron_optimizer(OptimizerConfig(lr=1e-3),
                               [DistributedDataParallel(model.config, DistributedDataParallelConfig(), model)])
    ours, ref = _tiny_model(), _tiny_model()
    for model in (ours, ref):
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("decoder.layers.2."))  # one block's mixer, as targeting does
    opt = StageOptimizer(ours, OptimConfig(clip_grad=0.0, warmup_steps=0, min_lr_ratio=1.0), 1e-2, steps=3, dp=1)
    params = [p for p in ref.parameters() if p.requires_grad]
    torch_opt = torch.optim.AdamW(params, lr=1e-2, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.0)
    ids = torch.randint(0, 32, (2, 8))
    pos = torch.arange(8).expand(2, 8)
    for _ in range(3):
        opt.zero_grad()
        torch_opt.zero_grad()
        opt.ddp(input_ids=ids, position_ids=pos, attention_mask=None).pow(2).mean().backward()
        ref(input_ids=ids, position_ids=pos, attention_mask=None).pow(2).mean().backward()
        lr, norm = opt.step()
        torch_opt.step()
        assert lr == pytest.approx(1e-2) and norm > 0
    for (name, a), b in zip(ours.named_parameters(), ref.parameters()):
        assert torch.allclose(a, b, atol=1e-6, rtol=0), name
    moved = ours.decoder.layers[2].self_attention.linear_qkv.weight
    assert not torch.equal(moved, _tiny_model().decoder.layers[2].self_attention.linear_qkv.weight)
