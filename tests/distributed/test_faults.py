"""Fault injection on the tiny distillation (rank 0 student, rank 1 teacher, gloo on CPU).

The ranks are launched by the test itself (the env:// rendezvous torchrun would set up, without torchrun's agent), so
that each survivor's own behaviour is observed: under torchrun the agent ends the other ranks within a second of the
first failure, which hides whether a survivor on another node would notice. Each fault asserts how long the survivor
takes to exit (bounds in FAULTS, generous because the machine running CI is shared), its one error line, that the
last checkpoint is bit-identical before and after, and, for the kills, that --resume reproduces the uninterrupted run
exactly. FAULTS is also what docs/reliability.md is rendered from (tools/render_reliability.py).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import ROOT, RankJob, tiny_hf_llama, wait_until as _until

STEPS, SAVE_EVERY, TIMEOUT_S = 12, 4, 10
# the stream deadline of every job but the frozen-teacher one: a loaded machine must not look like a lost peer
RELAXED_TIMEOUT_S = 300
# (fault, what is done, the survivor's error line (a regex), its exit status, bound on the survivor's exit in s)
FAULTS = [
    ("SIGKILL teacher", "kill -9 the teacher rank once step 4 is checkpointed",
     r"rad distill: error: teacher rank 1 stopped answering after step \d+ \(connection closed", 3, 30),
    ("SIGKILL student", "kill -9 the student rank once step 8 is checkpointed",
     r"rad distill: error: student rank 0 stopped answering after step \d+ \(connection closed", 3, 30),
    ("SIGSTOP teacher", f"freeze the teacher rank (stream.timeout_s={TIMEOUT_S}) after the student logged step 9",
     rf"rad distill: error: teacher rank 1 stopped answering after step \d+ \(nothing received for {TIMEOUT_S} s\)",
     3, TIMEOUT_S + 30),
    ("SIGKILL during a checkpoint write", "kill -9 the student between writing the shards of step 12 and renaming "
     "its folder into place (RAD_FAILPOINT stops it there)",
     r"rad distill: error: cannot write checkpoint '.*step_000012' in folder '.*': a peer rank stopped \(connection "
     r"closed", 3, 30),
    ("non-finite loss", "lr=1e30 (the first update blows the weights up, the next loss is NaN) with "
     "skip_nonfinite=1 and a checkpoint every step",
     r"rad distill: error: step (\d+): the loss is not finite; stopped before the update \(the last checkpoint, "
     r"step_0+(\d+), is kept, nothing written after it\)", 3, 60),
    ("disk full at save", "the run folder on a tmpfs that holds step 4's checkpoint but not step 8's",
     r"rad distill: error: cannot write checkpoint '.*step_000008' in folder '.*checkpoints': no space left on "
     r"device \(ENOSPC\)", 3, 30),
]
FAULT = {f[0]: f for f in FAULTS}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("faults")
    tiny_hf_llama(d / "hf", seed=0, num_hidden_layers=4, tie_word_embeddings=False)
    rows = [{"question": f"what is {i} plus {i + 1}?", "answer": f"{i} plus {i + 1} is {2 * i + 1}."}
            for i in range(40)]
    (d / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    cfg = {"model": {"hf": str(d / "hf")}, "data": {"path": str(d / "data.jsonl"), "seq_len": 48, "held_out": 2},
           "distill": {"teacher": {"hf": str(d / "hf")}, "roles": {"teacher_ranks": 1},
                       "train": {"stages": [{"name": "all", "trainable": "all", "steps": STEPS, "lr": 0.003}],
                                 "micro_batch_size": 2, "eval_batch_size": 2, "save_every": SAVE_EVERY,
                                 "stream": {"top_k": 16, "timeout_s": RELAXED_TIMEOUT_S}}}}
    (d / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return d


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory):
    """The uninterrupted run every resumed one must reproduce (and whose checkpoint sizes the full disk)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    job = Job(setup / "cfg.yaml", out)
    assert job.wait(0, 600)[0] == 0 and job.wait(1, 60)[0] == 0, job.logs[0].read_text()[-3000:]
    job.kill_all()  # helper processes a finished rank may leave
    return out


def Job(cfg: Path, out: Path, *args: str, rank_env=None, wrap=()) -> RankJob:
    """Two ranks of `rad distill`, started directly with torchrun's environment variables."""
    return RankJob(["distill", "--config", str(cfg), "--out", str(out), *args], out, rank_env=rank_env, wrap=wrap)


