"""`rad plan`'s per-rank peak memory against a real short distillation on this machine (CPU, gloo).

Job: a 12-layer, 1024-wide Llama (random weights; 16 heads, 4 KV heads, FFN 2816, vocabulary 32000, untied) whose
attention blocks 2, 5, 8, 11 become Mamba-2 (`rad pipeline`, init rad_zero, trainable new_mamba); students at TP 2,
one teacher rank (TP 1) - 3 ranks - for each of fp32 / bf16 x recompute none / full. Sequences of 256 tokens, one
per micro-batch, top-64 stream.

Measured, inside the real trainer (the `rad pipeline` library call, instrumented from outside): on each student rank
the bytes of every tensor alive when its 2nd optimizer step starts (parameters, DDP's gradient buffer, the optimizer's
fp32 state, posted receive buffers, ... found through the garbage collector, each storage counted once) plus the peak
of the running sum of the profiler's memory events (every allocation and free) over that step: forward, backward and
optimizer update. torch has no CPU allocator statistics; this is the same method as tests/unit/test_plan_memory.py.
On the teacher rank the same over its 2nd training micro-batch served. The packed dataset (host data on a GPU
machine) is not counted.
Predicted: plan.memory with the CPU kernels for the same config, resolved from YAML like `rad plan` does; for the
student the train / optimizer phases (what the measured window holds; the evaluation phase is outside it).

    python bench/plan_vs_measured.py [--out docs/results/plan_vs_measured.md] [--steps 2]
(it builds the model under a temporary folder and launches torchrun with 3 ranks once per configuration)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHAPE = dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=12, num_attention_heads=16,
             num_key_value_heads=4, max_position_embeddings=4096, tie_word_embeddings=False)
SWAPS = [2, 5, 8, 11]
CONFIGS = [("fp32", "none"), ("fp32", "full"), ("bf16", "none"), ("bf16", "full")]
GIB = 1024 ** 3


def _held_bytes() -> int:
    """Bytes of every tensor storage reachable from Python now, each storage once."""
    storages = {}
    for obj in gc.get_objects():
        try:
            if torch.is_tensor(obj) and obj.device.type == "cpu":
                st = obj.untyped_storage()
                storages[st.data_ptr()] = st.nbytes()
        except Exception:  # noqa: BLE001 - objects in odd states during gc walks
            continue
    return sum(storages.values())


class PeakWindow:
    """held bytes at the start + the peak of the profiler's running allocation sum until `stop`."""

    def __init__(self, not_counted: int = 0, table: bool = False):
        from torch.profiler import ProfilerActivity, profile

        gc.collect()
        self.held = _held_bytes() - not_counted
        self.table = table and bool(os.environ.get("RAD_BENCH_TABLE"))
        self.prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=self.table)
        self.prof.__enter__()

    def stop(self) -> float:
        """held + the window's peak above it (also kept as `self.peak_above`)."""
        self.prof.__exit__(None, None, None)
        events = sorted((e for e in self.prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                        key=lambda e: e.start_ns())
        live = peak = 0
        for e in events:
            live += e.nbytes()
            peak = max(peak, live)
        self.peak_above = peak
        if self.table:  # where the window's bytes go, per op and input shape (students; RAD_BENCH_TABLE=1)
            import torch.distributed as dist

            table = self.prof.key_averages(group_by_input_shape=True).table(
                sort_by="self_cpu_memory_usage", row_limit=25, max_name_column_width=40, max_shapes_column_width=80)
            Path(os.environ["RAD_BENCH_OUT"], f"ops_rank{dist.get_rank()}.txt").write_text(table)
        return self.held + peak


def worker(a):
    """One configuration on this rank: the pipeline with a measurement window around the 2nd student step /
    the teacher's 2nd training serve."""
    from rad_megatron.commands.distill import prepare_run
    from rad_megatron.distill import optim, run, teacher
    from rad_megatron.pipeline import run_pipeline

    torch.set_num_threads(1)
    state = {"steps": 0, "serves": 0, "window": None, "measured": None, "held": None, "data": 0}
    zero_grad, step, serve = optim.StageOptimizer.zero_grad, optim.StageOptimizer.step, teacher.TeacherServer.serve
    train_data = run.TrainData

    def counted_train_data(*args, **kwargs):  # host data (a memory-mapped corpus, held-out rows): not counted
        data = train_data(*args, **kwargs)
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in (data.held or {}).values()}
        state["data"] = sum(storages.values())
        return data

    def measured_zero_grad(self):
        state["steps"] += 1
        if state["steps"] == 2:
            state["window"] = PeakWindow(state["data"], table=True)
        return zero_grad(self)

    def measured_step(self):
        out = step(self)
        if state["window"] is not None and state["measured"] is None:
            state["measured"] = state["window"].stop()
            state["held"] = state["window"].held
        return out

    def measured_serve(self, s, items, count, shape):
        if s >= 1:
            state["serves"] += 1
        if state["serves"] != 2 or state["measured"] is not None:
            return serve(self, s, items, count, shape)
        window = PeakWindow(state["data"])
        out = serve(self, s, items, count, shape)
        state["measured"], state["held"] = window.stop(), window.held
        return out

    optim.StageOptimizer.zero_grad, optim.StageOptimizer.step = measured_zero_grad, measured_step
    teacher.TeacherServer.serve, run.TrainData = measured_serve, counted_train_data
    cfg, system, train_cfg, data_cfg = prepare_run(argparse.Namespace(config=a.config, overrides=a.overrides,
                                                                      out=a.out, resume=False, force=False))
    run_pipeline(cfg, system, train_cfg, data_cfg)
    import torch.distributed as dist

    rank = dist.get_rank()
    (Path(a.out) / f"measured_rank{rank}.json").write_text(json.dumps({"rank": rank, "bytes": state["measured"],
                                                                      "held": state["held"]}))


