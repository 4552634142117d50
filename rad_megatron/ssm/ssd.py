"""The Mamba-2 state-space-dual (SSD) scan: a chunked pure-torch implementation, its sequential reference, one decode
step, and dispatch to mamba_ssm's fused kernels when they can run (CUDA tensors and mamba_ssm's Triton SSD kernels
importable: see _import_fused_scan).

Shapes (per-head B and C: group->head expansion happens in the mixer):
    x  [b, l, h, p]     inputs per head          dt [b, l, h]   step sizes (before softplus if dt_softplus)
    A  [h]              negative decay rates     B, C [b, l, h, n]
    D  [h] or None      skip connection          z  [b, l, h, p] or None: y <- y * silu(z)
    initial_state [b, h, p, n] or None
Returns y [b, l, h, p] and the final state [b, h, p, n].

The recurrence, per head:  S_t = exp(dt_t A) S_{t-1} + dt_t x_t B_t^T,   y_t = S_t C_t + D x_t.
"""

from __future__ import annotations

import importlib.util
import sys
import types

import torch
import torch.nn.functional as F


def _import_fused_scan():
    """(mamba_ssm's fused Triton SSD scan or None, how it was found). The scan needs Triton only, but mamba_ssm's
    package __init__ also imports its CUDA selective-scan extension (Mamba-1) and Mamba-3's kernels; an install built
    without them (MAMBA_SKIP_CUDA_BUILD=TRUE, as bench/gpu_check.sh does) fails there. Then the Triton modules are
    imported under a bare `mamba_ssm` package that skips that __init__."""
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
        return mamba_chunk_scan_combined, "mamba_ssm"
    except Exception:  # noqa: BLE001 - any import failure (missing CUDA extension included) means "not this way"
        pass
    try:
        spec = importlib.util.find_spec("mamba_ssm")
    except Exception:  # noqa: BLE001
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None, "not installed"
    sys.modules.pop("mamba_ssm", None)
    pkg = types.ModuleType("mamba_ssm")
    pkg.__path__, pkg.__spec__ = list(spec.submodule_search_locations), spec
    sys.modules["mamba_ssm"] = pkg
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
        return mamba_chunk_scan_combined, "mamba_ssm Triton kernels only (package __init__ skipped)"
    except Exception as e:  # noqa: BLE001
        sys.modules.pop("mamba_ssm", None)
        return None, f"not importable ({type(e).__name__}: {str(e)[:100]})"


_mamba_chunk_scan_combined, FUSED_SCAN_SOURCE = _import_fused_scan()


def _prepare_dt(dt, dt_bias, dt_softplus):
    dt = dt.float()
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    return F.softplus(dt) if dt_softplus else dt


def _finish(y, x, D, z):
    if D is not None:
        y = y + x.float() * D.float()[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    return y


def _segsum(x: torch.Tensor) -> torch.Tensor:
    """out[..., i, j] = sum(x[..., j+1 : i+1]) for j <= i, -inf above the diagonal (log of the causal decay)."""
    T = x.size(-1)
    x = x[..., None].expand(*x.shape, T)  # [..., i(T), j(T)] holds x[..., i]
    below = torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device), -1)
    x = x.masked_fill(~below, 0)
    seg = torch.cumsum(x, dim=-2)
    diag_and_below = torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device), 0)
    return seg.masked_fill(~diag_and_below, float("-inf"))


