"""launch/slurm/distill.sbatch on a real SLURM: tools/slurm_up.sh brings up munged + slurmctld + 2 slurmd on
loopback (Debian's packages, installed with apt if missing), and the tiny CPU distillation runs as one student node
and one teacher node. A first job stops after step 2; a second submission of the same script finds the checkpoint,
resumes and finishes step 3, as a requeued job would. Skipped (with the reason) only where SLURM cannot start."""

import json
import os
import random
import re
import socket
import subprocess

import pytest

from tests.helpers import ROOT, free_port, tiny_hf_llama

UP, DOWN = ROOT / "tools" / "slurm_up.sh", ROOT / "tools" / "slurm_down.sh"
CANNOT_START = {3: "SLURM cannot be installed here", 4: "the SLURM daemons did not come up"}


def _free_run(n: int) -> int:
    """First of n consecutive free TCP ports (slurmctld + one per slurmd)."""
    for _ in range(50):
        base = random.randint(20000, 40000)
        try:
            socks = []
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no run of free ports")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("slurm")
    port = _free_run(3)
    env = {**os.environ, "RAD_SLURM_CTLD_PORT": str(port), "RAD_SLURM_SLURMD_PORT": str(port + 1)}
    if os.geteuid() != 0:
        pytest.skip("SLURM test needs root (apt install, slurmd running jobs as root); not root here")
    up = subprocess.run(["bash", str(UP), str(base), "2"], env=env, capture_output=True, text=True, timeout=600)
    try:
        if up.returncode in CANNOT_START:
            reason = f"{CANNOT_START[up.returncode]}: {up.stderr.strip().splitlines()[-1:]}"
            print(reason)
            pytest.skip(reason)
        assert up.returncode == 0, up.stdout + up.stderr
        yield base / "etc" / "slurm.conf"
    finally:
        subprocess.run(["bash", str(DOWN), str(base)], capture_output=True, text=True, timeout=120)


def _submit(conf, tmp, name, *args, timeout=600):
    """sbatch --wait the template from the checkout; returns (exit status, job log)."""
    env = {**os.environ, "SLURM_CONF": str(conf), "MASTER_ADDR": "127.0.0.1",  # node1/node2 do not resolve
           "MASTER_PORT": str(free_port()), "OUT": str(tmp / "run"), "LOG_DIR": str(tmp / "logs"),
           "OMP_NUM_THREADS": "1", "TQDM_MININTERVAL": "0"}
    log = tmp / f"{name}.out"
    proc = subprocess.run(["sbatch", "--wait", f"--output={log}", "launch/slurm/distill.sbatch",
                           "configs/tests/distill_tiny.yaml", f"model.hf={tmp / 'hf'}",
                           f"distill.teacher.hf={tmp / 'hf'}", f"data.path={tmp / 'data.jsonl'}", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    text = log.read_text() if log.is_file() else ""
    return proc.returncode, text, proc.stdout + proc.stderr


def _steps_shown(log: str) -> set[int]:
    return {int(m) for m in re.findall(r"\b(\d)/3\b", log)}


def test_distill_sbatch_runs_and_a_resubmission_resumes(cluster, tmp_path):
    tiny_hf_llama(tmp_path / "hf", seed=0, num_hidden_layers=4, tie_word_embeddings=False)
    rows = [{"question": f"what is {i} plus {i + 1}?", "answer": f"{i} plus {i + 1} is {2 * i + 1}."}
            for i in range(20)]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    ckpts = tmp_path / "run" / "checkpoints"

    rc, log, out = _submit(cluster, tmp_path, "first", "--stop-after", "2")
    assert rc == 0, f"{out}\n{log[-6000:]}"
    assert "students: node1 (1 ranks); teachers: node2 (1 ranks)" in log
    assert "static rendezvous at 127.0.0.1:" in log and "--resume" not in log
    assert {1, 2} <= _steps_shown(log) and 3 not in _steps_shown(log), log[-3000:]
    assert (ckpts / "latest.txt").read_text() == "step_000002"
    assert (ckpts / "step_000002" / "rad_meta.json").is_file() and not (ckpts / "step_000003").exists()

    rc, log, out = _submit(cluster, tmp_path, "second")
    assert rc == 0, f"{out}\n{log[-6000:]}"
    assert "holds checkpoint step_000002: resuming from it" in log
    assert re.search(r"on every node: launch/run.sh distill .* --out \S+ --resume", log)
    assert 3 in _steps_shown(log), log[-3000:]
    assert (ckpts / "latest.txt").read_text() == "step_000003"
    assert (ckpts / "step_000003" / "rad_meta.json").is_file()
    rows = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]  # each step once, across the two jobs

    # per-rank logs: one folder per node, torchrun's <run>/attempt_0/<local rank>/ inside
    for node in ("node0", "node1"):
        stderr_logs = list((tmp_path / "logs" / node).glob("*/attempt_0/0/stderr.log"))
        assert len(stderr_logs) == 2, (node, stderr_logs)  # one per job
    student = "".join(p.read_text() for p in (tmp_path / "logs" / "node0").glob("*/attempt_0/0/stderr.log"))
    assert "3/3" in student
