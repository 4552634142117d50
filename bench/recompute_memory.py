"""Activation recompute: measured peak memory of one training step (forward + backward) with recompute none vs
selective vs full, side by side in one run, at a shape where activations dominate the step's memory.

The three models share their weights (one state dict) and their input; each step is measured with
`rad_megatron.memory.peak_bytes_during` (profiler memory events on CPU, the allocator's peak on CUDA) after a warm-up
step has created the gradients, so the peak is the step's activations and temporaries (memory does not depend on the
machine's load). Step times are measured without the profiler, modes interleaved (none, selective, full, none, ...),
so their ratios see the same load.

    python bench/recompute_memory.py [--hidden 256] [--blocks 6] [--seq 1024] [--batch 2] [--repeats 2]
                                     [--layout mamba,attention,...] [--device cpu|cuda] [--dtype fp32|bf16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

MODES = ("none", "selective", "full")


def _args(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--blocks", type=int, default=6)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--layout", default=None, help="per-block attention|mamba (default: alternating, Mamba first)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--json", default=None, help="also write the results here")
    return ap.parse_args(argv)


def _models(a):
    from rad_megatron.config import ModelConfig
    from rad_megatron.model import build_model

    layout = a.layout.split(",") if a.layout else ["mamba" if i % 2 == 0 else "attention" for i in range(a.blocks)]
    cfg = ModelConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=4 * a.hidden,
                      num_layers=len(layout), num_attention_heads=max(a.hidden // 64, 1),
                      num_kv_heads=max(a.hidden // 128, 1), max_position_embeddings=a.seq, layout=layout,
                      mamba={"chunk_size": 64})
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    torch.manual_seed(0)
    models = {m: build_model(cfg, dtype=dtype, recompute=m) for m in MODES}
    state = models["none"].state_dict()
    for m in models.values():
        m.load_state_dict(state)
        m.to(a.device).train()
    return cfg, models


def measure(a) -> dict:
    from rad_megatron.memory import peak_bytes_during
    from rad_megatron.model.forward import position_ids_for

    cfg, models = _models(a)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, a.vocab, (a.batch, a.seq), generator=g).to(a.device)
    labels = torch.randint(0, a.vocab, (a.batch, a.seq), generator=g).to(a.device)

    def step(model):
        loss = model(input_ids=ids, position_ids=position_ids_for(ids), attention_mask=None, labels=labels).mean()
        loss.backward()

    for m in MODES:  # warm-up: gradients (and any lazily built buffers) exist from here on
        step(models[m])
    peaks = {m: peak_bytes_during(lambda: step(models[m]), a.device) for m in MODES}
    times = {m: [] for m in MODES}
    for m in MODES:  # once more untimed: the first step after a profiled one is slow on CPU
        step(models[m])
    for _ in range(a.repeats):  # timed without the profiler, interleaved
        for m in MODES:
            if str(a.device).startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            step(models[m])
            if str(a.device).startswith("cuda"):
                torch.cuda.synchronize()
            times[m].append(time.perf_counter() - t0)
    weights = sum(p.numel() * p.element_size() for p in models["none"].parameters())
    return {"layout": cfg.layout, "hidden": a.hidden, "seq": a.seq, "batch": a.batch, "dtype": a.dtype,
            "device": str(a.device), "weight_bytes": weights,
            "peak_bytes": peaks,
            "step_s": {m: statistics.median(v) for m, v in times.items()}}


def report(r: dict) -> str:
    base_mem, base_t = r["peak_bytes"]["none"], r["step_s"]["none"]
    lines = [f"layout {','.join(b[0].upper() for b in r['layout'])} (A = attention, M = Mamba; each block + MLP), "
             f"hidden {r['hidden']}, seq {r['seq']}, batch {r['batch']}, {r['dtype']} on {r['device']}; weights "
             f"{r['weight_bytes'] / 2**20:.1f} MiB. Peak = memory allocated during forward + backward above what "
             f"was live before it (activations and temporaries); modes interleaved in one run.",
             f"{'recompute':>10} {'peak MiB':>10} {'peak / none':>12} {'step s':>8} {'time / none':>12}"]
    for m in MODES:
        p, t = r["peak_bytes"][m], r["step_s"][m]
        lines.append(f"{m:>10} {p / 2**20:>10.1f} {p / base_mem:>12.3f} {t:>8.3f} {t / base_t:>12.2f}")
    return "\n".join(lines)


def main(argv=None):
    a = _args(argv)
    from rad_megatron.distributed import ParallelConfig, init_distributed

    init_distributed(ParallelConfig(tp=1))
    r = measure(a)
    print(report(r))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=1)
    return r


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore")
    main()
