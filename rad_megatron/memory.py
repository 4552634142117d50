"""Measured peak memory of a piece of work, on CPU and on CUDA, for benches and tests that check the planner.

torch keeps no allocator statistics for CPU tensors, so on CPU the peak comes from the profiler's memory events: every
CPU allocation and free while `fn` runs, in time order; their running sum's maximum is the most memory `fn` held at
once on top of what was alive before it. On CUDA the caching allocator's own peak counter gives the same quantity.
"""

from __future__ import annotations

import torch


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors` (views of one storage count once)."""
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())


def peak_bytes_during(fn, device: torch.device | str = "cpu") -> int:
    """Peak bytes allocated while `fn()` runs, above what was allocated when it started (on `device`)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak
