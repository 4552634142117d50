"""`rad convert` under torchrun (2 gloo ranks): HF -> checkpoint at TP=2 -> HF is bit-exact, and the TP=2 checkpoint
loaded at TP=1 gives identical logits; MIL folder -> TP=2 -> MIL folder is bit-exact (Mamba in_proj/conv gathered per
component); a TP=1 hybrid re-saved at TP=2 and a TP=2 hybrid re-saved at PP=2 keep every tensor and their history;
an HF Llama saved at PP=2 (tied output layer on the last stage) loaded at PP=1 gives identical logits."""

import json

import torch

from rad_megatron.checkpoint.export import gather_full_state_dict
from rad_megatron.checkpoint.hf_import import model_from_hf
from rad_megatron.checkpoint.hf_source import HFSource
from rad_megatron.checkpoint.store import load_model, read_meta, save_model
from rad_megatron.config import ModelConfig
from rad_megatron.model import build_model, forward_logits
from tests.helpers import LLAMA3_SCALING, ROOT, tiny_hf_llama, tiny_tokenizer, torchrun
from tests.unit.test_convert_export import assert_same_tensors, tensors
from tests.unit.test_mil_import import make_mil_folder


def _standard_hybrid(seed):
    cfg = ModelConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_layers=4, num_attention_heads=4,
                      num_kv_heads=2, layout=["attention", "mamba", "attention", "mamba"],
                      mamba={"d_xb": 64, "chunk_size": 8})
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    with torch.no_grad():  # non-trivial norms and SSM parameters, so a misplaced shard shows
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", "layernorm.weight", "mixer.D", "mixer.dt_bias")):
                p.uniform_(0.5, 1.5)
    return model


def _logits(model, ids):
    with torch.no_grad():
        return forward_logits(model.eval(), ids)


def test_convert_tp2_and_pp2_roundtrips(dist, tmp_path):
    hf = tiny_hf_llama(tmp_path / "hf", seed=31, tie_word_embeddings=False)
    hf_tied = tiny_hf_llama(tmp_path / "hf_tied", seed=32, tie_word_embeddings=True, rope_scaling=LLAMA3_SCALING)
    mil, mil_sd = make_mil_folder(tmp_path / "mil")
    hybrid = _standard_hybrid(33)
    save_model(hybrid, tmp_path / "ck_tp1", tokenizer=tiny_tokenizer(),
               metadata={"source": "test", "mamba_init": {"1": "random", "3": "random"}})
    torchrun(2, ROOT / "tests/distributed/workers/convert_tp.py", str(tmp_path))
    ids = torch.randint(0, 128, (2, 19), generator=torch.Generator().manual_seed(3))

    # HF -> TP=2 -> HF: the same tensors; the TP=2 checkpoint at TP=1: the same logits as the HF import
    assert_same_tensors(tensors(tmp_path / "hf_back"), tensors(hf))
    assert read_meta(tmp_path / "ck_tp2")["saved_tp"] == 2
    assert torch.equal(_logits(load_model(tmp_path / "ck_tp2"), ids), _logits(model_from_hf(HFSource(hf))[0], ids))

    # MIL folder -> TP=2 -> MIL folder: the same tensors and mamba_config.json
    assert_same_tensors(tensors(tmp_path / "mil_back"), mil_sd)
    back_cfg, src_cfg = (json.loads((f / "mamba_config.json").read_text()) for f in (tmp_path / "mil_back", mil))
    assert {k: v for k, v in back_cfg.items() if k != "ssm_cfg"} == {k: v for k, v in src_cfg.items() if k != "ssm_cfg"}

    # TP=1 hybrid re-saved at TP=2: every tensor, the history and the tokenizer kept
    meta = read_meta(tmp_path / "ck_re_tp2")
    assert meta["saved_tp"] == 2 and meta["mamba_init"] == {"1": "random", "3": "random"} and meta["source"] == "test"
    assert meta["resharded_from"] == {"path": str(tmp_path / "ck_tp1"), "tp": 1, "pp": 1}
    assert (tmp_path / "ck_re_tp2" / "tokenizer" / "tokenizer.json").is_file()
    assert_same_tensors(gather_full_state_dict(load_model(tmp_path / "ck_re_tp2")), gather_full_state_dict(hybrid))

    # PP=2 saves (tied output layer on the last stage; a hybrid resharded TP=2 -> PP=2) loaded at PP=1
    assert read_meta(tmp_path / "ck_pp2")["saved_pp"] == 2
    assert torch.equal(_logits(load_model(tmp_path / "ck_pp2"), ids),
                       _logits(model_from_hf(HFSource(hf_tied))[0], ids))
    assert read_meta(tmp_path / "mil_pp2")["resharded_from"]["tp"] == 2
    assert_same_tensors(gather_full_state_dict(load_model(tmp_path / "mil_pp2")),
                        gather_full_state_dict(model_from_hf(HFSource(mil))[0]))
