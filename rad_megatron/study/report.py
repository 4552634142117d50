"""The study's report: convergence.jsonl (every run's raw metrics), convergence.png (held-out KL against tokens per
strategy) and convergence.md (command, runtime, the layers each strategy picked beside their probe scores, the
convergence table against `uniform`, GSM8K accuracy)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from rad_megatron.study.metrics import curves, fmt_values, mean_sd, summarize

TABLE_HEADER = ("| strategy | k | init | seeds | held-out KL at step 0 | final held-out KL | final held-out ppl | "
                "tokens to target | ratio uniform / strategy | tokens to target, trained | ratio, trained |")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    _write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]


def table_lines(rows: list[dict], strategies: list[str]) -> list[str]:
    """The convergence table: one row per (k, init, strategy), in the config's strategy order."""
    order = {s: i for i, s in enumerate(strategies)}
    cells = sorted(summarize(rows), key=lambda c: (c.k, c.init, order.get(c.strategy, 99)))
    lines = [TABLE_HEADER, "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for c in cells:
        lines.append(f"| {c.strategy} | {c.k} | {c.init} | {','.join(map(str, c.seeds))} | "
                     f"{fmt_values(c.start_kl, '.4f')} | {fmt_values(c.final_kl, '.4f')} | "
                     f"{fmt_values(c.final_ppl, '.3f')} | {fmt_values(c.tokens, '.0f', c.budget)} | "
                     f"{fmt_values(c.ratio, '.2f')} | {fmt_values(c.tokens_trained, '.0f', c.budget)} | "
                     f"{fmt_values(c.ratio_trained, '.2f')} |")
    return lines


def rad_vs_lines(rows: list[dict], strategies: list[str]) -> list[str]:
    """RAD against every baseline in turn: the target is that baseline's own final held-out KL (same k, init, seed)."""
    lines = ["| k | init | baseline | seeds | baseline final KL | rad final KL | tokens to target: baseline | "
             "tokens to target: rad | ratio baseline / rad | ratio, trained |",
             "|---:|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for b in [s for s in strategies if s != "rad"]:
        cells = {(c.k, c.init, c.strategy): c for c in summarize(rows, reference=b)}
        for (k, init) in sorted({(k, init) for (k, init, s) in cells if s == b}):
            own, rad = cells[(k, init, b)], cells.get((k, init, "rad"))
            if rad is None:
                continue
            lines.append(f"| {k} | {init} | {b} | {','.join(map(str, rad.seeds))} | "
                         f"{fmt_values(own.final_kl, '.4f')} | "
                         f"{fmt_values(rad.final_kl, '.4f')} | {fmt_values(own.tokens, '.0f', own.budget)} | "
                         f"{fmt_values(rad.tokens, '.0f', rad.budget)} | {fmt_values(rad.ratio, '.2f')} | "
                         f"{fmt_values(rad.ratio_trained, '.2f')} |")
    return lines


def plot(rows: list[dict], strategies: list[str], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cv = curves(rows)
    panels = sorted({(k, init) for (_, k, init, _) in cv})
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    colors = dict(zip(strategies, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for ax, (k, init) in zip(axes[0], panels):
        for s in strategies:
            seeds = [cv[key] for key in sorted(cv) if key[:3] == (s, k, init)]
            if not seeds:
                continue
            tokens = [t for t, _ in seeds[0]]
            per_point = list(zip(*[[kl for _, kl in c] for c in seeds]))
            mean = [sum(p) / len(p) for p in per_point]
            ax.plot(tokens, mean, "o-", ms=3, color=colors.get(s), label=f"{s} ({len(seeds)} seeds)")
            ax.fill_between(tokens, [min(p) for p in per_point], [max(p) for p in per_point], color=colors.get(s),
                            alpha=0.15)
        uni = [cv[key][-1][1] for key in cv if key[:3] == ("uniform", k, init)]
        if uni:
            ax.axhline(sum(uni) / len(uni), color="gray", ls="--", lw=1, label="uniform final (target)")
        ax.set_yscale("log")
        ax.set_xlabel("training tokens")
        ax.set_ylabel("held-out KL(teacher || student)")
        ax.set_title(f"k={k} replaced layers, init {init}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = png.with_name(f".{png.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, png)


def layer_lines(plan: list[dict], evidence: dict) -> list[str]:
    """Which layers each strategy picked, and every attention layer's probe score and skip KL with its pickers."""
    scores, kl = evidence.get("scores", {}), evidence.get("skip_kl", {})
    sets: dict[tuple, set] = {}
    for p in plan:
        sets.setdefault((p["strategy"], p["k"], tuple(p["layers"])), set()).add(p["seed"])
    lines = ["| strategy | k | layers (seeds) | mean probe score | mean skip KL |", "|---|---:|---|---:|---:|"]
    for (s, k, layers), seeds in sorted(sets.items(), key=lambda x: (x[0][1], x[0][0], x[0][2])):
        sc = [scores[str(b)] for b in layers if str(b) in scores]
        kls = [kl[str(b)] for b in layers if str(b) in kl]
        lines.append(f"| {s} | {k} | {list(layers)} (seeds {sorted(seeds)}) | "
                     f"{mean_sd(sc)[0]:.3f} | {mean_sd(kls)[0]:.4f} |" if sc and kls else
                     f"| {s} | {k} | {list(layers)} (seeds {sorted(seeds)}) | n/a | n/a |")
    lines += ["", f"Per attention layer (probe objective `{evidence.get('objective')}` with that layer skipped alone, "
              "higher = more redundant; skip KL = KL(full || that layer skipped), lower = more redundant):", "",
              "| layer | probe score | skip KL | picked by |", "|---:|---:|---:|---|"]
    for b in sorted({int(x) for x in scores} | {int(x) for x in kl}):
        who = sorted({f"{s}@k{k}" for (s, k, layers) in sets if b in layers})
        sc, kv = scores.get(str(b)), kl.get(str(b))
        lines.append(f"| {b} | {'' if sc is None else f'{sc:.3f}'} | {'' if kv is None else f'{kv:.4f}'} | "
                     f"{', '.join(who)} |")
    return lines


def accuracy_lines(acc: dict, plan: list[dict], strategies: list[str]) -> list[str]:
    if not acc:
        return ["GSM8K accuracy not measured yet: it is scored after every run has finished when accuracy.limit > 0 "
                "(one cached result per model; the same command resumes it)."]
    students = [p for p in plan if p["run"] in acc]
    lines = [f"Scored: the teacher and {len(students)} of {len(plan)} final students"
             + ("." if len(students) == len(plan) else " (accuracy.runs selects them; the same command continues "
                "an interrupted scoring).")]
    if students:
        n = acc[students[0]["run"]]["n"]
        p_mean = sum(acc[p["run"]]["flexible"] for p in students) / len(students)
        lines += ["", "Flexible accuracy per strategy, mean over the scored seeds (count in brackets). With "
                  f"{n} questions one model's standard error is sqrt(p(1-p)/{n}) = "
                  f"{math.sqrt(p_mean * (1 - p_mean) / n):.3f} at the students' mean p = {p_mean:.3f}.", "",
                  "| k | init | " + " | ".join(strategies) + " |", "|---:|---|" + "---:|" * len(strategies)]
        for k, init in sorted({(p["k"], p["init"]) for p in students}):
            cells = []
            for s in strategies:
                vals = [acc[p["run"]]["flexible"] for p in students if (p["k"], p["init"], p["strategy"]) ==
                        (k, init, s)]
                cells.append(f"{sum(vals) / len(vals):.3f} ({len(vals)})" if vals else "")
            lines.append(f"| {k} | {init} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["| model | questions | accuracy (flexible) | accuracy (strict) |", "|---|---:|---:|---:|"]
    for name, r in sorted(acc.items(), key=lambda x: (x[0] != "teacher", x[0])):
        lines.append(f"| {name} | {r['n']} | {r['flexible']:.3f} | {r['strict']:.3f} |")
    return lines


def publish(out: Path, folder: Path) -> None:
    """Copy the report's three files from the study folder to `folder` (each replaced atomically)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("convergence.md", "convergence.png", "convergence.jsonl"):
        tmp = folder / f".{name}.tmp"
        tmp.write_bytes((out / name).read_bytes())
        os.replace(tmp, folder / name)


def write_report(out: Path, cfg, command: str, plan: list[dict], evidence: dict, sources: list[str],
                 rows: list[dict], acc: dict, timings: dict) -> Path:
    """convergence.{jsonl,png,md} in `out`; returns the markdown path."""
    write_jsonl(out / "convergence.jsonl", rows)
    plot(rows, cfg.strategies, out / "convergence.png")
    t = cfg.train
    per_run = t.steps * t.micro_batch_size * cfg.data.seq_len
    done = len({r["run"] for r in rows})
    total = sum(timings.values())
    lines = [
        "# Convergence: RAD's layer choice against baseline choices", "",
        "```bash", command, "```", "",
        f"* runs finished: {done} of {len(plan)} "
        f"({len(cfg.strategies)} strategies x k in {cfg.ks} x init in {cfg.inits} x seeds {cfg.seeds})",
        "* compute time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in timings.items()) +
        f"; total {total / 60:.1f} min",
        f"* every run: {t.steps} steps x {t.micro_batch_size} sequences x {cfg.data.seq_len} tokens = {per_run} "
        f"tokens of GSM8K train (chat format, loss on answer tokens), peak LR "
        f"{', '.join(f'{i} {t.lr_for(i)}' for i in cfg.inits)} (per init; every strategy shares it) ({t.optim}), "
        f"trainable `{t.trainable}`, loss {t.loss or 'forward KL'} on the teacher's top-{t.top_k} (+ tail); "
        f"held-out KL / perplexity every {t.eval_every} steps on {cfg.data.held_out} held-out examples "
        "(answer tokens). Same data order for every strategy within a seed; the seed also sets the new layers' "
        "default init and the `random` set.",
        f"* probe evidence: {', '.join(f'`{s}`' for s in sources) or 'none needed'}", "",
        "## Convergence against `uniform`", "",
        "Target = `uniform`'s final held-out KL for the same k, init and seed. Tokens to target interpolate "
        "linearly between evaluations; 0 means the strategy starts at or below the target; `> N`: not reached "
        "within the N-token budget. Ratio = tokens(uniform) / tokens(strategy) per seed (`∞`: the strategy started "
        "below the target; `n/r`: it never reached it). The *trained* columns ignore the untrained start (step 0): "
        "they time the first evaluation after training began that is at or below the target. Values are mean ± "
        "sample sd over seeds when every seed is finite, else the per-seed values.", "",
        *table_lines(rows, cfg.strategies), "",
        "![held-out KL against tokens](convergence.png)", "",
        "## RAD against each baseline", "",
        "The same arithmetic with each baseline as the reference in turn: target = that baseline's final held-out KL "
        "(same k, init and seed), ratio = tokens(baseline) / tokens(rad). A ratio above 1 means RAD's layers reach "
        "the baseline's end point with fewer training tokens.", "",
        *rad_vs_lines(rows, cfg.strategies), "",
        "## Layers each strategy replaced", "", *layer_lines(plan, evidence), "",
        "## GSM8K accuracy", "", *accuracy_lines(acc, plan, cfg.strategies), "",
        "Raw metrics: `convergence.jsonl` (one line per training step and per evaluation of every run).", ""]
    md = out / "convergence.md"
    _write_atomic(md, "\n".join(lines))
    return md
