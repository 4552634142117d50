"""The study's figure: held-out KL against training tokens, one panel per (init, k), one line per strategy (the mean
over seeds) with its 95% bootstrap band over seeds and held-out examples."""

from __future__ import annotations

import os
from pathlib import Path

from rad_megatron.study.metrics import Curves, band


def plot_curves(curves: dict[tuple, Curves], strategies: list[str], resamples: int, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    inits = sorted({init for (_, _, init) in curves}) or ["(none)"]
    ks = sorted({k for (_, k, _) in curves}) or [0]
    fig, axes = plt.subplots(len(inits), len(ks), figsize=(5.0 * len(ks), 4.0 * len(inits)), squeeze=False)
    if not curves:  # a report written before any grid run finished
        axes[0][0].text(0.5, 0.5, "no grid run has finished yet", ha="center", va="center")
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = {s: palette[i % len(palette)] for i, s in enumerate(strategies)}
    for row, init in enumerate(inits):
        for col, k in enumerate(ks):
            ax = axes[row][col]
            for s in strategies:
                c = curves.get((s, k, init))
                if c is None:
                    continue
                mean, lo, hi = band(c, resamples)
                style = {"lw": 2.2, "zorder": 3} if s == "rad" else {"lw": 1.1}
                ax.plot(c.tokens, mean, "o-", ms=2.5, color=colors[s], label=f"{s} ({len(c.seeds)} seeds)", **style)
                ax.fill_between(c.tokens, lo, hi, color=colors[s], alpha=0.15, lw=0)
            if not ax.lines:
                continue
            ax.set_yscale("log")
            ax.set_xlabel("training tokens")
            ax.set_ylabel("held-out KL(teacher || student)")
            ax.set_title(f"k={k} replaced layers, init {init}")
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = png.with_name(f".{png.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png)
