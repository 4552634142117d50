"""Chunked SSD (torch) vs the sequential recurrence, side by side in one run; on CUDA with mamba_ssm also the fused
kernel vs the torch chunked path. Prints a table of medians and the ratios, plus the max relative difference.

    python bench/ssm_scan.py [--lengths 512 2048 8192] [--heads 9] [--headdim 64] [--state 64] [--chunk 128]

Shape default: one SmolLM2-135M Mamba layer in the MIL layout (9 heads, head_dim = d_state = 64), batch 1.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rad_megatron.ssm.ssd import fused_available, ssd_chunked, ssd_scan, ssd_sequential_ref


def _time(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _inputs(l, h, p, n, device):
    g = torch.Generator().manual_seed(l)
    r = lambda *s: torch.randn(*s, generator=g).to(device)  # noqa: E731
    return dict(x=r(1, l, h, p), dt=r(1, l, h) - 1, A=-torch.rand(h, generator=g).to(device) - 0.1,
                B=r(1, l, h, n), C=r(1, l, h, n), D=r(h), dt_bias=r(h) * 0.5)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 8192])
    ap.add_argument("--heads", type=int, default=9)
    ap.add_argument("--headdim", type=int, default=64)
    ap.add_argument("--state", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    print(f"CPU threads {torch.get_num_threads()}, heads {a.heads}, headdim {a.headdim}, d_state {a.state}, "
          f"chunk {a.chunk}, median of {a.repeats}")
    print(f"{'L':>6} {'chunked s':>10} {'sequential s':>13} {'seq/chunked':>12} {'max rel diff':>13}")
    for l in a.lengths:
        args = _inputs(l, a.heads, a.headdim, a.state, "cpu")
        t_chunk = _time(lambda: ssd_chunked(chunk_size=a.chunk, **args), a.repeats)
        t_seq = _time(lambda: ssd_sequential_ref(**args), max(1, a.repeats // 2))
        y1, _ = ssd_chunked(chunk_size=a.chunk, **args)
        y2, _ = ssd_sequential_ref(**args)
        rel = ((y1 - y2).abs().max() / y2.abs().max()).item()
        print(f"{l:>6} {t_chunk:>10.4f} {t_seq:>13.4f} {t_seq / t_chunk:>12.1f} {rel:>13.2e}")
    if torch.cuda.is_available():
        probe = torch.zeros(1, device="cuda")
        if not fused_available(probe):
            print("CUDA present but mamba_ssm is not importable: no fused-kernel comparison")
            return
        print(f"\nCUDA {torch.cuda.get_device_name()}: mamba_ssm fused kernel vs torch chunked (fp32)")
        print(f"{'L':>6} {'fused s':>10} {'torch s':>10} {'torch/fused':>12} {'max rel diff':>13}")
        for l in a.lengths:
            args = _inputs(l, a.heads, a.headdim, a.state, "cuda")
            t_fused = _time(lambda: ssd_scan(chunk_size=a.chunk, **args), a.repeats)
            t_torch = _time(lambda: ssd_chunked(chunk_size=a.chunk, **args), a.repeats)
            y1, _ = ssd_scan(chunk_size=a.chunk, **args)
            y2, _ = ssd_chunked(chunk_size=a.chunk, **args)
            rel = ((y1 - y2).abs().max() / y2.abs().max()).item()
            print(f"{l:>6} {t_fused:>10.5f} {t_torch:>10.5f} {t_torch / t_fused:>12.1f} {rel:>13.2e}")


if __name__ == "__main__":
    main()