def _latest(out: Path) -> str:
    f = out / "checkpoints" / "latest.txt"
    return f.read_text().strip() if f.is_file() else ""


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _metrics(out: Path) -> list[dict]:
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "student_wait_s")} for r in rows]


def _weights(ckpt: Path) -> dict:
    from rad_megatron.checkpoint.store import load_model

    return {k: v for k, v in load_model(ckpt).state_dict().items() if not k.endswith("_extra_state")}


def _stopped(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].split()[0] == "T"


def _fault(job: RankJob, name: str, survivor: int, t_fault: float, kept: Path, before: dict, results: dict,
           reap: bool = True):
    """Assert the survivor's exit status, time, one error line; the kept checkpoint bit-identical."""
    _, _, pattern, status, bound = FAULT[name]
    rc, _ = job.wait(survivor, timeout=bound + 60)
    took = time.monotonic() - t_fault
    lines = job.errors(survivor)
    results[name] = {"exit": rc, "seconds": round(took, 1), "line": lines[0] if lines else None}
    assert rc == status, (name, rc, job.logs[survivor].read_text()[-3000:])
    assert len(lines) == 1 and __import__("re").match(pattern, lines[0]), (name, lines)
    assert took < bound, f"{name}: the survivor took {took:.1f} s (bound {bound} s)"
    assert _digest(kept) == before, f"{name}: {kept} changed"
    if reap:
        job.kill_all()


def test_kills_keep_the_last_checkpoint_and_resume_reproduces_the_run(dist, setup, reference, tmp_path):
    d, results = setup, {}
    out = tmp_path / "run"

    # SIGKILL teacher, once step 4 is checkpointed: the student names it and stops
    job = Job(d / "cfg.yaml", out)
    _until(lambda: _latest(out) == "step_000004", 600, job, "step 4's checkpoint")
    before = _digest(out / "checkpoints" / "step_000004")
    job.kill(1)
    _fault(job, "SIGKILL teacher", 0, time.monotonic(), out / "checkpoints" / "step_000004", before, results)

    # SIGKILL student, once step 8 is checkpointed: the teacher names it and stops
    job = Job(d / "cfg.yaml", out, "--resume")
    _until(lambda: _latest(out) == "step_000008", 600, job, "step 8's checkpoint")
    before = _digest(out / "checkpoints" / "step_000008")
    job.kill(0)
    _fault(job, "SIGKILL student", 1, time.monotonic(), out / "checkpoints" / "step_000008", before, results)

    # SIGSTOP teacher after step 9: the student waits stream.timeout_s, names it and stops. The killed run may have
    # logged step 9 already: drop what follows the kept checkpoint first (as --resume does), so the wait below sees
    # this run's step 9, not a stale one (a SIGSTOP before the ranks meet would hang in the rendezvous instead)
    metrics = out / "metrics.jsonl"
    metrics.write_text("".join(ln + "\n" for ln in metrics.read_text().splitlines() if json.loads(ln)["step"] <= 8))
    job = Job(d / "cfg.yaml", out, "--resume", f"distill.train.stream.timeout_s={TIMEOUT_S}")
    _until(lambda: '"step": 9, "stage"' in (out / "metrics.jsonl").read_text(), 600, job, "step 9")
    job.procs[1].send_signal(signal.SIGSTOP)
    try:
        _fault(job, "SIGSTOP teacher", 0, time.monotonic(), out / "checkpoints" / "step_000008", before, results)
    finally:
        job.kill_all()

    # SIGKILL student in the middle of the checkpoint write of step 12 (shards written, folder not yet renamed)
    job = Job(d / "cfg.yaml", out, "--resume",
              rank_env={0: {"RAD_FAILPOINT": "checkpoint-shards-written:step_000012"}})
    _until(lambda: _stopped(job.procs[0].pid), 600, job, "the student to stop inside the write")
    partial = out / "checkpoints" / ".step_000012.tmp"
    assert partial.is_dir() and any(partial.rglob("*.distcp")) and not (out / "checkpoints" / "step_000012").exists()
    job.kill(0)
    _fault(job, "SIGKILL during a checkpoint write", 1, time.monotonic(), out / "checkpoints" / "step_000008", before,
           results)
    assert _latest(out) == "step_000008"

    # --resume after all of it: the uninterrupted run, bit for bit
    job = Job(d / "cfg.yaml", out, "--resume")
    assert job.wait(0, 600)[0] == 0 and job.wait(1, 60)[0] == 0, job.logs[0].read_text()[-3000:]
    job.kill_all()  # helper processes a finished rank may leave
    assert _metrics(out) == _metrics(reference)
    a, b = _weights(reference / "checkpoints/step_000012"), _weights(out / "checkpoints/step_000012")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    print(json.dumps(results, indent=1))


