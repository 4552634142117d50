"""Does the teacher stream overlap with student compute? 1 teacher + 1 student rank, one thread each (gloo, CPU).

Measures, side by side in one run: t_teacher (teacher forward + top-k of one micro-batch, alone), t_student (student
forward + backward + optimizer step with targets already in memory, alone), and the pipelined step (student step
with targets received from the live teacher). Prints R = t_step / max(t_teacher, t_student) (goal <= 1.05) and the
bytes sent per token for top-k vs the full vocabulary.

    python bench/teacher_overlap.py [--hf PATH] [--seq 128] [--steps 8] [--top-k 64] [--dtype fp32|bf16] [--json F]
(it re-launches itself under torchrun with 2 ranks; the default model is SmolLM2-135M-Instruct). Each rank runs on
its device (init_roles: both on one GPU when there is one, sharing it; timings synchronise the GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hf", default=None)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=64)
    ap.add_argument("--layers", default="5,11,17,23", help="blocks swapped to Mamba in the student")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="weights and activations of both sides")
    ap.add_argument("--json", default=None, help="the student rank also writes its numbers here")
    return ap.parse_args()


def _now(device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def worker(a):
    import torch.distributed as dist

    from rad_megatron.checkpoint.hf_import import model_from_hf
    from rad_megatron.checkpoint.hf_source import resolve
    from rad_megatron.distill.losses import LossWeights, distill_loss
    from rad_megatron.distill.roles import RoleLayout, init_roles
    from rad_megatron.distill.stream import (StreamConfig, StudentReceiver, TeacherSender, message_bytes,
                                             teacher_targets)
    from rad_megatron.distill.targeting import apply_targeting
    from rad_megatron.model.forward import position_ids_for
    from rad_megatron.swap import swap_attention_to_mamba

    torch.set_num_threads(1)
    role = init_roles(RoleLayout(teacher_ranks=1))
    src = resolve(a.hf)
    cfg = StreamConfig(top_k=a.top_k, lookahead=2)
    dtype, dev = (torch.bfloat16 if a.dtype == "bf16" else torch.float32), role.device
    model, mcfg = model_from_hf(src, pg_collection=None if role.is_student else role.pg_collection, dtype=dtype)
    V = mcfg.vocab_size
    g = torch.Generator().manual_seed(0)
    n = a.steps + 2
    ids = [torch.randint(0, V, (a.batch, a.seq), generator=g).to(dev) for _ in range(2 * n)]
    labels = [torch.roll(x, -1, 1) for x in ids]
    mask = torch.ones(a.batch, a.seq, device=dev)
    if role.is_student:
        layers = [int(x) for x in a.layers.split(",")]
        model = swap_attention_to_mamba(model, layers, init="rad_zero").to(dev)  # swapped on the host, then moved
        opt = torch.optim.AdamW(apply_targeting(model, "new_mamba", layers), lr=1e-4)
        vals0 = torch.randn(a.batch, a.seq, a.top_k, device=dev).log_softmax(-1)
        idx0 = torch.randint(0, V, (a.batch, a.seq, a.top_k), device=dev)

        def step(i, vals, idx):
            logits = model(input_ids=ids[i], position_ids=position_ids_for(ids[i]), attention_mask=None)
            loss, _ = distill_loss(logits, vals, idx, labels[i], mask, LossWeights(), None, 0, V)
            opt.zero_grad()
            loss.backward()
            opt.step()

        alone = []
        for i in range(n):
            t0 = _now(dev)
            step(i, vals0, idx0)
            alone.append(_now(dev) - t0)
        dist.barrier()
        recv = StudentReceiver(role.teacher_for(0), V, cfg, [(1, i, a.batch, a.seq) for i in range(n)], device=dev)
        piped = []
        for i in range(n):
            t0 = _now(dev)
            vals, idx, _, _ = recv.receive(1, i, ids[n + i])
            step(n + i, vals, idx)
            piped.append(_now(dev) - t0)
        t_teacher = [None]
        dist.broadcast_object_list(t_teacher, src=role.student_ranks)
        t_s, t_p, t_t = statistics.median(alone[2:]), statistics.median(piped[2:]), t_teacher[0]
        per_tok = lambda k: message_bytes(a.batch, a.seq, V, k) / (a.batch * a.seq)  # noqa: E731
        print(f"model {src.folder.name}, seq {a.seq}, batch {a.batch}, top-k {a.top_k}, {a.dtype} on {dev}, "
              f"one thread per rank, median of {a.steps} steps")
        print(f"t_teacher alone  {t_t * 1000:8.1f} ms\nt_student alone  {t_s * 1000:8.1f} ms\n"
              f"pipelined step   {t_p * 1000:8.1f} ms\nR = t_step / max(t_teacher, t_student) = {t_p / max(t_t, t_s):.3f}")
        print(f"student wait in pipelined run: {recv.wait_s * 1000 / n:.1f} ms/step")
        print(f"bytes per token: top-{a.top_k} {per_tok(a.top_k):.0f}, full vocabulary {per_tok(0):.0f} "
              f"(ratio {per_tok(0) / per_tok(a.top_k):.1f}x)")
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"t_teacher_s": t_t, "t_student_s": t_s, "t_step_s": t_p, "R": t_p / max(t_t, t_s),
                           "student_wait_s_per_step": recv.wait_s / n, "tokens_per_s": a.batch * a.seq / t_p,
                           "device": str(dev), "dtype": a.dtype, "backend": dist.get_backend()}, f)
    else:
        model = model.to(dev)
        alone = []
        for i in range(n):
            t0 = _now(dev)
            teacher_targets(model, ids[i], labels[i], mask, cfg)
            alone.append(_now(dev) - t0)
        dist.barrier()
        sender = TeacherSender(cfg)
        for i in range(n):
            vals, idx, nll, tok = teacher_targets(model, ids[n + i], labels[n + i], mask, cfg)
            sender.send(role.student_replica_ranks(0), 1, i, ids[n + i], vals, idx, nll, tok)
        sender.flush()
        dist.broadcast_object_list([statistics.median(alone[2:])], src=role.student_ranks)


def main():
    a = _args()
    if "RANK" in os.environ:
        import warnings

        warnings.filterwarnings("ignore")
        return worker(a)
    sys.path.insert(0, str(ROOT))
    from tests.helpers import free_port

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
           __file__, *sys.argv[1:]]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    print("\n".join(ln for ln in out.stdout.splitlines()))
    if out.returncode:
        print(out.stderr[-3000:], file=sys.stderr)
    return out.returncode


if __name__ == "__main__":
    raise SystemExit(main())
