"""probe.json and its plots: per-layer scores, and the search trajectory."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def plot_probe(report: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    obj = report["settings"]["objective"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.2))
    layers = [t["skip"][0] for t in report["per_layer"]]
    scores = [t[obj] for t in report["per_layer"]]
    chosen = set(report["chosen"]["skip"]) if report.get("chosen") else set()
    a.bar(layers, scores, color=["tab:red" if l in chosen else "tab:blue" for l in layers])
    if report.get("baseline_no_skip"):
        a.axhline(report["baseline_no_skip"][obj], color="gray", ls="--", label="no skip")
        a.legend(loc="lower right")
    a.set_xlabel("attention layer skipped alone")
    a.set_ylabel(obj)
    a.set_title("per-layer scores (red: chosen set)")
    if all("expected_acceptance" in t for t in report["per_layer"]):  # alpha separates greedy ties at the ceiling
        twin = a.twinx()
        twin.plot(layers, [t["expected_acceptance"] for t in report["per_layer"]], "k.", ms=5, label="alpha")
        twin.set_ylabel("alpha (expected acceptance)")
        twin.legend(loc="lower left")
    if report.get("trials"):
        vals = [t[obj] for t in report["trials"]]
        best = [max(vals[: i + 1]) for i in range(len(vals))]
        b.plot(range(1, len(vals) + 1), vals, "o", alpha=0.5, label="trial")
        b.plot(range(1, len(vals) + 1), best, "-", color="tab:red", label="best so far")
        b.set_xlabel("trial")
        b.set_ylabel(obj)
        b.set_title(f"search over skip sets of size {report['settings']['k']}")
        b.legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
