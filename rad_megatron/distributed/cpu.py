"""The smallest set of patches that lets Megatron-Core 0.19.2 run on CPU (gloo).

Megatron-Core has no CPU path: a few calls hard-code CUDA. Each shim below replaces exactly one such call, is applied
only when no CUDA device is present (`apply_cpu_shims` is called by `init_distributed` on CPU), is idempotent, and is
covered by a test in tests/unit/test_cpu_shims.py. On a GPU none of them is applied.

| shim            | Megatron call that breaks on CPU                                  | replacement                        |
|-----------------|-------------------------------------------------------------------|------------------------------------|
| rng_tracker     | CudaRNGStatesTracker.add/fork and activation recompute use         | a tracker over CPU generator states|
|                 | torch.cuda.get_rng_state                                          |                                    |
| current_device  | RotaryEmbedding / MambaMixer place tensors on                     | torch.cuda.current_device -> "cpu" |
|                 | torch.cuda.current_device()                                       |                                    |
| causal_mask     | fused_softmax falls back to get_default_causal_mask(device="cuda")| the same mask built on CPU         |
| final_norm      | HybridStack.final_norm is a hard-coded TENorm (needs TE)          | model.norm.RMSNorm (fp32 stats, SP)|
| cuda_sync       | dist_checkpointing's writer calls torch.cuda.synchronize          | no-op (CPU work is synchronous)    |
|                 | (and the optimizer torch.cuda.empty_cache)                        |                                    |

One more, scoped rather than global: `megatron_cuda_on_cpu()` wraps the calls into Megatron's DDP and optimizer
(buffers and flags created with device='cuda', `.cuda()` copies, `param.type() == 'torch.cuda.FloatTensor'` asserts,
`torch.cuda.current_stream()` in the grad sync). It is a context manager so that nothing else in the process sees
CPU tensors reporting a CUDA type.
"""

from __future__ import annotations

import contextlib

import torch

_APPLIED: set[str] = set()
_ORIGINALS: dict[str, object] = {}  # what each shim replaced, kept so tests can show the original fails on CPU


class CPURNGStatesTracker:
    """Megatron's RNG-tracker contract (add / fork / get_states / set_states / reset) over CPU generator states.

    Forking swaps the global CPU generator state in and out, which is what CudaRNGStatesTracker does with the CUDA
    generator, so dropout inside tensor-parallel regions stays reproducible per TP rank.
    """

    def __init__(self, *args, **kwargs):
        self.reset()

    def reset(self):
        self.states_: dict[str, torch.Tensor] = {}
        self.seeds_: set[int] = set()
        self._is_initialized = False

    def is_initialized(self):
        return self._is_initialized

    def get_states(self):
        return dict(self.states_)

    def set_states(self, states):
        self._is_initialized = True
        self.states_ = dict(states)

    def add(self, name, seed):
        self._is_initialized = True
        if seed in self.seeds_:
            raise Exception(f"seed {seed} already exists")
        if name in self.states_:
            raise Exception(f"rng state {name} already exists")
        self.seeds_.add(seed)
        self.states_[name] = torch.Generator().manual_seed(seed).get_state()

    @contextlib.contextmanager
    def fork(self, name="model-parallel-rng"):
        if name not in self.states_:
            raise Exception(f"rng state {name} is not added")
        outer = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(outer)


def _shim_rng_tracker():
    from megatron.core.tensor_parallel import random as mrandom

    _ORIGINALS["rng_tracker"] = mrandom.CudaRNGStatesTracker
    mrandom._CUDA_RNG_STATE_TRACKER = CPURNGStatesTracker()
    mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED = True
    # Activation recompute (CheckpointFunction) saves and restores "the CUDA RNG state" around the recomputed forward.
    mrandom._get_cuda_rng_state = lambda *a, **k: torch.get_rng_state()
    mrandom._set_cuda_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    # model_parallel_cuda_manual_seed re-initialises the tracker; keep ours.
    mrandom.initialize_rng_tracker = lambda *a, **k: None


def _shim_current_device():
    _ORIGINALS["current_device"] = torch.cuda.current_device
    torch.cuda.current_device = lambda: "cpu"


def _cpu_causal_mask(sq: int) -> torch.Tensor:
    return torch.triu(torch.ones(sq, sq, dtype=torch.bool), diagonal=1)


def _shim_causal_mask():
    from megatron.core.fusions import fused_softmax
    from megatron.core.transformer import utils

    _ORIGINALS["causal_mask"] = utils.get_default_causal_mask
    utils.get_default_causal_mask = _cpu_causal_mask
    fused_softmax.get_default_causal_mask = _cpu_causal_mask


def _shim_final_norm():
    from megatron.core.models.hybrid import hybrid_block

    from rad_megatron.model.norm import RMSNorm  # the local spec's norm: fp32 statistics, sequence-parallel ready

    _ORIGINALS["final_norm"] = hybrid_block.TENorm
    hybrid_block.TENorm = RMSNorm


def _shim_cuda_sync():
    _ORIGINALS["cuda_sync"] = torch.cuda.synchronize
    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.empty_cache = lambda *a, **k: None


class _CudaOnCpuMode(torch.overrides.TorchFunctionMode):
    """Inside the mode: device='cuda' (or a CUDA index) becomes 'cpu', `.cuda()` returns the tensor itself, and
    `Tensor.type()` names the CUDA type Megatron's optimizer asserts on."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return name if name.startswith("torch.cuda.") else name.replace("torch.", "torch.cuda.", 1)
        dev = kwargs.get("device")
        if dev is not None and (isinstance(dev, int) or str(dev).startswith("cuda")):
            kwargs = {**kwargs, "device": "cpu"}
        return func(*args, **kwargs)


class _NullStream:
    def wait_stream(self, *args):
        pass

    def synchronize(self):
        pass


@contextlib.contextmanager
def megatron_cuda_on_cpu():
    """Run Megatron's DDP / optimizer code on CPU tensors (no-op when CUDA is available)."""
    if torch.cuda.is_available():
        yield
        return
    saved = torch.cuda.current_stream
    torch.cuda.current_stream = lambda *a, **k: _NullStream()
    try:
        with _CudaOnCpuMode():
            yield
    finally:
        torch.cuda.current_stream = saved


CPU_SHIMS = {
    "rng_tracker": _shim_rng_tracker,
    "current_device": _shim_current_device,
    "causal_mask": _shim_causal_mask,
    "final_norm": _shim_final_norm,
    "cuda_sync": _shim_cuda_sync,
}


def te_available() -> bool:
    try:
        import transformer_engine  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available()


def apply_cpu_shims() -> list[str]:
    """Apply every shim not yet applied; returns the names applied by this call. No-op on a CUDA machine."""
    if torch.cuda.is_available():
        return []
    done = []
    for name, shim in CPU_SHIMS.items():
        if name not in _APPLIED:
            shim()
            _APPLIED.add(name)
            done.append(name)
    return done


def apply_no_te_shims() -> None:
    """Without Transformer Engine (CPU, or a GPU box without TE) the hybrid stack's final norm must be torch's."""
    if not te_available() and "final_norm" not in _APPLIED:
        _shim_final_norm()
        _APPLIED.add("final_norm")
