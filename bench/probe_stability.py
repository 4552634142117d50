"""Is the demo probe's choice stable? `make demo`'s probe settings (configs/demo_smollm2.yaml: 2 GSM8K test prompts x
16 new tokens, draft length 4, k=4, 6 trials) on SmolLM2-135M-Instruct, run on disjoint prompt pairs, each with the
default objective (`throughput`, greedy acceptance; alpha breaks its ties) and with `expected_throughput` (the cost
model with alpha). Writes <out>.json and <out>.md: per subset and objective the chosen set and the per-layer top-k,
and how many layers tie at the top under greedy acceptance alone.

    python bench/probe_stability.py --subsets 3 --out docs/results/probe_demo_stability
    # or one process per subset (on a shared machine they get more of it), then the combined report:
    python bench/probe_stability.py --only 1 ...; python bench/probe_stability.py --subsets 3 --combine ...
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

OBJECTIVES = ("throughput", "expected_throughput")


def _subset_report(model, prompts, settings, k, trials):
    from rad_megatron.probe.run import probe_per_layer, probe_search
    from rad_megatron.probe.score import rank_key

    t0 = time.perf_counter()
    per_layer = probe_per_layer(model, prompts, settings)
    out = {"layers": len(per_layer["per_layer"]),
           "ties_at_top_greedy": sum(t["throughput"] == max(x["throughput"] for x in per_layer["per_layer"])
                                     for t in per_layer["per_layer"]),
           "distinct_greedy": len({t["throughput"] for t in per_layer["per_layer"]}),
           "distinct_with_alpha": len({(t["throughput"], t["expected_acceptance"]) for t in per_layer["per_layer"]}),
           "per_layer": per_layer["per_layer"], "objectives": {}}
    for obj in OBJECTIVES:
        report = copy.deepcopy(per_layer)
        report["settings"]["objective"] = obj
        ranked = sorted(report["per_layer"], key=lambda t: rank_key(t, obj))
        report["per_layer_ranking"] = [t["skip"][0] for t in ranked]
        search = probe_search(model, prompts, k, trials, report)
        out["objectives"][obj] = {"top_k_by_per_layer": search["top_k_by_per_layer"],
                                  "chosen": search["chosen"]["skip"], "chosen_value": search["chosen"][obj]}
    out["seconds"] = time.perf_counter() - t0
    return out


def _markdown(result: dict, command: str) -> str:
    s = result["settings"]
    lines = ["# Is the demo probe's choice stable across prompt subsets?", "", "```bash", command, "```", "",
             f"SmolLM2-135M-Instruct, the demo's probe settings: {s['num_prompts']} GSM8K test prompts per subset "
             f"(disjoint pairs), {s['max_new_tokens']} new tokens, draft length {s['draft_len']}, k={s['k']}, "
             f"{s['trials']} search trials per objective; prompts 0-1 are `make demo`'s own.", "",
             *([f"Measured as {result['measured_as']}.", ""] if "measured_as" in result else []),
             "| prompts | layers tied at the top (greedy) | distinct per-layer scores: greedy / with alpha | "
             + " | ".join(f"{o}: per-layer top-{s['k']} | {o}: chosen" for o in OBJECTIVES) + " |",
             "|---|---:|---:|" + "---|---|" * len(OBJECTIVES)]
    for sub in result["subsets"]:
        cells = [f"{sub['objectives'][o]['top_k_by_per_layer']} | **{sub['objectives'][o]['chosen']}**"
                 for o in OBJECTIVES]
        lines.append(f"| {sub['prompts']} | {sub['ties_at_top_greedy']} | {sub['distinct_greedy']} / "
                     f"{sub['distinct_with_alpha']} of {sub['layers']} | " + " | ".join(cells) + " |")
    for o in OBJECTIVES:
        sets = [tuple(sub["objectives"][o]["chosen"]) for sub in result["subsets"]]
        common = set(sets[0]).intersection(*sets[1:])
        lines += ["", f"* `{o}`: {len(set(sets))} distinct chosen sets over {len(sets)} subsets; layers in every "
                  f"chosen set: {sorted(common) or 'none'}."]
    seconds = ", ".join(f"{sub['seconds']:.0f}" for sub in result["subsets"])
    lines += ["", f"Wall seconds per subset (per-layer probe + both searches): {seconds}, on 2 CPU cores shared with "
              f"other work (not a speed measurement)."]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", default=str(Path(__file__).resolve().parents[2] / "shared/data/gsm8k/test.jsonl"))
    ap.add_argument("--subsets", type=int, default=3)
    ap.add_argument("--num-prompts", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--out", default="docs/results/probe_demo_stability")
    ap.add_argument("--only", type=int, default=None, help="measure only this subset, into <out>.subset<I>.json")
    ap.add_argument("--combine", action="store_true", help="write <out>.json/.md from the --only files")
    a = ap.parse_args()
    if a.combine:
        parts = [json.loads(Path(f"{a.out}.subset{i}.json").read_text()) for i in range(a.subsets)]
        _write(a.out, {**parts[0], "subsets": [p["subsets"][0] for p in parts],
                       "measured_as": f"one process per subset (`--only 0` .. `--only {a.subsets - 1}`, at the same "
                                      f"time), combined by this command"})
        return

    import warnings

    warnings.filterwarnings("ignore")
    from rad_megatron.data.prompts import encode_prompts, read_prompts
    from rad_megatron.distributed import init_distributed
    from rad_megatron.probe.score import ProbeSettings
    from rad_megatron.settings import ModelSource
    from rad_megatron.study.run import load_base

    init_distributed()
    model, tok, _ = load_base(ModelSource())  # SmolLM2-135M-Instruct
    texts = read_prompts(a.prompts, limit=max(a.subsets, (a.only or 0) + 1) * a.num_prompts)
    settings = ProbeSettings(draft_len=4, max_new_tokens=a.max_new_tokens, eos_id=tok.eos_token_id)
    result = {"settings": {"num_prompts": a.num_prompts, "max_new_tokens": a.max_new_tokens, "draft_len": 4,
                           "k": a.k, "trials": a.trials, "prompts": a.prompts}, "subsets": []}
    for i in range(a.subsets) if a.only is None else [a.only]:
        lo = i * a.num_prompts
        prompts = encode_prompts(tok, texts[lo: lo + a.num_prompts])
        sub = _subset_report(model.eval(), prompts, settings, a.k, a.trials)
        result["subsets"].append({"prompts": f"{lo}-{lo + a.num_prompts - 1}", **sub})
        print(json.dumps({"subset": i, **{o: sub["objectives"][o]["chosen"] for o in OBJECTIVES},
                          "seconds": round(sub["seconds"])}), flush=True)
        # after every subset, so an interrupted run keeps what it measured
        _write(a.out if a.only is None else f"{a.out}.subset{a.only}", result, markdown=a.only is None)


def _write(stem: str, result: dict, markdown: bool = True) -> None:
    import sys

    from rad_megatron.probe.report import write_json_atomic

    write_json_atomic(Path(f"{stem}.json"), result)
    if markdown:
        command = "python bench/" + Path(__file__).name + " " + " ".join(sys.argv[1:])
        Path(f"{stem}.md").write_text(_markdown(result, command))

if __name__ == "__main__":
    main()
