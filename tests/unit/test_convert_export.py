"""Export to Hugging Face folders, in one process at TP=1: a Llama comes back bit-exact (tensors, config, transformers'
logits), a MIL folder and a swapped hybrid survive MIL export -> import bit-exact, sharded output reloads, and every
bad input (wrong format for the layout, non-MIL Mamba, incomplete checkpoint, non-empty --out) is one line, exit 2,
nothing written. The TP=2 / PP=2 round trips are in tests/distributed/test_convert_tp.py."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from rad_megatron.checkpoint.export import gather_full_state_dict, write_hf_folder
from rad_megatron.checkpoint.hf_import import model_from_hf
from rad_megatron.checkpoint.hf_source import HFSource
from rad_megatron.checkpoint.mil import config_from_mil
from rad_megatron.checkpoint.store import load_model, save_model
from rad_megatron.cli import main
from rad_megatron.config import ModelConfig
from rad_megatron.errors import RadError
from rad_megatron.model import build_model
from rad_megatron.swap import swap_attention_to_mamba
from tests.helpers import HF_VARIANTS, hf_logits, tiny_hf_llama, tiny_tokenizer
from tests.unit.test_mil_import import make_mil_folder

BASE = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_layers=3, num_attention_heads=4, num_kv_heads=2)


def tensors(folder):
    return HFSource(folder).state_dict()


def assert_same_tensors(a, b):
    assert set(a) == set(b), sorted(set(a) ^ set(b))
    bad = [k for k in a if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])]
    assert not bad, bad


def export(model, out, fmt, **kw):
    return write_hf_folder(gather_full_state_dict(model), model.rad_config, out, fmt, **kw)


@pytest.mark.parametrize("variant", sorted(HF_VARIANTS))
def test_llama_export_is_the_source(dist, tmp_path, variant):
    src = tiny_hf_llama(tmp_path / "src", seed=21, **HF_VARIANTS[variant])
    model, cfg = model_from_hf(HFSource(src))
    out = tmp_path / "out"
    summary = export(model, out, "hf", tokenizer=AutoTokenizer.from_pretrained(src))
    assert summary["files"] == ["model.safetensors"] and summary["dtype"] == "float32"
    assert_same_tensors(tensors(out), load_file(str(src / "model.safetensors")))
    assert ModelConfig.from_hf(json.loads((out / "config.json").read_text())) == cfg
    ids = torch.randint(0, 128, (2, 21), generator=torch.Generator().manual_seed(1))
    assert torch.equal(hf_logits(out, ids), hf_logits(src, ids))  # same weights + equivalent config in transformers
    assert AutoTokenizer.from_pretrained(out)("Hi!").input_ids == [72, 105, 33]
    assert not list(tmp_path.glob(".out*"))


def test_mil_folder_export_is_the_source_and_shards(dist, tmp_path):
    folder, sd = make_mil_folder(tmp_path / "mil")
    model, cfg = model_from_hf(HFSource(folder))
    out = tmp_path / "out"
    summary = export(model, out, "mil", max_shard_size=200_000)  # force several files + index
    assert len(summary["files"]) > 1 and (out / "model.safetensors.index.json").is_file()
    assert summary["mamba_layers"] == [1]
    assert_same_tensors(tensors(out), sd)
    ours, theirs = (json.loads((f / "mamba_config.json").read_text()) for f in (out, folder))
    assert {k: v for k, v in ours.items() if k != "ssm_cfg"} == {k: v for k, v in theirs.items() if k != "ssm_cfg"}
    assert theirs["ssm_cfg"].items() <= ours["ssm_cfg"].items()
    assert config_from_mil(json.loads((out / "config.json").read_text()), ours) == cfg


@pytest.mark.parametrize("init", ["mil", "random"])
def test_swapped_hybrid_mil_roundtrip(dist, tmp_path, init):
    src = tiny_hf_llama(tmp_path / "src", seed=22, num_hidden_layers=4, tie_word_embeddings=True)
    llama, _ = model_from_hf(HFSource(src))
    hybrid = swap_attention_to_mamba(llama, [0, 2], init=init, seed=5)
    before = gather_full_state_dict(hybrid)
    export(hybrid, tmp_path / "mil", "mil")
    back, cfg = model_from_hf(HFSource(tmp_path / "mil"))
    assert cfg.layout == ["mamba", "attention", "mamba", "attention"]
    assert_same_tensors(gather_full_state_dict(back), before)


def _nonmil(**mamba):
    return ModelConfig(**BASE, layout=["attention", "mamba", "attention"], mamba={"chunk_size": 8, **mamba})


@pytest.mark.parametrize("cfg, fmt, message", [
    (ModelConfig(**BASE), "mil", "--to mil: the model has no Mamba layers; export it as a standard Llama folder"),
    (_nonmil(), "hf", "--to hf: the model has Mamba layers [1] and a standard Llama folder holds attention layers"),
    (_nonmil(num_groups=2, d_xb=64), "mil", "--to mil: model is not in the MIL layout (mamba.num_groups=2 != "
                                            "num_heads=4; standard layout with B narrower than x)"),
    (_nonmil(state_dim=8), "mil", "(mamba.head_dim=16 != state_dim=8)"),
])
def test_export_refusals_write_nothing(dist, tmp_path, cfg, fmt, message):
    model = build_model(cfg)
    with pytest.raises(RadError) as err:
        export(model, tmp_path / "out", fmt)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def _rad(capsys, *args):
    """`rad convert ...` in this process (-v: leave the test process's logging alone): (exit code, stderr lines)."""
    code = main(["-v", "convert", *map(str, args)])
    return code, [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("rad ")]


def test_cli_bad_input_is_one_line_exit_2(dist, tmp_path, capsys):
    ck, hy = tmp_path / "ck", tmp_path / "hy"
    save_model(model_from_hf(HFSource(tiny_hf_llama(tmp_path / "src", seed=23)))[0], ck, tokenizer=tiny_tokenizer())
    save_model(build_model(_nonmil(num_groups=2, d_xb=64)), hy)
    out, full = tmp_path / "out", tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("user data")
    cases = [
        (("--ckpt", hy, "--to", "mil", "--out", out), "--to mil: model is not in the MIL layout"),
        (("--ckpt", hy, "--to", "hf", "--out", out), "--to hf: the model has Mamba layers [1]"),
        (("--ckpt", ck, "--to", "hf", "--out", full), f"refusing to overwrite non-empty '{full}'"),
        (("--hf", tmp_path / "src", "--ckpt", ck, "--out", out), "give either --hf (import) or --ckpt"),
        (("--mode", "export", "--ckpt", ck, "--out", out), "this converts in the 'export' direction: --ckpt CKPT"),
        (("--ckpt", ck, "--to", "hf", "--pp", "2", "--out", out), "--pp applies to import and reshard"),
    ]
    for args, message in cases:
        code, lines = _rad(capsys, *args)
        assert code == 2 and len(lines) == 1 and message in lines[0], (args, lines)
    assert not out.exists() and [p.name for p in full.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "full", "hy", "src"]
    assert _rad(capsys, "--ckpt", ck, "--to", "hf", "--out", full, "--force")[0] == 0
    assert [p.name for p in full.iterdir() if p.name == "keep.txt"] == [] and (full / "config.json").is_file()


@pytest.mark.parametrize("victim", ["__0_0.distcp", ".metadata", "metadata.json"])
def test_incomplete_checkpoint_is_named(dist, tmp_path, capsys, victim):
    ck = tmp_path / "ck"
    save_model(build_model(ModelConfig(**BASE)), ck)
    load_model(ck)  # complete: loads
    (ck / victim).unlink()
    with pytest.raises(RadError, match=f"checkpoint '{ck}' is incomplete: .*'{victim}' is missing"):
        load_model(ck)
    code, lines = _rad(capsys, "--ckpt", ck, "--to", "hf", "--out", tmp_path / "out")
    assert code == 2 and len(lines) == 1 and "copy the whole folder again or re-create it" in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_hf_folder_missing_a_shard_is_named(dist, tmp_path):
    model, _ = model_from_hf(HFSource(tiny_hf_llama(tmp_path / "src", seed=24)))
    export(model, tmp_path / "out", "hf", max_shard_size=200_000)
    shard = sorted((tmp_path / "out").glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(RadError, match=f"'{shard.name}' listed in model.safetensors.index.json is missing"):
        HFSource(tmp_path / "out").state_dict()


def test_te_names_map_back_to_local(dist):
    """A TE-spec model's state dict (norms fused into the next linear) gathers under the local names the key maps use."""
    from rad_megatron.checkpoint.shard import TE_NAMES, to_local_names, to_model_names

    local = {k: v for k, v in build_model(_nonmil()).state_dict().items() if not k.endswith("_extra_state")}
    te_keys = set()
    for k in local:
        for suffix, te in TE_NAMES.items():
            if k.endswith(suffix) and ".mixer.norm." not in k:
                k = k[: -len(suffix)] + te
                break
        te_keys.add(k)
    as_te = to_model_names(local, te_keys)
    assert set(as_te) == te_keys and set(as_te) != set(local)
    assert to_local_names(as_te).keys() == local.keys()
