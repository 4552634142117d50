"""Cached decoding on the local spec: our attention (SDPA reading grouped K/V in place, RoPE applied once per cached
key, last-position logits in the prefill) against Megatron-Core's own classes, side by side on one loaded model.

    python bench/decode.py [--hf PATH] [--batch 100] [--prompt 150] [--steps 8] [--repeats 3]

Default model: SmolLM2-135M-Instruct (embedded). Both implementations share the weights: the reference is the same
model with its attention modules switched back to their Megatron parent classes (ours add no state). Prints median
seconds of a prefill and of one decode step, the ratios, and whether both chose the same greedy tokens.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from megatron.core.transformer.attention import SelfAttention
from megatron.core.transformer.dot_product_attention import DotProductAttention

from rad_megatron.inference.engine import InferenceSession
from rad_megatron.model.attention import RopeCachedSelfAttention, SDPAAttention

PARENTS = {RopeCachedSelfAttention: SelfAttention, SDPAAttention: DotProductAttention}


@contextlib.contextmanager
def megatron_reference(model):
    """Switch our attention modules to the Megatron classes they extend, for the duration."""
    switched = [(m, type(m)) for m in model.modules() if type(m) in PARENTS]
    for m, cls in switched:
        m.__class__ = PARENTS[cls]
    try:
        yield
    finally:
        for m, cls in switched:
            m.__class__ = cls


def _decode(model, prompt: torch.Tensor, steps: int, last_only: bool):
    """(prefill seconds, median decode-step seconds, greedy tokens) for one fresh session."""
    session = InferenceSession(model, prompt.shape[0], prompt.shape[1] + steps)
    t0 = time.perf_counter()
    logits = session.feed(prompt, last_only=last_only)[:, -1]
    prefill = time.perf_counter() - t0
    tokens, times = [], []
    for _ in range(steps):
        tok = logits.argmax(-1, keepdim=True)
        tokens.append(tok)
        t0 = time.perf_counter()
        logits = session.feed(tok)[:, -1]
        times.append(time.perf_counter() - t0)
    return prefill, statistics.median(times), torch.cat(tokens, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hf", default=None, help="HF Llama folder or .gguf (default: embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--prompt", type=int, default=150, help="prompt tokens per row")
    ap.add_argument("--steps", type=int, default=8, help="decode steps timed per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()

    from rad_megatron.checkpoint.hf_import import model_from_hf
    from rad_megatron.checkpoint.hf_source import resolve
    from rad_megatron.distributed import ParallelConfig, init_distributed

    init_distributed(ParallelConfig(tp=1, seed=0))
    model, _ = model_from_hf(resolve(a.hf))
    model.eval()
    cfg = model.rad_config
    prompt = torch.randint(0, cfg.vocab_size, (a.batch, a.prompt), generator=torch.Generator().manual_seed(0))
    print(f"{cfg.num_layers} layers, {cfg.num_attention_heads} heads / {cfg.num_kv_heads} KV groups, batch {a.batch}, "
          f"prompt {a.prompt}, {a.steps} steps, median of {a.repeats}, {torch.get_num_threads()} CPU threads")
    runs = {"megatron": [], "ours": []}
    for _ in range(a.repeats):  # interleaved, so drifting machine load hits both alike
        with megatron_reference(model):
            runs["megatron"].append(_decode(model, prompt, a.steps, last_only=False))
        runs["ours"].append(_decode(model, prompt, a.steps, last_only=True))
    med = {k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v)) for k, v in runs.items()}
    same = all(torch.equal(r[2], runs["megatron"][0][2]) for r in runs["ours"])
    print(f"{'':10} {'prefill s':>10} {'decode step s':>14}")
    for k, (p, d) in med.items():
        print(f"{k:10} {p:10.2f} {d:14.3f}")
    print(f"megatron/ours: prefill {med['megatron'][0] / med['ours'][0]:.2f}x, decode step "
          f"{med['megatron'][1] / med['ours'][1]:.2f}x; identical greedy tokens: {same}")


if __name__ == "__main__":
    main()