def test_nonfinite_loss_is_skipped_then_stops_before_the_update(dist, setup, tmp_path):
    out = tmp_path / "nan"
    job = Job(setup / "cfg.yaml", out, "distill.train.stages.0.lr=1.0e30", "distill.train.save_every=1",
              "distill.train.skip_nonfinite=1", "distill.train.stages.0.steps=5")
    _until(lambda: (out / "checkpoints" / "step_000001").is_dir(), 600, job, "step 1's checkpoint")
    t0, results = time.monotonic(), {}  # the bound counts from the first checkpoint: two more steps, then the stop
    _fault(job, "non-finite loss", 0, t0, out / "checkpoints" / "step_000001", _digest(out / "checkpoints" /
                                                                                     "step_000001"), results)
    job.kill_all()
    stopped, kept = map(int, __import__("re").match(FAULT["non-finite loss"][2], results["non-finite loss"]["line"])
                        .groups())
    rows = _metrics(out)
    skipped = [r["step"] for r in rows if "skipped_nonfinite" in r]
    assert skipped == [stopped - 1] and kept == stopped - 1, (skipped, stopped, kept)  # one skip allowed, then stop
    assert max(r["step"] for r in rows) == stopped - 1, "nothing is logged for the step that stopped the run"
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == [f"step_{s:06d}" for s in range(1, kept + 1)]
    weights = _weights(out / "checkpoints" / f"step_{kept:06d}")
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    print(json.dumps(results, indent=1))


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k none /mnt"],
                           capture_output=True, text=True)
    return probe.returncode == 0


def test_disk_full_at_save(setup, reference, tmp_path):
    """A real full disk: the run folder on a tmpfs (a mount namespace of this test's own, unprivileged) sized to hold
    step 4's checkpoint but not step 8's."""
    if not _can_mount_tmpfs():
        pytest.skip("cannot mount a tmpfs in a user namespace here (unshare -rm); the save error path is covered "
                    "in-process by tests/unit/test_reliability.py::test_save_failure_names_the_cause_and_cleans_up")
    d = setup
    size = sum(p.stat().st_size for p in (reference / "checkpoints" / "step_000004").rglob("*") if p.is_file())
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    out = mnt / "run"
    tmpfs_kib = (size * 3 // 2 + (256 << 10)) >> 10  # step 4 + logs fit; a second checkpoint does not
    script = (f"mount -t tmpfs -o size={tmpfs_kib}k none {mnt} && echo mounted && while [ ! -e {mnt}/go ]; do "
              f"sleep 0.05; done")
    holder = subprocess.Popen(["unshare", "-rm", "--propagation", "private", "sh", "-c", script + "; sleep 600"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "mounted"
        ns = f"/proc/{holder.pid}/root"
        # both ranks join the holder's mount namespace (nsenter), so they see the tmpfs at the same path
        wrap = ["nsenter", "-t", str(holder.pid), "-U", "-m", "--preserve-credentials", f"--wd={ROOT}"]
        job = Job(d / "cfg.yaml", out, rank_env={}, wrap=wrap)
        inside = Path(ns + str(out))
        _until(lambda: (inside / "checkpoints" / "latest.txt").is_file(), 600, job, "step 4's checkpoint")
        before = _digest(inside / "checkpoints" / "step_000004")
        # the bound counts from step 8's metrics row: its checkpoint save comes next
        _until(lambda: '"step": 8, "stage"' in (inside / "metrics.jsonl").read_text(), 600, job, "step 8")
        t0 = time.monotonic()
        results = {}
        # the student's shard is the one that does not fit: it names the cause; the teacher, whose save it leaves,
        # stops too, naming the same checkpoint (its cause: the student's ENOSPC if it learnt it, else a lost peer)
        _fault(job, "disk full at save", 0, t0, inside / "checkpoints" / "step_000004", before, results, reap=False)
        rc, _ = job.wait(1, 60)
        teacher = job.errors(1)
        assert rc == 3 and len(teacher) == 1 and "cannot write checkpoint" in teacher[0] and "step_000008" in \
            teacher[0] and ("ENOSPC" in teacher[0] or "a peer rank stopped" in teacher[0]), teacher
        job.kill_all()
        assert not (inside / "checkpoints" / ".step_000008.tmp").exists(), "the partial folder must be removed"
        assert (inside / "checkpoints" / "latest.txt").read_text() == "step_000004"
        print(json.dumps(results, indent=1))
    finally:
        holder.kill()
        holder.wait()
