"""Search throughput with data-parallel replicas: the same probe search at DP=1 and DP=2 (tp=1, gloo, one thread per
rank, so each replica has one core as it would have one GPU), side by side in one run; prints trials per wall-clock
second of each and their ratio.

    python bench/probe_dp.py [--trials 16] [--layers 8] [--hidden 128] [--max-new-tokens 48]

A small random Llama (char tokenizer) keeps it short; every rank evaluates whole skip sets, so the ideal is 2.0.
Replicas take their next set as soon as they finish (no rounds), and the Bayesian optimiser proposes on rank 0 while
they evaluate; its proposal time is printed because on a model this small it is not negligible next to an
evaluation (on SmolLM2 an evaluation takes ~30 s, a proposal well under 1 s).

Seconds per set are printed too: they show what the two replicas share besides the queue. On a 2-core VM with one
32 MiB L3, two replicas of the default model (5 MiB of weights each) run within ~8% of one replica's speed; at
--hidden 256 (21 MiB each, 42 MiB for two) every evaluation slows by ~40% from cache misses alone, and the ratio drops
with it (docs/results/probe_dp.md), which GPUs (a replica per device) do not share.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(nproc, hf, prompts, out, trials, max_new_tokens):
    from tests.helpers import free_port

    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--master-port={free_port()}",
           "-m",
           "rad_megatron", "probe", "--hf", str(hf), "--prompts", str(prompts), "--k", "2", "--trials",
           str(trials), "--max-new-tokens", str(max_new_tokens), "--no-eos", "--out", str(out), "--force"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run(cmd, check=True, env=env, capture_output=True, cwd=ROOT)
    report = json.loads(out.read_text())
    return report


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    a = ap.parse_args()
    print(f"model: {a.layers} layers, hidden {a.hidden}; {a.trials} search trials, k=2", flush=True)
    sys.path.insert(0, str(ROOT))
    from tests.helpers import tiny_hf_llama

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        hf = tiny_hf_llama(d / "hf", seed=0, num_hidden_layers=a.layers, hidden_size=a.hidden,
                           intermediate_size=2 * a.hidden)
        prompts = d / "prompts.txt"
        prompts.write_text("the cat sat on\none two three\nhello world\nabc def\n")
        rows = []
        for nproc in (1, 2):
            t0 = time.perf_counter()
            report = run(nproc, hf, prompts, d / f"dp{nproc}.json", a.trials, a.max_new_tokens)
            wall = time.perf_counter() - t0
            n = len(report["trials"]) + len(report["per_layer"]) + 1
            rows.append((nproc, n, report["seconds"]["total"], n / report["seconds"]["total"], wall,
                         report["seconds"]["per_layer"], report["seconds"]["total"] - report["seconds"]["per_layer"],
                         len(report["trials"]), report["seconds"].get("search_propose", float("nan"))))
    print(f"{'DP':>3} {'sets evaluated':>15} {'probe s':>9} {'sets/s':>8} {'per-layer s':>12} {'search s':>9} "
          f"{'trials/s':>9} {'s per set per replica':>22} {'BO propose s':>13} {'process wall s':>15}")
    for r in rows:
        print(f"{r[0]:>3} {r[1]:>15} {r[2]:>9.1f} {r[3]:>8.3f} {r[5]:>12.1f} {r[6]:>9.1f} {r[7] / r[6]:>9.3f} "
              f"{r[2] * r[0] / r[1]:>22.2f} {r[8]:>13.1f} {r[4]:>15.1f}")
    print(f"DP=2 / DP=1 sets evaluated per second (whole probe): {rows[1][3] / rows[0][3]:.2f}")
    print(f"DP=2 / DP=1 search trials per second: {(rows[1][7] / rows[1][6]) / (rows[0][7] / rows[0][6]):.2f}")


if __name__ == "__main__":
    main()
