"""Deadlines on every wait of a distillation rank for another rank, and one line naming the rank when it is gone.

A student waits for its teacher's next message, a teacher for its students to take one (gloo and NCCL sends complete
only once the receiver has posted its receive), and both for each other at a checkpoint save. Each wait has the
deadline `distill.train.stream.timeout_s`; past it, or as soon as the peer's connection closes, the rank stops with a
`RunStopped` such as "teacher rank 1 stopped answering after step 12 (nothing received for 120 s)", well before the
process groups' 10-minute collective timeout. The save meeting runs on a gloo group of its own whose timeout is that
deadline, so that every wait there is bounded too.
"""

from __future__ import annotations

import contextlib
import datetime
import time

import torch
import torch.distributed as dist

from rad_megatron.errors import RunStopped
from rad_megatron.faults import peer_cause

_meeting_groups: dict[float, object] = {}
MEETING_TAG = 77


def rank_name(role, rank: int) -> str:
    """'student rank 0' / 'teacher rank 2' (global ranks: students first, then teachers)."""
    return f"{'student' if rank < role.student_ranks else 'teacher'} rank {rank}"


KEPT = "the last checkpoint is kept, --resume continues from it"


@contextlib.contextmanager
def _peer_errors(describe):
    """A RuntimeError inside that says a peer is gone or silent becomes RunStopped(describe(cause))."""
    try:
        yield
    except RuntimeError as e:
        cause = peer_cause(e)
        if cause is None:
            raise
        raise RunStopped(f"{describe(cause)}; {KEPT}") from None


def talking_to(peer: str, after_step: int, timeout_s: float, what: str = "received"):
    """Point-to-point traffic with `peer` (e.g. 'teacher rank 1') inside: a closed connection or a deadline passed
    becomes RunStopped naming it."""
    def describe(cause):
        detail = f"nothing {what} for {timeout_s:g} s" if cause == "timed out" else cause
        return f"{peer} stopped answering after step {after_step} ({detail})"

    return _peer_errors(describe)


def wait_for(works, peer: str, after_step: int, timeout_s: float, what: str = "received") -> None:
    """Wait for the point-to-point `works` exchanged with `peer`, each within `timeout_s`."""
    with talking_to(peer, after_step, timeout_s, what):
        for w in works:
            w.wait(datetime.timedelta(seconds=timeout_s))


def make_meeting_group(timeout_s: float) -> None:
    """Create (collectively, on every rank of the world) the gloo group the save meetings use."""
    if timeout_s not in _meeting_groups:
        _meeting_groups[timeout_s] = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))


def meet_before_save(role, step: int, timeout_s: float) -> None:
    """Every rank reaches the checkpoint save of `step` within `timeout_s`, or each stops with one line: rank 0 names
    the ranks that did not come, the others name rank 0 (a monitored barrier, in Python so that it names roles and
    logs nothing else)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    make_meeting_group(timeout_s)
    group, token = _meeting_groups[timeout_s], torch.zeros(1)
    if dist.get_rank() != 0:
        with talking_to(rank_name(role, 0), step, timeout_s, what="confirmed"):
            dist.send(token, dst=0, group=group, tag=MEETING_TAG)
            dist.irecv(token, src=0, group=group, tag=MEETING_TAG).wait(datetime.timedelta(seconds=timeout_s))
        return
    arrivals = {r: dist.irecv(torch.zeros(1), src=r, group=group, tag=MEETING_TAG)
                for r in range(1, dist.get_world_size())}
    end, silent = time.monotonic() + timeout_s, []
    for r, work in arrivals.items():
        try:
            work.wait(datetime.timedelta(seconds=max(end - time.monotonic(), 1e-3)))
        except RuntimeError as e:
            if peer_cause(e) is None:
                raise
            silent.append(rank_name(role, r))
    if silent:
        raise RunStopped(f"{', '.join(silent)} did not reach the checkpoint save at step {step} within "
                         f"{timeout_s:g} s; {KEPT}")
    for r in arrivals:
        dist.send(token, dst=r, group=group, tag=MEETING_TAG)


def peer_losses_named(role, last_step):
    """Any other collective that finds a peer gone (e.g. a data-parallel gradient reduction) becomes one line too;
    `last_step()` is the last step this rank finished (None: not known)."""
    def describe(cause):
        step = last_step()
        return f"{rank_name(role, role.rank)} lost a peer rank{'' if step is None else f' after step {step}'} ({cause})"

    return _peer_errors(describe)
