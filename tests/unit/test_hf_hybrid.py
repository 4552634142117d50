"""Export to transformers' native GraniteMoeHybrid (`rad convert --to hf-hybrid`): the folder loads with
AutoModelForCausalLM in a fresh process that never imports rad_megatron, its logits equal ours within 1e-4 (fp32) and
its greedy tokens are ours, for a MIL-layout hybrid (x/B rows materialised; untied, Llama-3.1 RoPE scaling) and a
standard-layout one (tied, grouped B/C, rad_zero layer); importing the folder back is bit-exact; layouts the
architecture cannot express and foreign GraniteMoeHybrid configs are refused in one line, nothing written.
SmolLM2 with a rad_zero and a mil swap: the slow test at the end."""

import json
import re
import os
import subprocess
import sys

import pytest
import torch

from rad_megatron.checkpoint.export import gather_full_state_dict, write_hf_folder
from rad_megatron.checkpoint.hf_hybrid import D_XB_KEY, added_parameters
from rad_megatron.checkpoint.hf_import import model_from_hf
from rad_megatron.checkpoint.hf_source import HFSource, resolve
from rad_megatron.checkpoint.store import save_model
from rad_megatron.cli import main
from rad_megatron.config import ModelConfig
from rad_megatron.errors import RadError
from rad_megatron.inference.engine import generate
from rad_megatron.model import build_model, forward_logits
from rad_megatron.swap import swap_attention_to_mamba
from tests.helpers import (LLAMA3_SCALING, SHARED, one_torch_thread,  # noqa: F401 (autouse fixture)
                           tiny_hf_llama, tiny_tokenizer)

BASE = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_layers=3, num_attention_heads=4, num_kv_heads=2)
NEW_TOKENS = 8


# Runs in a fresh interpreter outside the repository: transformers alone loads each folder.
FRESH = """
import sys, torch
from transformers import AutoModelForCausalLM
ids = torch.load(sys.argv[1])
out = []
for folder in sys.argv[3:]:
    m = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = m(ids).logits
        gen = m.generate(ids[:1], max_new_tokens=int(sys.argv[2]), do_sample=False, min_new_tokens=int(sys.argv[2]))
    out.append({"type": type(m).__name__, "logits": logits, "greedy": gen[0, ids.shape[1]:].tolist()})
assert "rad_megatron" not in sys.modules
torch.save(out, sys.argv[1] + ".out")
"""


def fresh_transformers(tmp_path, ids, folders) -> list[dict]:
    torch.save(ids, tmp_path / "ids.pt")
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    env.update(PYTHONPATH="", TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", FRESH, str(tmp_path / "ids.pt"), str(NEW_TOKENS), *map(str, folders)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(tmp_path / "ids.pt.out")


def _perturb_mixers(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".mixer." in name and "in_proj" not in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)


def _mil_hybrid(tmp_path):
    src = tiny_hf_llama(tmp_path / "src_mil", seed=31, num_hidden_layers=4, tie_word_embeddings=False,
                        rope_theta=500000.0, rope_scaling=LLAMA3_SCALING)
    model = swap_attention_to_mamba(model_from_hf(HFSource(src))[0], [0, 2], init="mil", seed=3)
    _perturb_mixers(model, 1)
    return model


def _standard_hybrid():
    torch.manual_seed(5)
    cfg = ModelConfig(**{**BASE, "num_layers": 4}, tie_word_embeddings=True,
                      layout=["attention", "mamba", "attention", "mamba"], mamba={"d_xb": 64, "num_groups": 2})
    model = build_model(cfg).eval()
    with torch.no_grad():
        model.decoder.layers[6].mixer.in_proj.weight.zero_()  # a rad_zero-like layer: outputs exactly 0
    _perturb_mixers(model, 2)
    return model


def assert_equivalent(a: ModelConfig, b: ModelConfig):
    assert a.layout == b.layout and a.mamba_shape() == b.mamba_shape() and a.kv_channels == b.kv_channels
    for f in ("vocab_size", "hidden_size", "intermediate_size", "num_kv_heads", "rms_norm_eps", "rope_theta",
              "rope_scaling", "tie_word_embeddings", "max_position_embeddings"):
        assert getattr(a, f) == getattr(b, f), f


def test_export_loads_natively_equals_ours_and_round_trips(dist, tmp_path):
    models = {"mil": _mil_hybrid(tmp_path), "standard": _standard_hybrid()}
    ids = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(7))
    fulls = {}
    for name, model in models.items():
        fulls[name] = gather_full_state_dict(model)
        write_hf_folder(fulls[name], model.rad_config, tmp_path / name, "hf-hybrid", tokenizer=tiny_tokenizer())
    assert D_XB_KEY in json.loads((tmp_path / "mil" / "config.json").read_text())
    assert D_XB_KEY not in json.loads((tmp_path / "standard" / "config.json").read_text())
    assert added_parameters(models["mil"].rad_config) > 0 == added_parameters(models["standard"].rad_config)
    theirs = fresh_transformers(tmp_path, ids, [tmp_path / name for name in models])
    for (name, model), got in zip(models.items(), theirs):
        assert got["type"] == "GraniteMoeHybridForCausalLM"
        diff = (got["logits"] - forward_logits(model, ids)).abs().max().item()
        assert diff < 1e-4, (name, diff)
        assert got["greedy"] == generate(model, [ids[0].tolist()], NEW_TOKENS)[0], name
        back, cfg = model_from_hf(HFSource(tmp_path / name))
        assert_equivalent(cfg, model.rad_config)
        again = gather_full_state_dict(back)
        assert set(again) == set(fulls[name]) and all(torch.equal(again[k], fulls[name][k]) for k in again), name


