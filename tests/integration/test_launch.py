"""Launchers without a cluster: launch/run.sh prints exactly the command lines docs/launch.md documents,
distill.sbatch lays out student and teacher nodes and decides --resume (srun and scontrol stood in by scripts),
bad input is one line and exit 2, a stuck rank fails in bounded time, and the Dockerfile keeps its pins."""

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, free_port

RUN = ROOT / "launch" / "run.sh"


def _bash(line: str, env: dict | None = None, cwd=ROOT) -> subprocess.CompletedProcess:
    # a clean environment, so a SLURM_JOB_ID or NNODES of the machine running the tests changes nothing
    base = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")}
    return subprocess.run(["bash", "-c", line], env={**base, **(env or {})}, cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def _documented_examples() -> list[tuple[str, list[str]]]:
    """(command, expected output lines) for every `$ ` line in docs/launch.md's console blocks."""
    text = (ROOT / "docs" / "launch.md").read_text()
    examples = []
    for block in re.findall(r"```console\n(.*?)```", text, re.S):
        for line in block.splitlines():
            if line.startswith("$ "):
                examples.append((line[2:], []))
            elif examples:
                examples[-1][1].append(line)
    return examples


def test_dry_run_prints_the_documented_lines():
    examples = _documented_examples()
    assert len(examples) >= 5
    two_node = [out for cmd, out in examples if "NNODES=2" in cmd and "RDZV_BACKEND=static" in cmd]
    assert {re.search(r"--node-rank=(\d)", o[0]).group(1) for o in two_node} == {"0", "1"}
    for cmd, expected in examples:
        proc = _bash(cmd)
        assert proc.returncode == 0, (cmd, proc.stderr)
        assert proc.stdout.splitlines() == expected, cmd
    # the printed line is a runnable command: bash reads it back into the same argv
    line = two_node[1][0]
    argv = shlex.split(line)
    assert argv[:2] == ["env", "TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE=[rank${rank}]: "]
    assert argv[argv.index("-m") + 1:argv.index("-m") + 4] == ["rad_megatron", "distill", "--config"]


def test_run_sh_refuses_bad_input_in_one_line():
    cases = {
        "NNODES=2 NODE_RANK=2 launch/run.sh --dry-run distill c.yaml":
            "run.sh: error: NODE_RANK=2 must be below NNODES=2; set it to this node's index",
        "RDZV_BACKEND=tcp launch/run.sh --dry-run verify": "run.sh: error: RDZV_BACKEND=tcp must be c10d or static",
        "NPROC_PER_NODE=two launch/run.sh --dry-run verify": "run.sh: error: NPROC_PER_NODE=two must be an integer >= 1",
        "NNODES=2 MASTER_PORT=0 launch/run.sh --dry-run verify":
            "run.sh: error: MASTER_PORT=0 works on one node only; give every node the same port",
        "launch/run.sh --dry-run": "run.sh: error: usage: launch/run.sh [--dry-run] COMMAND [CONFIG.yaml] [ARGS...]",
    }
    for line, message in cases.items():
        proc = _bash(line)
        assert proc.returncode == 2 and proc.stdout == "", line
        assert proc.stderr.splitlines() == [message], line


def _fake_slurm(tmp_path: Path, nodes: list[str]) -> Path:
    """`scontrol show hostnames` and an `srun` that runs its command once per node (SLURM_NODEID = i) in turn."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "scontrol").write_text("#!/bin/bash\nprintf '%s\\n' " + " ".join(nodes) + "\n")
    (bin_ / "srun").write_text(
        "#!/bin/bash\n"
        "while [[ $1 == --* ]]; do echo \"srun option $1\"; shift; done\n"
        f"for i in $(seq 0 {len(nodes) - 1}); do SLURM_NODEID=$i \"$@\" || exit $?; done\n")
    for f in bin_.iterdir():
        f.chmod(0o755)
    return bin_


def _sbatch_env(tmp_path, bin_, nodes, **extra):
    # TORCHRUN=echo: run.sh's exec prints the torchrun arguments each node would get
    return {"PATH": f"{bin_}:{os.environ['PATH']}", "SLURM_JOB_ID": "77", "SLURM_JOB_NAME": "rad-distill",
            "SLURM_NNODES": str(len(nodes)), "SLURM_JOB_NODELIST": "gpu[1-4]", "SLURM_SUBMIT_DIR": str(ROOT),
            "TORCHRUN": "echo", "NPROC_PER_NODE": "4", "OUT": str(tmp_path / "run"),
            "LOG_DIR": str(tmp_path / "logs"), **extra}


def _node_lines(stdout: str) -> list[str]:
    return [ln for ln in stdout.splitlines() if ln.startswith("--nnodes")]


def test_distill_sbatch_layout_resume_and_refusals(tmp_path):
    nodes = ["gpu1", "gpu2", "gpu3", "gpu4"]
    bin_ = _fake_slurm(tmp_path, nodes)
    env = _sbatch_env(tmp_path, bin_, nodes, STUDENT_NODES="3", TEACHER_NODES="1")
    sbatch = "bash launch/slurm/distill.sbatch configs/tests/distill_tiny.yaml data.path=d.jsonl --stop-after 2"
    proc = _bash(sbatch, env)
    assert proc.returncode == 0, proc.stderr
    assert "students: gpu1 gpu2 gpu3 (12 ranks); teachers: gpu4 (4 ranks)" in proc.stdout
    assert "static rendezvous at gpu1:20077" in proc.stdout  # MASTER_ADDR = first host, port from the job id
    assert "srun option --kill-on-bad-exit=1" in proc.stdout
    lines = _node_lines(proc.stdout)
    assert len(lines) == 4
    for i, line in enumerate(lines):
        assert line == (f"--nnodes=4 --nproc-per-node=4 --rdzv-backend=static --rdzv-id=77 --node-rank={i} "
                        f"--master-addr=gpu1 --master-port=20077 --rdzv-conf=timeout=300 --max-restarts=0 "
                        f"--log-dir={tmp_path}/logs/node{i} --tee=3 -m rad_megatron distill --config "
                        f"configs/tests/distill_tiny.yaml data.path=d.jsonl distill.roles.teacher_ranks=4 "
                        f"--stop-after 2 --out {tmp_path}/run")

    # a requeued job: the run folder holds a checkpoint, so every node resumes
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "latest.txt").write_text("step_000002")
    proc = _bash(sbatch, env)
    assert proc.returncode == 0, proc.stderr
    assert "holds checkpoint step_000002: resuming from it" in proc.stdout
    assert all(ln.endswith(f"--out {tmp_path}/run --resume") for ln in _node_lines(proc.stdout))

    refusals = {
        "STUDENT_NODES=2": "distill.sbatch: error: STUDENT_NODES=2 + TEACHER_NODES=1 must equal the 4 allocated nodes; "
                           "submit with sbatch --nodes=3",
        "TEACHER_NODES=0": "distill.sbatch: error: TEACHER_NODES=0 must be an integer >= 1",
    }
    for assign, message in refusals.items():
        proc = _bash(f"{assign} {sbatch}", {**env, "STUDENT_NODES": ""})
        assert proc.returncode == 2 and proc.stderr.splitlines() == [message], (assign, proc.stderr)
    proc = _bash(f"{sbatch} distill.roles.teacher_ranks=2", env)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["distill.sbatch: error: distill.roles.teacher_ranks=2 contradicts "
                                        "TEACHER_NODES=1 x NPROC_PER_NODE=4 = 4 teacher ranks; drop the override"]
    # without OUT the run folder is the config's `out` after overrides, as rad resolves it
    proc = _bash(f"{sbatch} out={tmp_path}/other", {**env, "OUT": ""})
    assert proc.returncode == 0, proc.stderr
    assert all(ln.endswith(f"--out {tmp_path}/other") for ln in _node_lines(proc.stdout))
    proc = _bash(f"{sbatch} distill.trian.steps=3", {**env, "OUT": ""})
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        "distill.sbatch: error: unknown config key 'config.distill.trian' (did you mean 'train'?)"]
    proc = _bash(f"{sbatch} --out x", env)
    assert proc.returncode == 2 and "give the run folder as OUT=" in proc.stderr
    proc = _bash("bash launch/slurm/distill.sbatch c.yaml", {})
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["distill.sbatch: error: SLURM_JOB_ID is not set; submit this script with sbatch"]


def test_a_requeue_that_stopped_before_its_first_checkpoint_starts_again_with_force(tmp_path):
    nodes = ["gpu1", "gpu2"]
    bin_ = _fake_slurm(tmp_path, nodes)
    env = _sbatch_env(tmp_path, bin_, nodes, STUDENT_NODES="1", TEACHER_NODES="1")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 0}\n')
    sbatch = "bash launch/slurm/distill.sbatch configs/tests/distill_tiny.yaml"
    first = _bash(sbatch, env)  # a first attempt passes the folder on as it is: rad refuses a folder holding files
    assert first.returncode == 0 and all(ln.endswith(f"--out {tmp_path}/run") for ln in _node_lines(first.stdout))
    again = _bash(sbatch, {**env, "SLURM_RESTART_COUNT": "1"})
    assert again.returncode == 0 and "holds no checkpoint of an earlier attempt" in again.stdout
    assert all(ln.endswith(f"--out {tmp_path}/run --force") for ln in _node_lines(again.stdout))


def test_run_sh_launches_through_the_status_mapping_launcher():
    proc = _bash("NPROC_PER_NODE=1 launch/run.sh --dry-run verify")
    assert proc.returncode == 0, proc.stderr
    python = ROOT / ".venv" / "bin" / "python" if (ROOT / ".venv" / "bin" / "python").exists() else "python3"
    assert proc.stdout.startswith(f"{python} -m rad_megatron.torchrun --nnodes=1 --nproc-per-node=1 "), proc.stdout


def test_probe_sbatch_passes_flags_and_skips_a_finished_requeue(tmp_path):
    nodes = ["gpu1", "gpu2"]
    bin_ = _fake_slurm(tmp_path, nodes)
    env = _sbatch_env(tmp_path, bin_, nodes, SLURM_JOB_NAME="rad-probe")
    out = tmp_path / "probe.json"
    proc = _bash(f"bash launch/slurm/probe.sbatch --k 4 --out {out}", env)
    assert proc.returncode == 0, proc.stderr
    lines = _node_lines(proc.stdout)
    # c10d: every node gets the same line but for its log folder
    assert len(lines) == 2 and lines[0] == lines[1].replace("/logs/node1 ", "/logs/node0 ")
    assert lines[0].startswith("--nnodes=2 --nproc-per-node=4 --rdzv-backend=c10d --rdzv-endpoint=gpu1:20077 ")
    assert lines[0].endswith(f"-m rad_megatron probe --k 4 --out {out}")
    out.write_text("{}")
    proc = _bash(f"bash launch/slurm/probe.sbatch --k 4 --out={out}", {**env, "SLURM_RESTART_COUNT": "1"})
    assert proc.returncode == 0 and "an earlier attempt of job 77 finished" in proc.stdout
    assert not _node_lines(proc.stdout)


def test_collective_timeout_env():
    from rad_megatron.distributed.init import collective_timeout
    from rad_megatron.errors import RadError

    assert collective_timeout(10, {}).total_seconds() == 600
    assert collective_timeout(10, {"RAD_DIST_TIMEOUT_S": "2.5"}).total_seconds() == 2.5
    for bad in ("0", "-3", "soon"):
        with pytest.raises(RadError, match=f"RAD_DIST_TIMEOUT_S='{bad}' must be a positive number of seconds"):
            collective_timeout(10, {"RAD_DIST_TIMEOUT_S": bad})


STUCK_WORKER = """
import json, sys, time
import torch
import megatron.core.parallel_state  # imported before the timed part, so start-up skew stays small
from rad_megatron.distributed import init_distributed
ctx = init_distributed()
torch.distributed.barrier()
if ctx.rank == 1:
    time.sleep(120)  # alive but never joins the collective
t0 = time.perf_counter()
try:
    torch.distributed.all_reduce(torch.ones(1))
    err = None
except Exception as e:
    err = str(e)
json.dump({"waited_s": time.perf_counter() - t0, "error": err}, open(sys.argv[1], "w"))
sys.exit(3)
"""


def test_a_stuck_rank_fails_the_job_within_the_timeout(tmp_path):
    """RAD_DIST_TIMEOUT_S=10: rank 0's collective gives up after ~10 s, and torchrun ends the still-sleeping rank 1.
    (The timeout also bounds process-group set-up, so it must exceed the ranks' start-up skew.)"""
    script = tmp_path / "stuck.py"
    script.write_text(STUCK_WORKER)
    env = {**os.environ, "RAD_DIST_TIMEOUT_S": "10", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
                           f"--master-port={free_port()}", str(script), str(tmp_path / "r.json")],
                          env=env, capture_output=True, text=True, timeout=110, cwd=ROOT)
    wall = time.perf_counter() - t0
    res = json.loads((tmp_path / "r.json").read_text())
    print(f"collective gave up after {res['waited_s']:.1f} s (timeout 10 s); whole job {wall:.1f} s")
    assert proc.returncode != 0
    assert res["error"] and "timed out" in res["error"].lower(), res
    assert 9.5 <= res["waited_s"] <= 40, res
    assert wall < 100, f"the job took {wall:.0f} s although rank 1 sleeps 120 s"


def test_dockerfile_pins():
    text = (ROOT / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert froms and all(re.fullmatch(r"nvcr\.io/nvidia/pytorch:\d\d\.\d\d-py3", f) for f in froms), froms
    assert re.search(r'^ENV TORCH_CUDA_ARCH_LIST="8\.0;9\.0"', text, re.M)
    assert re.search(r'^ENTRYPOINT \["rad"\]$', text, re.M)
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"megatron-core=={args["MCORE_VERSION"]}' in pyproject  # the image runs the version the tests run
    for pkg, arg in (("mamba-ssm", "MAMBA_VERSION"), ("causal-conv1d", "CAUSAL_CONV1D_VERSION")):
        assert re.fullmatch(r"\d+\.\d+\.\d+(\.post\d+)?", args[arg]), (arg, args[arg])
        assert re.search(rf'pip install --no-build-isolation "{pkg}==\$\{{{arg}\}}"', text), pkg
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "runs"} <= set(ignored)
