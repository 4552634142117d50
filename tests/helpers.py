"""Shared by tests and by the worker scripts they launch with torchrun."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5)
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 32}

# The variants the parity tests cover: GQA always; rope scaling on/off; tied and untied output layer.
HF_VARIANTS = {
    "gqa_untied": dict(tie_word_embeddings=False),
    "gqa_tied": dict(tie_word_embeddings=True),
    "gqa_rope_scaling": dict(tie_word_embeddings=False, rope_theta=500000.0, rope_scaling=LLAMA3_SCALING),
    "mha_tied_scaling": dict(num_key_value_heads=4, tie_word_embeddings=True, rope_scaling=LLAMA3_SCALING),
}


def tiny_tokenizer(vocab_size: int = 128):
    """A character-level tokenizer over ASCII (id = code point), eos = id 2, so tiny models can take real text."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({chr(i): i for i in range(vocab_size)}, unk_token=chr(0)))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    out = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=chr(2), unk_token=chr(0), pad_token=chr(0))
    out.chat_template = ("{% for m in messages %}{{ '<' + m['role'] + '>' + m['content'] + '\x02' }}{% endfor %}"
                         "{% if add_generation_prompt %}{{ '<assistant>' }}{% endif %}")
    return out


def tiny_hf_llama(folder: Path, seed: int = 0, **overrides) -> Path:
    """A random tiny transformers LlamaForCausalLM with a char-level tokenizer, saved as an HF folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(**{**TINY, **overrides})
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # HF inits norms to 1; random norms make the parity test see a misplaced norm
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(folder)
    tiny_tokenizer(cfg.vocab_size).save_pretrained(folder)
    return folder


def distill_inputs(folder: Path) -> Path:
    """The distillation tests' teacher (a 4-block tiny Llama, untied, under folder/hf) and data (50 sums as
    question/answer rows, folder/data.jsonl); returns `folder`."""
    tiny_hf_llama(folder / "hf", seed=0, num_hidden_layers=4, tie_word_embeddings=False)
    rows = [{"question": f"what is {i} plus {i + 1}?", "answer": f"{i} plus {i + 1} is {2 * i + 1}."}
            for i in range(50)]
    (folder / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return folder


def hf_logits(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids).logits


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, script: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `script` under torchrun with `nproc` gloo ranks; fails the test with the output if any rank fails."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--master-port={free_port()}",
           str(script), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if proc.returncode != 0:
        raise AssertionError(f"torchrun {script} failed (rc={proc.returncode}):\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-6000:]}")
    return proc


def rad(*args: str, nproc: int = 1, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the `rad` CLI (under torchrun when nproc > 1); returns the finished process whatever its exit code."""
    env = {**os.environ, "OMP_NUM_THREADS": "1" if nproc > 1 else os.environ.get("OMP_NUM_THREADS", "2")}
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
               f"--master-port={free_port()}", "-m", "rad_megatron", *args]
    else:
        cmd = [sys.executable, "-m", "rad_megatron", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def last_json(text: str) -> dict:
    lines = [ln for ln in text.strip().splitlines() if ln.startswith("{")]
    assert lines, f"no JSON line in output:\n{text[-3000:]}"
    return json.loads(lines[-1])


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Import into a test module to run its tests on one torch thread: tiny models run many small ops, and OpenMP's
    per-op sync between two threads made such tests ~6x slower on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class RankJob:
    """Ranks of one `rad` command started directly with torchrun's environment variables, each in a session of its
    own (a kill takes the rank's helper processes too, e.g. Megatron's checkpoint writer, as a node failure or the
    cluster's cleanup would), stderr in `<log_prefix>.rank<r>.<ms>.err`."""

    def __init__(self, argv: list[str], log_prefix: Path, nproc: int = 2, env=None, rank_env=None, wrap=()):
        port, self.t_start = free_port(), time.monotonic()
        self.logs = [Path(f"{log_prefix}.rank{r}.{int(time.time() * 1000)}.err") for r in range(nproc)]
        self.procs = []
        for r in range(nproc):
            rank_vars = {**os.environ, "RANK": str(r), "WORLD_SIZE": str(nproc), "LOCAL_RANK": str(r),
                         "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
                         "PYTHONWARNINGS": "ignore", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                         **(env or {}), **((rank_env or {}).get(r, {}))}
            with open(self.logs[r], "w") as log:
                self.procs.append(subprocess.Popen([*wrap, sys.executable, "-m", "rad_megatron", *map(str, argv)],
                                                   env=rank_vars, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log,
                                                   start_new_session=True))

    def wait(self, rank: int, timeout: float) -> tuple[int, float]:
        """(exit status, seconds since now) of `rank`."""
        t0 = time.monotonic()
        rc = self.procs[rank].wait(timeout=timeout)
        return rc, time.monotonic() - t0

    def errors(self, rank: int) -> list[str]:
        return [ln for ln in self.logs[rank].read_text().splitlines() if ": error: " in ln]

    def kill(self, rank: int):
        """SIGKILL the rank and whatever it started."""
        try:
            os.killpg(self.procs[rank].pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def kill_all(self):
        for rank, p in enumerate(self.procs):
            self.kill(rank)
            p.wait()


def wait_until(predicate, timeout: float, job: RankJob | None = None, what: str = ""):
    """Poll `predicate`; fail if a rank of `job` exits first (with its stderr) or after `timeout` seconds."""
    t0 = time.monotonic()
    while not predicate():
        if job is not None and any(p.poll() is not None for p in job.procs):
            raise AssertionError(f"a rank exited while waiting for {what}: " + " | ".join(
                log.read_text()[-1500:] for log in job.logs))
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)
