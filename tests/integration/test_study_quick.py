"""`rad study --quick` on the real SmolLM2-135M-Instruct, shrunk further: every artefact is produced and agrees with the
raw metrics (table rows and layers match the JSONL, the ratio recomputed here from the JSONL equals the table's), an
interrupted study continues without redoing finished runs, and a restart with other settings is refused."""

import json
import math
import re
from pathlib import Path

import pytest

from tests.helpers import ROOT, rad

TINY = ["train.steps=4", "train.eval_every=2", "accuracy.limit=2", "accuracy.max_new_tokens=8",
        "accuracy.runs=[rad-*]", "data.max_examples=60"]


def _table(md: str) -> dict[tuple, dict]:
    lines = md.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| strategy | k | init | seeds |"))
    head = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = {}
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        cells = dict(zip(head, (c.strip() for c in ln.strip("|").split("|"))))
        rows[(cells["strategy"], int(cells["k"]), cells["init"])] = cells
    return rows


def _to_target(curve, target):  # written independently of rad_megatron.study.metrics
    for i, (tokens, kl) in enumerate(curve):
        if kl <= target:
            if i == 0:
                return 0.0
            t0, k0 = curve[i - 1]
            return t0 + (tokens - t0) * (k0 - target) / (k0 - kl)
    return None


def _ratio_text(t_u, t_s):
    if t_s is None:
        return "n/r"
    if t_s == 0:
        return "1.00 ± 0.00" if t_u == 0 else "∞"
    return f"{t_u / t_s:.2f} ± 0.00"


@pytest.mark.slow
def test_quick_study_artefacts_are_consistent(tmp_path):
    out = tmp_path / "study"
    args = ["study", "--config", str(ROOT / "configs/study_smollm2.yaml"), "--quick", "--out", str(out), *TINY]
    first = rad(*args, "--max-runs", "1", timeout=1200)
    assert first.returncode == 0, first.stderr[-3000:]
    done = sorted(p.parent.name for p in out.glob("runs/*/done.json"))
    assert len(done) == 1 and (out / "convergence.md").is_file()
    kept = out / "runs" / done[0] / "metrics.jsonl"
    stamp = kept.stat().st_mtime_ns

    second = rad(*args, timeout=1200)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"{done[0]} layers" not in second.stdout and "run 2/2" in second.stdout  # finished run skipped
    assert kept.stat().st_mtime_ns == stamp

    md = (out / "convergence.md").read_text()
    assert (out / "convergence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [json.loads(ln) for ln in (out / "convergence.jsonl").read_text().splitlines()]
    assert "rad study --config" in md and "--quick" in md and "compute time:" in md
    table = _table(md)
    assert set(table) == {("rad", 4, "rad_zero"), ("uniform", 4, "rad_zero")}
    curves = {}
    for r in rows:
        if r["kind"] == "eval":
            curves.setdefault(r["strategy"], []).append((r["tokens"], r["heldout_kl"]))
    assert {len(c) for c in curves.values()} == {3}  # steps 0, 2, 4
    target = sorted(curves["uniform"])[-1][1]
    t_u = _to_target(sorted(curves["uniform"]), target)
    for strategy, curve in curves.items():
        curve = sorted(curve)
        cells = table[(strategy, 4, "rad_zero")]
        assert cells["final held-out KL"] == f"{curve[-1][1]:.4f} ± 0.0000"
        assert cells["ratio uniform / strategy"] == _ratio_text(t_u, _to_target(curve, target))
        layers = {tuple(r["layers"]) for r in rows if r["strategy"] == strategy}
        assert len(layers) == 1 and f"| {strategy} | 4 | {list(next(iter(layers)))} (seeds [0])" in md
    assert table[("uniform", 4, "rad_zero")]["ratio uniform / strategy"] == "1.00 ± 0.00"
    # the rad set is the probe file's searched set
    probe = json.loads((ROOT / "docs/results/probe_smollm2.json").read_text())
    assert {tuple(r["layers"]) for r in rows if r["strategy"] == "rad"} == {tuple(sorted(probe["chosen"]["skip"]))}
    acc = {p.stem: json.loads(p.read_text()) for p in (out / "accuracy").glob("*.json")}
    assert set(acc) == {"teacher", "rad-k4-rad_zero-s0"}  # accuracy.runs picks the students
    for name, a in acc.items():
        assert a["n"] == 2 and 0 <= a["flexible"] <= 1 and len(a["samples"]) == 2
        assert re.search(rf"\| {re.escape(name)} \| 2 \| {a['flexible']:.3f} \|", md)
    assert "the teacher and 1 of 2 final students" in md
    assert f"| 4 | rad_zero | {acc['rad-k4-rad_zero-s0']['flexible']:.3f} (1) |  |" in md  # uniform not scored
    assert all(math.isfinite(r["heldout_kl"]) for r in rows if r["kind"] == "eval")

    other = rad(*args[:-len(TINY)], *TINY[:-1], "data.max_examples=61")
    assert other.returncode == 2
    assert "holds runs made with other data settings" in other.stderr, other.stderr[-2000:]
