"""Activation recompute (system.recompute -> Megatron's recompute_granularity): the numbers never change, the memory
does. A hybrid with attention, Mamba-2 and MLP layers; fp32."""

import pytest
import torch

from rad_megatron.config import ModelConfig
from rad_megatron.model import build_model
from rad_megatron.model.forward import position_ids_for

CFG = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_layers=3, num_attention_heads=4, num_kv_heads=2,
           layout=["attention", "mamba", "attention"], mamba={"chunk_size": 8})


def _loss_and_grads(model, ids, labels):
    loss = model(input_ids=ids, position_ids=position_ids_for(ids), attention_mask=None, labels=labels).mean()
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_recompute_gradients_equal_no_recompute(dist):
    """selective (core attention via Megatron's checkpoint around our SDPA attention, plus the Mamba scan) and full
    (HybridStack's checkpointed_forward, one layer per chunk) give the loss and every gradient of no recompute,
    within 1e-6 (in practice bit-identical: the recomputed forward repeats the same operations)."""
    cfg = ModelConfig(**CFG)
    torch.manual_seed(0)
    state = build_model(cfg).state_dict()
    g = torch.Generator().manual_seed(1)
    ids, labels = torch.randint(0, 128, (2, 37), generator=g), torch.randint(0, 128, (2, 37), generator=g)
    runs = {}
    for mode in ("none", "selective", "full"):
        model = build_model(cfg, recompute=mode)
        model.load_state_dict(state)
        runs[mode] = _loss_and_grads(model.train(), ids, labels)
        if mode == "selective":
            assert model.decoder.layers[0].self_attention.checkpoint_core_attention
            assert model.decoder.layers[2].mixer._recompute_scan(torch.zeros(1))
    loss0, grads0 = runs["none"]
    assert all(g.abs().max() > 0 for n, g in grads0.items() if "mixer" in n or "self_attention" in n)
    for mode in ("selective", "full"):
        loss, grads = runs[mode]
        assert abs(loss - loss0) <= 1e-6
        diff = max((grads[n] - g).abs().max().item() for n, g in grads0.items())
        print(f"{mode}: loss diff {abs(loss - loss0):.2e}, max grad diff {diff:.2e}")
        assert diff <= 1e-6


def test_recompute_lowers_measured_peak(dist):
    """bench/recompute_memory.py at a small shape where activations dominate: full < selective < none."""
    from bench.recompute_memory import _args, measure, report

    r = measure(_args(["--hidden", "64", "--blocks", "2", "--seq", "256", "--batch", "2", "--repeats", "1",
                       "--device", "cpu"]))
    print(report(r))
    peak = r["peak_bytes"]
    assert peak["full"] < peak["selective"] < peak["none"]
    assert peak["full"] < 0.5 * peak["none"]


def test_recompute_refuses_unknown_mode():
    from rad_megatron.errors import RadError
    from rad_megatron.model.build import recompute_fields

    with pytest.raises(RadError, match="system.recompute"):
        recompute_fields("everything", 4)
