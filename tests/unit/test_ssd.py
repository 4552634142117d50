"""Chunked SSD == sequential recurrence (fp32, relative error <= 1e-5) over random shapes, with initial state, D,
z-gating and dt_bias; the one-token step == the recurrence; the gated RMSNorm == its definition."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from rad_megatron.ssm.norm import gated_rms_norm
from rad_megatron.ssm.ssd import ssd_chunked, ssd_sequential_ref, ssd_step

REL_TOL = 1e-5


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def _inputs(b, l, h, p, n, seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(x=r(b, l, h, p), dt=r(b, l, h) - 1.0, A=-torch.rand(h, generator=g) * 4 - 0.1, B=r(b, l, h, n),
                C=r(b, l, h, n), D=r(h), z=r(b, l, h, p), dt_bias=r(h) * 0.5, initial_state=r(b, h, p, n))


CASES = list(itertools.product([1, 2], [1, 5, 16, 37, 100], [16, 32]))


@pytest.mark.parametrize("b,l,chunk", CASES)
def test_chunked_equals_sequential(b, l, chunk):
    args = _inputs(b, l, h=3, p=4, n=8, seed=b * 1000 + l + chunk)
    y, state = ssd_chunked(chunk_size=chunk, **args)
    y_ref, state_ref = ssd_sequential_ref(**args)
    assert _rel(y, y_ref) <= REL_TOL and _rel(state, state_ref) <= REL_TOL


def test_chunked_without_optional_inputs():
    args = _inputs(2, 50, 2, 8, 16, seed=7)
    for k in ("D", "z", "dt_bias", "initial_state"):
        args[k] = None
    y, s = ssd_chunked(chunk_size=16, **args)
    y_ref, s_ref = ssd_sequential_ref(**args)
    assert _rel(y, y_ref) <= REL_TOL and _rel(s, s_ref) <= REL_TOL


def test_step_equals_sequential():
    a = _inputs(2, 6, 3, 4, 8, seed=3)
    state = a["initial_state"].clone()
    ys = [ssd_step(a["x"][:, t], a["dt"][:, t], a["A"], a["B"][:, t], a["C"][:, t], state, D=a["D"], z=a["z"][:, t],
                   dt_bias=a["dt_bias"]) for t in range(6)]
    y_ref, s_ref = ssd_sequential_ref(**a)
    assert _rel(torch.stack(ys, 1), y_ref) <= REL_TOL and _rel(state, s_ref) <= REL_TOL


def test_chunked_is_linear_in_length_not_quadratic():
    """The chunked form never builds an l x l matrix: its largest intermediate is l * chunk."""
    args = _inputs(1, 512, 1, 2, 2, seed=0)
    peak = {}
    orig = torch.einsum

    def spy(eq, *ts):
        out = orig(eq, *ts)
        peak["n"] = max(peak.get("n", 0), out.numel())
        return out

    torch.einsum = spy
    try:
        ssd_chunked(chunk_size=16, **args)
    finally:
        torch.einsum = orig
    assert peak["n"] <= 512 * 16 * 2 * 4


def test_gated_rms_norm_matches_definition():
    y, z, w = torch.randn(2, 3, 8), torch.randn(2, 3, 8), torch.rand(8) + 0.5
    out = gated_rms_norm(y, z, w, group_size=4, eps=1e-5)
    g = (y * F.silu(z)).view(2, 3, 2, 4)
    ref = (g / torch.sqrt(g.pow(2).mean(-1, keepdim=True) + 1e-5)).view(2, 3, 8) * w
    assert torch.allclose(out, ref, atol=1e-6)


# ---- document resets (packed sequences): seq_idx zeroes the state at every boundary ------------------------------
def _seq_idx(b, l, seed):
    """Random document ids per row: 0..k, non-decreasing, boundaries anywhere (also at chunk edges)."""
    g = torch.Generator().manual_seed(seed)
    starts = (torch.rand(b, l, generator=g) < 0.15).long()
    starts[:, 0] = 0
    return starts.cumsum(-1)


@pytest.mark.parametrize("b,l,chunk", [(1, 37, 16), (2, 100, 16), (2, 64, 32), (3, 5, 16)])
def test_chunked_with_resets_equals_sequential_with_resets(b, l, chunk):
    args = _inputs(b, l, h=3, p=4, n=8, seed=l + chunk)
    seq_idx = _seq_idx(b, l, seed=l)
    seq_idx[0, chunk % l] = seq_idx[0, chunk % l - 1] + 1 if chunk < l else seq_idx[0, 0]  # a boundary on a chunk edge
    seq_idx = torch.cummax(seq_idx, dim=-1).values
    y, state = ssd_chunked(chunk_size=chunk, seq_idx=seq_idx, **args)
    y_ref, state_ref = ssd_sequential_ref(seq_idx=seq_idx, **args)
    assert _rel(y, y_ref) <= REL_TOL and _rel(state, state_ref) <= REL_TOL


def test_resets_equal_separate_documents():
    """Packed documents with seq_idx == each document alone from a zero state (the first one from the initial
    state), and the final state is the last document's."""
    args = _inputs(1, 45, h=2, p=4, n=8, seed=11)
    bounds = [0, 7, 8, 30, 45]  # a one-token document too
    seq_idx = torch.zeros(1, 45, dtype=torch.long)
    for i, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
        seq_idx[:, s:e] = i
    y, final = ssd_chunked(chunk_size=16, seq_idx=seq_idx, **args)
    for i, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
        part = {k: (v[:, s:e] if k in ("x", "dt", "B", "C", "z") else v) for k, v in args.items()}
        if i:
            part["initial_state"] = None
        y_doc, s_doc = ssd_chunked(chunk_size=16, **part)
        assert _rel(y[:, s:e], y_doc) <= REL_TOL
    assert _rel(final, s_doc) <= REL_TOL


def test_resets_gradients_match_sequential():
    args = _inputs(2, 40, h=2, p=4, n=8, seed=5)
    seq_idx = _seq_idx(2, 40, seed=9)
    grads = []
    for fn in (lambda a: ssd_chunked(chunk_size=16, seq_idx=seq_idx, **a),
               lambda a: ssd_sequential_ref(seq_idx=seq_idx, **a)):
        a = {k: v.clone().requires_grad_(True) for k, v in args.items()}
        y, s = fn(a)
        (y.pow(2).sum() + s.pow(2).sum()).backward()
        grads.append({k: v.grad for k, v in a.items()})
    for k in args:
        assert torch.isfinite(grads[0][k]).all() and _rel(grads[0][k], grads[1][k]) <= REL_TOL, k
