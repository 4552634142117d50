"""The study report's markdown tables: RAD against each baseline, each strategy's end point, the LR sweep, the layers
each strategy replaced beside every layer's evidence, and GSM8K accuracy."""

from __future__ import annotations

import math

from rad_megatron.study.metrics import Comparison, fmt, fmt_ci

VERDICT = {"win": "RAD faster", "tie": "tie", "loss": "RAD slower"}


def fmt_ratio(t: tuple[float, float, float]) -> str:
    """A ratio and its interval; 0 (rad never reached the target) reads `n/r`."""
    def one(v):
        return "n/r" if v == 0 else fmt(v, ".2f")

    return f"{one(t[0])} [{one(t[1])}, {one(t[2])}]"


def comparison_lines(cells: dict[tuple, list[Comparison]]) -> list[str]:
    lines = ["| k | init | baseline | seeds | baseline final KL | rad final KL | baseline - rad | tokens to target: "
             "baseline | tokens to target: rad | ratio baseline / rad | verdict |",
             "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for (k, init), comps in sorted(cells.items()):
        for c in comps:
            lines.append(f"| {k} | {init} | {c.baseline} | {','.join(map(str, c.seeds))} | {fmt_ci(c.base_final)} | "
                         f"{fmt_ci(c.rad_final)} | {fmt_ci(c.diff)} | {fmt(c.t_base, '.0f')} | "
                         f"{fmt(c.t_rad, '.0f')} | {fmt_ratio(c.ratio)} | {VERDICT[c.verdict]} |")
    return lines


def strategy_lines(finals: dict[tuple, dict], seeds: dict[tuple, list[int]], strategies: list[str]) -> list[str]:
    """One row per (k, init, strategy): start and final held-out KL and final perplexity with intervals."""
    order = {s: i for i, s in enumerate(strategies)}
    lines = ["| k | init | strategy | seeds | held-out KL at step 0 | final held-out KL | final held-out ppl |",
             "|---:|---|---|---|---:|---:|---:|"]
    for (s, k, init), v in sorted(finals.items(), key=lambda x: (x[0][1], x[0][2], order.get(x[0][0], 99))):
        lines.append(f"| {k} | {init} | {s} | {','.join(map(str, seeds[(s, k, init)]))} | {fmt_ci(v['start_kl'])} | "
                     f"{fmt_ci(v['final_kl'])} | {fmt_ci(v['final_ppl'], '.2f')} |")
    return lines


def lr_lines(chosen: list[dict]) -> list[str]:
    lrs = sorted({float(lr) for c in chosen for lr in c["tail_loss"]})
    lines = ["| strategy | init | " + " | ".join(f"{lr:.0e}" for lr in lrs) + " | kept |",
             "|---|---|" + "---:|" * len(lrs) + "---:|"]
    for c in chosen:
        losses = {float(lr): v for lr, v in c["tail_loss"].items()}
        cells = [("" if lr not in losses else f"**{losses[lr]:.4f}**" if lr == c["lr"] else f"{losses[lr]:.4f}")
                 for lr in lrs]
        lines.append(f"| {c['strategy']} | {c['init']} | " + " | ".join(cells) + f" | {c['lr']:.0e} |")
    return lines


def layer_lines(grid: list[dict]) -> list[str]:
    sets: dict[tuple, set] = {}
    for p in grid:
        sets.setdefault((p["strategy"], p["k"], tuple(p["layers"])), set()).add(p["seed"])
    lines = ["| strategy | k | layers (seeds) |", "|---|---:|---|"]
    for (s, k, layers), seeds in sorted(sets.items(), key=lambda x: (x[0][1], x[0][0], x[0][2])):
        lines.append(f"| {s} | {k} | {list(layers)} (seeds {sorted(seeds)}) |")
    return lines


def evidence_lines(probe: dict, grid: list[dict]) -> list[str]:
    """Every attention layer: its probe score and alpha skipped alone, the three heuristics, who picked it."""
    obj = probe.get("settings", {}).get("objective", "throughput")
    per = {t["skip"][0]: t for t in probe.get("per_layer", [])}
    heur = probe.get("redundancy", {})
    rank = {b: i + 1 for i, b in enumerate(probe.get("per_layer_ranking", []))}
    pickers: dict[int, set] = {}
    for p in grid:
        for b in p["layers"]:
            pickers.setdefault(b, set()).add(f"{p['strategy']}@k{p['k']}")
    lines = [f"| layer | probe {obj} | alpha | probe rank | kl (generated) | bi | attn-sim | picked by |",
             "|---:|---:|---:|---:|---:|---:|---:|---|"]
    for b in sorted(per):
        t = per[b]

        def h(name):
            v = heur.get(name, {}).get(str(b))
            return "" if v is None else f"{v:.4f}"

        alpha = t.get("expected_acceptance")
        lines.append(f"| {b} | {t[obj]:.3f} | {'' if alpha is None else f'{alpha:.4f}'} | {rank.get(b, '')} | "
                     f"{h('kl')} | {h('bi')} | {h('attn_sim')} | {', '.join(sorted(pickers.get(b, [])))} |")
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


