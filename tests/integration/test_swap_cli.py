"""`rad convert` + `rad swap` on a tiny HF Llama: metadata recorded, swapped checkpoint loads and behaves as its init
says; bad input is one line, exit 2, nothing written."""

import json

import torch

from rad_megatron.checkpoint.hf_import import model_from_hf
from rad_megatron.checkpoint.hf_source import HFSource
from rad_megatron.checkpoint.store import load_model
from rad_megatron.model import forward_logits
from rad_megatron.model.skip import skip_blocks
from tests.helpers import rad, tiny_hf_llama


def test_convert_then_swap_rad_zero(dist, tmp_path):
    hf = tiny_hf_llama(tmp_path / "hf", seed=4, num_hidden_layers=4)
    ck, sw = tmp_path / "ck", tmp_path / "sw"
    assert rad("convert", "--hf", str(hf), "--out", str(ck)).returncode == 0
    proc = rad("swap", "--ckpt", str(ck), "--layers", "1,2", "--init", "rad_zero", "--out", str(sw))
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = json.loads((sw / "rad_meta.json").read_text())
    assert meta["model"]["layout"] == ["attention", "mamba", "mamba", "attention"]
    assert meta["mamba_init"] == {"1": "rad_zero", "2": "rad_zero"}
    assert meta["swaps"] == [{"layers": [1, 2], "init": "rad_zero", "seed": 1234}]
    ids = torch.randint(0, 128, (1, 12))
    swapped, (orig, _) = load_model(sw), model_from_hf(HFSource(hf))
    with torch.no_grad(), skip_blocks(orig, [1, 2]):
        assert torch.equal(forward_logits(swapped, ids), forward_logits(orig, ids))
    # a hybrid can be swapped again; the history accumulates
    sw2 = tmp_path / "sw2"
    assert rad("swap", "--ckpt", str(sw), "--layers", "0", "--init", "mil", "--out", str(sw2)).returncode == 0
    meta2 = json.loads((sw2 / "rad_meta.json").read_text())
    assert meta2["mamba_init"] == {"0": "mil", "1": "rad_zero", "2": "rad_zero"} and len(meta2["swaps"]) == 2


def _one_error(proc, expected, ranks=1):
    """Exit 2 single-process (torchrun reports any failed rank as 1); one error line per rank, naming the problem."""
    assert proc.returncode == (2 if ranks == 1 else 1), proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("rad swap")]
    assert len(lines) == ranks and all(expected in ln for ln in lines), proc.stderr[-2000:]


def test_swap_bad_input_writes_nothing(tmp_path):
    hf = tiny_hf_llama(tmp_path / "hf", seed=5, num_hidden_layers=3)
    ck = tmp_path / "ck"
    assert rad("convert", "--hf", str(hf), "--out", str(ck)).returncode == 0
    hy = tmp_path / "hy"
    assert rad("swap", "--ckpt", str(ck), "--layers", "1", "--out", str(hy)).returncode == 0
    out = tmp_path / "out"
    _one_error(rad("swap", "--ckpt", str(hy), "--layers", "1", "--out", str(out)), "layer 1 is already a mamba layer")
    _one_error(rad("swap", "--ckpt", str(ck), "--layers", "7", "--out", str(out)), "layer 7 is out of range")
    # 4 heads at TP=2 is fine for attention, but Mamba heads of 3 do not split over 2 ranks
    bad_cfg = json.loads((ck / "rad_meta.json").read_text())
    bad_cfg["model"]["mamba"]["num_heads"] = 3
    bad_cfg["model"]["mamba"]["num_groups"] = 3
    (ck / "rad_meta.json").write_text(json.dumps(bad_cfg))
    _one_error(rad("swap", "--ckpt", str(ck), "--layers", "0", "--init", "random", "--out", str(out), nproc=2),
               "parallel.tp=2 does not divide model.mamba.num_heads=3", ranks=2)
    _one_error(rad("swap", "--ckpt", str(hy), "--layers", "0", "--out", str(hy)), "refusing to overwrite non-empty")
    assert not out.exists() and not list(tmp_path.glob(".out*"))
