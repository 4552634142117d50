"""bench/gpu_check.sh --dry-run: the GPU readiness check's code on CPU at tiny shapes, every part, so that the GPU run
is a change of device and size, not of code. Parts that need a GPU library absent here (Transformer Engine,
mamba_ssm's kernels, causal-conv1d) say so and still check their torch paths."""

import json
import os
import subprocess
import sys

from tests.helpers import ROOT


def test_gpu_check_dry_run(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run"], env=env, capture_output=True,
                          text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    parts = report["parts"]
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "traceback"} for k, v in parts.items()}, indent=1))
    assert report["dry_run"] and list(parts) == ["ssm_kernels", "te_vs_local", "verify", "student_step", "distill"]
    assert all(p["status"] in ("ok", "skipped") for p in parts.values()), parts
    assert parts["te_vs_local"]["max_abs_logit_diff"] == 0.0  # local -> checkpoint -> local is exact
    for row in parts["ssm_kernels"]["scan"]:
        assert row["chunked_vs_sequential"] <= 1e-5 and row["chunked_state_vs_sequential"] <= 1e-5
    assert parts["verify"]["max_abs_logit_diff"] <= 1e-4 and parts["verify"]["greedy_tokens_equal"]
    d = parts["distill"]
    assert d["steps"] == 3 and d["tokens_per_s"] > 0 and d["overlap_R"] > 0 and d["stream_backend"] == "gloo"
    # the trainer honours system.precision=bf16 (bf16 weights, fp32 main weights in the optimizer)
    assert d["heldout_kl_first"] >= 0 and d["checkpoint_weight_dtype"] == "bfloat16" and "detail" not in d
    assert 0 < d["student_mfu"] and d["student_model_flop_per_token"] > 0
    s = parts["student_step"]
    assert s["dense"]["tokens_per_s"] > 0 and s["hybrid"]["mfu"] > 0 and s["layout_hybrid"] == "AMAM"
    table = (tmp_path / "out" / "gpu_check.md").read_text()
    assert all(f"| {name} |" in table for name in parts)