def ssd_chunked(x, dt, A, B, C, chunk_size=128, D=None, z=None, dt_bias=None, dt_softplus=True,
                initial_state=None):
    """Chunked SSD in pure torch, fp32 inside: O(l * chunk) work, exact (no approximation) up to rounding."""
    b, l, h, p = x.shape
    n = B.shape[-1]
    dt = _prepare_dt(dt, dt_bias, dt_softplus)
    T = min(chunk_size, l) if l > 0 else 1
    pad = (-l) % T
    xs, Bs, Cs = x.float(), B.float(), C.float()
    if pad:  # dt=0 on padding: no decay and no input, so the final state is unchanged
        xs, Bs, Cs = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (xs, Bs, Cs))
        dt = F.pad(dt, (0, 0, 0, pad))
    c = (l + pad) // T
    X = (xs * dt[..., None]).view(b, c, T, h, p)
    Bc, Cc = Bs.view(b, c, T, h, n), Cs.view(b, c, T, h, n)
    A_dt = (dt * A.float()).view(b, c, T, h).permute(0, 3, 1, 2)  # [b, h, c, T]
    A_cum = torch.cumsum(A_dt, dim=-1)

    # 1. within each chunk: a masked, decayed "attention" of C against B
    decay = torch.exp(_segsum(A_dt))  # [b, h, c, T, T]
    scores = torch.einsum("bclhn,bcshn->bhcls", Cc, Bc) * decay
    y = torch.einsum("bhcls,bcshp->bclhp", scores, X)

    # 2. each chunk's contribution to the state at its end
    decay_to_end = torch.exp(A_cum[..., -1:] - A_cum)  # [b, h, c, T]
    chunk_states = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bc, decay_to_end, X)

    # 3. carry states across chunks (c is small: l / chunk)
    h0 = torch.zeros(b, 1, h, p, n, dtype=torch.float32, device=x.device) if initial_state is None \
        else initial_state.float()[:, None]
    states = torch.cat([h0, chunk_states], dim=1)  # [b, c+1, h, p, n]
    chunk_decay = torch.exp(_segsum(F.pad(A_cum[..., -1], (1, 0))))  # [b, h, c+1, c+1]
    states = torch.einsum("bhzc,bchpn->bzhpn", chunk_decay, states)
    entering, final_state = states[:, :-1], states[:, -1]

    # 4. the state entering each chunk, read out by C with the decay inside the chunk
    y = y + torch.einsum("bclhn,bchpn,bhcl->bclhp", Cc, entering, torch.exp(A_cum))
    y = y.reshape(b, c * T, h, p)[:, :l]
    return _finish(y, x, D, z), final_state


def ssd_sequential_ref(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=True, initial_state=None):
    """The recurrence one token at a time (fp32). Slow; the reference the chunked scan is tested against."""
    b, l, h, p = x.shape
    dt = _prepare_dt(dt, dt_bias, dt_softplus)
    state = torch.zeros(b, h, p, B.shape[-1], dtype=torch.float32, device=x.device) if initial_state is None \
        else initial_state.float().clone()
    ys = []
    for t in range(l):
        y_t, state = _step(x[:, t].float(), dt[:, t], A.float(), B[:, t].float(), C[:, t].float(), state)
        ys.append(y_t)
    y = torch.stack(ys, dim=1) if ys else x.new_zeros(b, 0, h, p, dtype=torch.float32)
    return _finish(y, x, D, z), state


def _step(x, dt, A, B, C, state):
    dA = torch.exp(dt * A)  # [b, h]
    state = state * dA[..., None, None] + (dt[..., None] * x)[..., None] * B[:, :, None, :]
    return torch.einsum("bhpn,bhn->bhp", state, C), state


def ssd_step(x, dt, A, B, C, state, D=None, z=None, dt_bias=None, dt_softplus=True):
    """One decode step: x [b, h, p], dt [b, h], B/C [b, h, n], state [b, h, p, n] (updated in place).

    A contiguous fp32 state (what the mixer allocates) is decayed and updated in place with one batched
    rank-1 update, with no state-sized temporaries: the state is the largest tensor a Mamba decode step touches.
    """
    dt = _prepare_dt(dt, dt_bias, dt_softplus)
    if state.dtype == torch.float32 and state.is_contiguous():
        b, h, p, n = state.shape
        flat = state.view(b * h, p, n)
        flat.mul_(torch.exp(dt * A.float()).view(b * h, 1, 1))
        flat.baddbmm_((dt[..., None] * x.float()).reshape(b * h, p, 1), B.float().reshape(b * h, 1, n))
        y = torch.bmm(flat, C.float().reshape(b * h, n, 1)).view(b, h, p)
    else:
        y, new_state = _step(x.float(), dt, A.float(), B.float(), C.float(), state.float())
        state.copy_(new_state)
    y = y[:, None]
    return _finish(y, x[:, None], D, None if z is None else z[:, None])[:, 0]


def fused_available(t: torch.Tensor) -> bool:
    return _mamba_chunk_scan_combined is not None and t.is_cuda


def ssd_scan(x, dt, A, B, C, chunk_size=128, D=None, z=None, dt_bias=None, initial_state=None):
    """The scan the mixer calls: mamba_ssm's fused kernel on CUDA when importable, else the torch chunked SSD."""
    if fused_available(x):
        y, final = _mamba_chunk_scan_combined(
            x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias, dt_softplus=True,
            initial_states=initial_state, return_final_states=True)
        return y, final
    return ssd_chunked(x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias, initial_state=initial_state)
