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