def _inexpressible(**kw):
    layout = ["attention", "mamba", "attention"]
    return ModelConfig(**{**BASE, **kw.pop("base", {})}, layout=layout, mamba={"chunk_size": 8, **kw})


@pytest.mark.parametrize("cfg, message", [
    (_inexpressible(base={"rms_norm_eps": 1e-6}), "rms_norm_eps=1e-06: GraniteMoeHybrid's gated Mamba norm uses it"),
    (_inexpressible(num_groups=1), "2 B groups do not divide mamba.num_groups=1"),
    (_inexpressible(base={"head_dim": 8}), "head_dim=8 x 4 heads != hidden_size=64"),
])
def test_inexpressible_layouts_are_refused(dist, tmp_path, capsys, cfg, message):
    save_model(build_model(cfg), tmp_path / "ck")
    code = main(["-v", "convert", "--ckpt", str(tmp_path / "ck"), "--to", "hf-hybrid", "--out", str(tmp_path / "o")])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("rad ")]
    assert code == 2 and len(lines) == 1 and message in lines[0] and "--to hf-hybrid" in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_foreign_configs_are_refused(dist, tmp_path):
    model = _standard_hybrid()
    write_hf_folder(gather_full_state_dict(model), model.rad_config, tmp_path / "f", "hf-hybrid")
    cfg_file = tmp_path / "f" / "config.json"
    good = json.loads(cfg_file.read_text())
    for change, message in [({"num_local_experts": 8}, "num_local_experts=8 (needs 0"),
                            ({"position_embedding_type": None}, "position_embedding_type=None (needs 'rope')"),
                            ({"residual_multiplier": 0.22}, "residual_multiplier=0.22 (needs 1.0)"),
                            ({"attention_multiplier": 0.0078125}, "attention_multiplier=0.0078125 is not"),
                            ({D_XB_KEY: 32}, "rows are not 2 equal copies")]:
        cfg_file.write_text(json.dumps({**good, **change}))
        with pytest.raises(RadError, match=re.escape(message)):
            model_from_hf(HFSource(tmp_path / "f"))


@pytest.mark.slow
def test_smollm2_hybrid_export(dist, tmp_path):
    """SmolLM2-135M-Instruct with layer 3 swapped rad_zero and layer 10 swapped mil: transformers' logits within
    1e-4 of ours (fp32), same greedy tokens, re-import bit-exact."""
    llama, _ = model_from_hf(resolve(None))
    hybrid = swap_attention_to_mamba(swap_attention_to_mamba(llama, [3], init="rad_zero"), [10], init="mil")
    full = gather_full_state_dict(hybrid)
    write_hf_folder(full, hybrid.rad_config, tmp_path / "smol", "hf-hybrid")
    ids = torch.tensor([list(range(1000, 1032)), list(range(2000, 2032))])
    got = fresh_transformers(tmp_path, ids, [tmp_path / "smol"])[0]
    diff = (got["logits"] - forward_logits(hybrid, ids)).abs().max().item()
    assert diff < 1e-4, diff
    assert got["greedy"] == generate(hybrid, [ids[0].tolist()], NEW_TOKENS)[0]
    again = gather_full_state_dict(model_from_hf(HFSource(tmp_path / "smol"))[0])
    assert all(torch.equal(again[k], full[k]) for k in full) and set(again) == set(full)


def test_lm_eval_hf_backend_on_the_export_agrees_with_ours(dist, tmp_path):
    """GSM8K through lm-eval: its own `hf` backend on the exported folder and our `rad_megatron` backend on the
    model give the same responses and scores (tiny hybrid, 3 documents, 24 new tokens)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from rad_megatron.eval import TASKS_DIR
    from rad_megatron.eval.lm import RadLM

    src = tiny_hf_llama(tmp_path / "src", seed=33, num_hidden_layers=4, max_position_embeddings=1024)
    model = swap_attention_to_mamba(model_from_hf(HFSource(src))[0], [1, 3], init="mil", seed=4)
    _perturb_mixers(model, 3)
    tok = tiny_tokenizer()
    write_hf_folder(gather_full_state_dict(model), model.rad_config, tmp_path / "hy", "hf-hybrid", tokenizer=tok)
    gsm8k = str(SHARED / "data" / "gsm8k" / "test.jsonl")

    def run(lm, **kw):
        manager = TaskManager(include_path=[str(TASKS_DIR)], include_defaults=False, metadata={"gsm8k_data": gsm8k})
        return lm_eval.simple_evaluate(model=lm, tasks=["rad_gsm8k"], task_manager=manager, limit=3, batch_size=1,
                                       log_samples=True, bootstrap_iters=0, gen_kwargs={"max_gen_toks": 24}, **kw)

    theirs = run("hf", model_args={"pretrained": str(tmp_path / "hy"), "dtype": "float32", "device": "cpu"})
    ours = run(RadLM.from_model(model, tok, dist, batch_size=1))
    resp = [{s["doc_id"]: s["resps"][0][0] for s in r["samples"]["rad_gsm8k"]} for r in (ours, theirs)]
    assert resp[0] == resp[1] and len(resp[0]) == 3 and all(resp[0].values())
    assert ours["results"]["rad_gsm8k"] == theirs["results"]["rad_gsm8k"]
