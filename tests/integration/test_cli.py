"""The `rad` CLI end to end: bad input is one line and exit 2; `rad verify` on the real SmolLM2-135M-Instruct."""

import pytest

from tests.helpers import last_json, rad


def _error_lines(proc):
    return [ln for ln in proc.stderr.splitlines() if ln.startswith("rad ")]


def test_missing_hf_path_is_one_line(tmp_path):
    proc = rad("verify", "--hf", str(tmp_path / "nope"))
    assert proc.returncode == 2
    assert _error_lines(proc) == [f"rad verify: error: --hf {tmp_path / 'nope'}: no such file or folder"]


@pytest.mark.slow
def test_verify_smollm2_tp1():
    proc = rad("verify", "--tokens", "32")
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = last_json(proc.stdout)
    assert res["tp"] == 1 and res["greedy_tokens_equal"] and res["max_abs_logit_diff"] <= 1e-4


@pytest.mark.slow
def test_verify_smollm2_tp3():
    proc = rad("verify", "--tokens", "32", nproc=3)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = last_json(proc.stdout)
    assert res["tp"] == 3 and res["greedy_tokens_equal"] and res["max_abs_logit_diff"] <= 1e-4


@pytest.mark.slow
def test_verify_smollm2_tp2_is_refused():
    proc = rad("verify", nproc=2)
    assert proc.returncode != 0
    assert "rad verify: error: parallel.tp=2 does not divide model.num_attention_heads=9; choose a TP size among " \
           "[1, 3, 9]" in proc.stderr