def _write_inputs(folder: Path) -> Path:
    """The random Llama, its tokenizer (the test's char-level one widened to the vocabulary) and text data."""
    sys.path.insert(0, str(ROOT))
    from tests.helpers import tiny_hf_llama

    tiny_hf_llama(folder / "hf", seed=0, **SHAPE)
    words = ["alpha", "beta", "gamma", "delta", "sum", "of", "the", "is", "and", "then"]
    g = torch.Generator().manual_seed(0)
    rows = [{"text": " ".join(words[i] for i in torch.randint(0, len(words), (400,), generator=g).tolist())}
            for _ in range(16)]
    (folder / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    import yaml

    cfg = {"model": {"hf": str(folder / "hf")}, "swap": {"layers": SWAPS, "init": "rad_zero"},
           "data": {"path": str(folder / "data.jsonl"), "seq_len": 256, "held_out": 1},
           "distill": {"roles": {"teacher_ranks": 1, "teacher_tp": 1, "student_tp": 2},
                       "train": {"stages": [{"trainable": "new_mamba", "steps": 2, "lr": 1e-4}],
                                 "micro_batch_size": 1, "grad_accum": 1, "eval_batch_size": 1, "save_every": 0,
                                 "stream": {"top_k": 64, "lookahead": 2}}}}
    (folder / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return folder / "cfg.yaml"


def _predicted(config: Path, overrides: list[str]) -> dict:
    from rad_megatron.plan import CPU, build_job
    from rad_megatron.plan.memory import student_memory, teacher_memory
    from rad_megatron.settings import load_run_config

    job = build_job(load_run_config(config, overrides), 1, 3)
    s, t = student_memory(job, 0, CPU), teacher_memory(job, 0, CPU)
    fixed = s.weights + s.optimizer + s.stream + s.grads
    return {"student": (fixed + max(s.phases["train"], s.phases["optimizer"]), fixed),
            "teacher": (t.peak, t.weights + t.stream)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "docs/results/plan_vs_measured.md"))
    ap.add_argument("--only", nargs="*", default=None, help="precision:recompute pairs, e.g. fp32:none")
    ap.add_argument("--workdir", default=None, help="keep the model, configs and per-rank results here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        a.out = os.environ["RAD_BENCH_OUT"]
        return worker(a)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(a.workdir or tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        config = _write_inputs(tmp)
        for precision, recompute in [c for c in CONFIGS if a.only is None or ":".join(c) in a.only]:
            overrides = [f"system.precision={precision}", f"system.recompute={recompute}"]
            out = tmp / f"{precision}_{recompute}"
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "RAD_BENCH_OUT": str(out)}
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=3", __file__, "--worker",
                   "--config", str(config), *overrides]
            proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"{precision}/{recompute} failed:\n{proc.stderr[-4000:]}")
            pred = _predicted(config, overrides)
            for r in range(3):
                got = json.loads((out / f"measured_rank{r}.json").read_text())
                side = "student" if r < 2 else "teacher"
                rows.append((precision, recompute, r, side, *pred[side], got["bytes"], got["held"]))
            print(rows[-3:], flush=True)
    lines = ["# rad plan vs measured peak memory per rank (CPU, gloo)", "", __doc__.split("\n\n")[1],
             __doc__.split("\n\n")[2], "",
             "| precision | recompute | rank | role | predicted peak | measured peak | predicted / measured | "
             "held all run: predicted | held at the window's start: measured |", "|---" * 9 + "|"]
    for precision, recompute, r, side, pred, fixed, got, held in rows:
        lines.append(f"| {precision} | {recompute} | {r} | {side} (TP {2 if side == 'student' else 1}) | "
                     f"{pred / GIB:.3f} GiB | {got / GIB:.3f} GiB | {pred / got:.3f} | {fixed / GIB:.3f} GiB | "
                     f"{held / GIB:.3f} GiB |")
    worst = max(abs(row[4] / row[6] - 1) for row in rows)
    lines += ["", f"Largest deviation: {100 * worst:.1f}% (goal: within 25%).", "",
              "Measured by `python bench/plan_vs_measured.py` (the method is in its docstring)."]
    Path(a.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
