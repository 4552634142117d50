"""TP=2 (two gloo processes) equals transformers' Llama for every tiny variant: max |logit diff| <= 1e-4."""

import json

from tests.helpers import HF_VARIANTS, ROOT, tiny_hf_llama, torchrun


def test_tp2_equals_transformers(tmp_path):
    folders = [tiny_hf_llama(tmp_path / n, seed=i, **kw) for i, (n, kw) in enumerate(HF_VARIANTS.items())]
    out = tmp_path / "result.json"
    torchrun(2, ROOT / "tests/distributed/workers/hf_parity_tp.py", str(out), *map(str, folders))
    diffs = json.loads(out.read_text())
    assert set(diffs) == set(HF_VARIANTS)
    assert max(diffs.values()) <= 1e-4, diffs
