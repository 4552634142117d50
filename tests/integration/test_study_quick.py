"""`rad study --quick` (configs/study_smollm2_v2.yaml) on the real SmolLM2-135M-Instruct, shrunk further: every
artefact is produced and agrees with the raw metrics (the kept LR is the sweep's lowest training-loss tail, the
layers are the probe evidence's, the end points and the ratio recomputed here from the JSONL equal the report's), an
interrupted study continues without redoing finished runs, `--max-runs 0` rewrites the report without training, a
fresh folder restored from the published report gives the same report, and a restart with other settings is
refused."""

import json
import re

import numpy as np
import pytest

from tests.helpers import ROOT, rad

CONFIG = str(ROOT / "configs/study_smollm2_v2.yaml")
TINY = ["seeds=[0]", "data.max_examples=60", "bootstrap=50"]


def _kl(rows, strategy):  # written independently of rad_megatron.study.metrics: token-weighted held-out KL
    evals = sorted((r["tokens"], sum(r["example_kl"]) / sum(r["example_tokens"])) for r in rows
                   if r.get("kind") == "eval" and r["strategy"] == strategy)
    return [t for t, _ in evals], [v for _, v in evals]


def _stay(tokens, curve, target):
    above = [i for i, v in enumerate(curve) if v > target + 1e-12]
    if not above:
        return 0.0
    i = above[-1]
    if i == len(curve) - 1:
        return None
    return tokens[i] + (tokens[i + 1] - tokens[i]) * (curve[i] - target) / (curve[i] - curve[i + 1])


@pytest.mark.slow
def test_quick_study_artefacts_are_consistent(tmp_path):
    out = tmp_path / "study"
    args = ["study", "--config", CONFIG, "--quick", "--out", str(out), *TINY]
    first = rad(*args, "--max-runs", "3", timeout=1800)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "stopping after 3 runs" in first.stdout and (out / "convergence_v2.md").is_file()
    sweep = sorted(p.parent.name for p in out.glob("runs/sweep/*/done.json"))
    assert len(sweep) == 3 and not list(out.glob("runs/*/done.json"))  # the sweep runs first
    stamp = (out / "runs" / "sweep" / sweep[0] / "metrics.jsonl").stat().st_mtime_ns

    second = rad(*args, timeout=1800)
    assert second.returncode == 0, second.stderr[-3000:]
    started = [ln for ln in second.stdout.splitlines() if ln.startswith("sweep run")]
    assert len(started) == 1 and sweep[0] not in started[0]  # finished runs are not redone
    assert (out / "runs" / "sweep" / sweep[0] / "metrics.jsonl").stat().st_mtime_ns == stamp
    md = (out / "convergence_v2.md").read_text()
    rows = [json.loads(ln) for ln in (out / "convergence_v2.jsonl").read_text().splitlines()]
    probe = json.loads((out / "convergence_v2_probe.json").read_text())
    assert (out / "convergence_v2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "rad study --config" in md and "--quick" in md and "compute time" in md and "## Verdict" in md

    # the kept LR of each strategy: the lowest mean training loss over the last quarter of its sweep run
    for strategy in ("rad", "uniform-keep0"):
        tails = {}
        for r in rows:
            if r.get("phase") == "lr sweep" and r["strategy"] == strategy:
                tails.setdefault(r["peak_lr"], []).append((r["step"], r["loss"]))
        tails = {lr: np.mean([v for _, v in sorted(s)[-max(1, len(s) // 4):]]) for lr, s in tails.items()}
        kept = min(tails, key=tails.get)
        grid = {r["peak_lr"] for r in rows if r["strategy"] == strategy and r.get("phase") != "lr sweep"}
        assert grid == {kept} and re.search(rf"\| {strategy} \| rad_zero \| .*\| {kept:.0e} \|", md)
    # the layers: rad = the evidence's k=4 search, uniform-keep0 = the end of each quarter of the 30 layers
    layers = {s: {tuple(r["layers"]) for r in rows if r["strategy"] == s} for s in ("rad", "uniform-keep0")}
    assert layers["rad"] == {tuple(sorted(probe["chosen"]["skip"]))} and layers["uniform-keep0"] == {(6, 14, 21, 29)}
    # end points and the ratio, recomputed from the JSONL
    tokens, rad_kl = _kl(rows, "rad")
    _, base_kl = _kl(rows, "uniform-keep0")
    assert f"| 4 | rad_zero | rad | 0 | {rad_kl[0]:.3f} [" in md and f"| {rad_kl[-1]:.3f} [" in md
    t_base, t_rad = _stay(tokens, base_kl, base_kl[-1]), _stay(tokens, rad_kl, base_kl[-1])
    ratio = "n/r" if t_rad is None else "∞" if t_rad == 0 and t_base > 0 else "1.00" if t_rad == 0 else \
        f"{t_base / t_rad:.2f}"
    assert re.search(rf"\| 4 \| rad_zero \| uniform-keep0 \| 0 \| {base_kl[-1]:.3f} \[.*\| {re.escape(ratio)} \[", md), \
        md[-3000:]

    again = rad(*args, "--max-runs", "0", timeout=1800)
    assert again.returncode == 0 and "run (" not in again.stdout, again.stderr[-2000:]
    # a fresh folder seeded from the published report reports the same runs without training any
    copy = tmp_path / "restored"
    restored = rad(*args[:5], str(copy), *TINY, "--restore", str(out / "convergence_v2"), "--max-runs", "0",
                   timeout=1800)
    assert restored.returncode == 0 and "run (" not in restored.stdout, restored.stderr[-2000:]
    assert (copy / "convergence_v2.jsonl").read_bytes() == (out / "convergence_v2.jsonl").read_bytes()
    same = ("* compute time", "* first run", "* restored from", "rad study --config")
    body = [[ln for ln in (d / "convergence_v2.md").read_text().splitlines() if not ln.startswith(same)]
            for d in (out, copy)]
    assert body[0] == body[1] and "* restored from" in (copy / "convergence_v2.md").read_text()
    other = rad(*args[:-len(TINY)], *TINY[:-2], "data.max_examples=61", "bootstrap=50")
    assert other.returncode == 2
    assert "holds runs made with other data settings" in other.stderr, other.stderr[-2000:]
