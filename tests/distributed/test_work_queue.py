"""The asynchronous DP work queue: every task done exactly once, a faster replica takes more tasks, and a replica
that fails stops the whole job with its error instead of leaving the others blocked."""

import json

import pytest

from tests.helpers import ROOT, torchrun

WORKER = ROOT / "tests/distributed/workers/work_queue.py"


def test_tasks_are_shared_by_speed_and_done_once(tmp_path):
    torchrun(2, WORKER, str(tmp_path / "out.json"), "ok", timeout=120)
    done = json.loads((tmp_path / "out.json").read_text())
    assert sorted(d["i"] for d in done) == list(range(12))
    assert all(d["square"] == d["i"] ** 2 and d["by"] == d["replica"] for d in done)
    per_replica = [sum(d["replica"] == r for d in done) for r in (0, 1)]
    assert per_replica[0] > per_replica[1] >= 1  # replica 1 sleeps ten times as long per task


def test_failing_replica_stops_every_rank(tmp_path):
    # the helper raises AssertionError (with the output) on a non-zero exit; a hang would raise TimeoutExpired
    with pytest.raises(AssertionError) as err:
        torchrun(2, WORKER, str(tmp_path / "out.json"), "fail", timeout=120)
    assert "replica 1: ValueError: bad set" in str(err.value)
    assert not (tmp_path / "out.json").exists()
