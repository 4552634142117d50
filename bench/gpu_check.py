"""GPU readiness check: the GPU code paths of rad_megatron exercised once, in one run, with results in
$OUT/gpu_check.json and $OUT/gpu_check.md. Launched by bench/gpu_check.sh (which installs what the device lacks).

Parts, in this order (each records ok / skipped (why) / failed (the error), its numbers and its seconds):
  ssm_kernels   mamba_ssm's fused SSD scan (Triton) and causal-conv1d, where importable, against our chunked SSD,
                `ssd_sequential_ref` and the torch conv: max relative difference and time per length
  te_vs_local   the TE spec against the local spec on the same weights (local model -> rad checkpoint -> TE model),
                max |logit difference|; without Transformer Engine the checkpoint round trip goes local -> local
  verify        `rad verify` (in this process): our logits vs transformers' on the same device (SmolLM2-135M if its
                weights are here, else a random Llama of SmolLM2's shape saved by transformers: the output says which)
  student_step  a Llama-3.2-1B-shaped student with 8 Mamba layers, bf16, forward + loss + backward: tokens/s and
                MFU against 989 TFLOP/s (dense bf16, H100/H200), beside the dense model of the same shape
  distill       `rad pipeline` with 2 processes (teacher and student on one GPU: they share it through gloo, see
                distributed/init.select_device), bf16 (system.precision), 50 steps: tokens/s, loss, held-out KL, the
                checkpoint's weight dtype; then bench/teacher_overlap.py on the same model for the overlap R

--dry-run runs the same code on CPU at tiny shapes (what CI tests), so the GPU run is a change of device and size.
A time budget (--budget-s) skips the parts that would start too late, so the whole check ends in time.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("ssm_kernels", "te_vs_local", "verify", "student_step", "distill")  # the longest last
PEAK_BF16_FLOPS = 989e12  # H100 / H200 SXM dense bf16
SMOLLM2_SHAPE = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                     num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0,
                     tie_word_embeddings=True)


def _args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"), help="folder for the JSON and table")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes: the same code paths, for CI")
    ap.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of " + ",".join(PARTS))
    ap.add_argument("--budget-s", type=float, default=390.0,
                    help="start no part after this many seconds; commands are stopped a minute after it")
    ap.add_argument("--steps", type=int, default=None, help="distillation steps (default 50; dry run 3)")
    return ap.parse_args(argv)


class Check:
    """Runs the parts in order under a time budget and keeps their records."""

    def __init__(self, a):
        import torch

        self.a, self.t0 = a, time.monotonic()
        self.dry = a.dry_run
        self.device = torch.device("cpu" if self.dry or not torch.cuda.is_available() else "cuda")
        self.out = Path(a.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
        self.records: dict[str, dict] = {}

    def run(self, name, fn):
        if time.monotonic() - self.t0 > self.a.budget_s:
            self.records[name] = {"status": "skipped", "detail": f"time budget of {self.a.budget_s:.0f} s spent"}
            return
        t = time.monotonic()
        try:
            rec = fn(self)
            rec.setdefault("status", "ok")
        except Exception as e:  # noqa: BLE001 - a failed part is recorded and the others still run
            rec = {"status": "failed", "detail": f"{type(e).__name__}: {str(e)[:400]}",
                   "traceback": traceback.format_exc()[-2000:]}
        rec["seconds"] = round(time.monotonic() - t, 1)
        self.records[name] = rec
        print(f"[gpu_check] {name}: {rec['status']} ({rec['seconds']} s) {rec.get('detail', '')}", flush=True)
        _free_gpu()

    def subprocess(self, cmd, log_name, timeout, ok_codes=(0,)):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        left = self.a.budget_s + 60 - (time.monotonic() - self.t0)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=min(timeout, max(left, 30)),
                              cwd=ROOT)
        (self.out / log_name).write_text(proc.stdout[-200_000:] + "\n--- stderr ---\n" + proc.stderr[-200_000:])
        if proc.returncode not in ok_codes:
            tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-3:]
            raise RuntimeError(f"{' '.join(map(str, cmd[:6]))} ... exited {proc.returncode}: {' | '.join(tail)}")
        return proc


def _free_gpu():
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn, device, repeats: int) -> float:
    fn()  # warm-up (Triton compiles and autotunes here)
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _rel(a, b) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30)).item()


# ------------------------------------------------------------------------------------------------- te_vs_local
def part_te_vs_local(c: Check) -> dict:
    import torch

    from rad_megatron.checkpoint.store import load_model, save_model
    from rad_megatron.config import ModelConfig
    from rad_megatron.distributed.cpu import te_available
    from rad_megatron.model import build_model, forward_logits

    shape = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_layers=2, num_attention_heads=4,
                 num_kv_heads=2) if c.dry else dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816,
                                                    num_layers=4, num_attention_heads=16, num_kv_heads=4)
    cfg = ModelConfig(**shape, layout=["attention", "mamba"] * (shape["num_layers"] // 2), mamba={"chunk_size": 64})
    torch.manual_seed(0)
    local = build_model(cfg, use_te=False)
    with torch.no_grad():  # random norms: a norm mapped to the wrong place shows
        for n, p in local.named_parameters():
            if n.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    save_model(local, c.work / "te_ckpt", force=True)
    te = te_available()
    other = load_model(c.work / "te_ckpt", use_te=te).to(c.device).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 256 if not c.dry else 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = forward_logits(local.to(c.device).eval(), ids.to(c.device)).float()
        b = forward_logits(other, ids.to(c.device)).float()
    diff = (a - b).abs().max().item()
    rec = {"spec_loaded": "te" if te else "local", "max_abs_logit_diff": diff, "logit_scale": a.abs().max().item()}
    if not te:
        rec.update(status="skipped", detail="Transformer Engine not importable here: the checkpoint round trip "
                   "local -> local only")
    elif diff > 1e-3 * max(1.0, rec["logit_scale"]):
        rec.update(status="failed", detail=f"TE vs local logits differ by {diff:.3e}")
    return rec


# ------------------------------------------------------------------------------------------------- ssm_kernels
def part_ssm_kernels(c: Check) -> dict:
    import torch

    from rad_megatron.ssm import ssd

    heads, p, n, chunk = (4, 16, 16, 16) if c.dry else (32, 64, 64, 128)
    lengths = (64, 128) if c.dry else (2048, 8192)
    fused = ssd.fused_available(torch.zeros(1, device=c.device))
    rows = []
    for L in lengths:
        g = torch.Generator().manual_seed(L)
        r = lambda *s: torch.randn(*s, generator=g).to(c.device)  # noqa: E731
        args = dict(x=r(1, L, heads, p), dt=r(1, L, heads) - 1, A=-torch.rand(heads, generator=g).to(c.device) - 0.1,
                    B=r(1, L, heads, n), C=r(1, L, heads, n), D=r(heads), dt_bias=r(heads) * 0.5)
        y_seq, s_seq = ssd.ssd_sequential_ref(**args)
        y_chk, s_chk = ssd.ssd_chunked(chunk_size=chunk, **args)
        row = {"L": L, "chunked_vs_sequential": _rel(y_chk, y_seq), "chunked_state_vs_sequential": _rel(s_chk, s_seq),
               "chunked_s": _median_time(lambda: ssd.ssd_chunked(chunk_size=chunk, **args), c.device, 3),
               "sequential_s": _median_time(lambda: ssd.ssd_sequential_ref(**args), c.device, 1)}
        if fused:
            y_f, s_f = ssd.ssd_scan(chunk_size=chunk, **args)
            row.update(fused_vs_sequential=_rel(y_f, y_seq), fused_vs_chunked=_rel(y_f, y_chk),
                       fused_state_vs_sequential=_rel(s_f, s_seq),
                       fused_s=_median_time(lambda: ssd.ssd_scan(chunk_size=chunk, **args), c.device, 3))
        rows.append(row)
    rec = {"shape": {"heads": heads, "headdim": p, "d_state": n, "chunk": chunk, "batch": 1, "dtype": "fp32"},
           "mamba_ssm": c.mamba_found, "fused_scan_used": fused, "scan": rows, "conv": _conv_check(c, lengths)}
    worst = max(max(r["chunked_vs_sequential"], r.get("fused_vs_sequential", 0.0)) for r in rows)
    if worst > 1e-3:
        rec.update(status="failed", detail=f"scan differs from the sequential reference by {worst:.2e} (relative)")
    elif not fused or not rec["conv"]["causal_conv1d_used"]:
        missing = [k for k, ok in (("mamba_ssm fused scan", fused), ("causal-conv1d",
                                   rec["conv"]["causal_conv1d_used"])) if not ok]
        rec.update(status="skipped" if not fused else "ok",
                   detail=f"not available here: {', '.join(missing)}; torch paths checked against their references")
    return rec


def _conv_check(c: Check, lengths) -> dict:
    """Our mixer's conv (HybridMambaMixer._conv) with causal-conv1d's kernel against its torch path."""
    import torch

    from rad_megatron.config import ModelConfig
    from rad_megatron.model import build_model
    from rad_megatron.ssm import mixer as mixer_mod

    shape = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_attention_heads=4, num_kv_heads=2) \
        if c.dry else dict(vocab_size=128, hidden_size=2048, intermediate_size=128, num_attention_heads=32,
                           num_kv_heads=8)
    mixer = build_model(ModelConfig(**shape, num_layers=1, layout=["mamba"])).decoder.layers[0].mixer.to(c.device)
    kernel = mixer_mod.causal_conv1d_fn
    rows = []
    for L in lengths:
        xbc = torch.randn(1, L, sum(mixer.conv_sizes), device=c.device)
        with torch.no_grad():
            mixer_mod.causal_conv1d_fn = None
            ref = mixer._conv(xbc, None)
            row = {"L": L, "torch_s": _median_time(lambda: mixer._conv(xbc, None), c.device, 3)}
            mixer_mod.causal_conv1d_fn = kernel
            if kernel is not None and c.device.type == "cuda":
                row.update(kernel_vs_torch=_rel(mixer._conv(xbc, None), ref),
                           kernel_s=_median_time(lambda: mixer._conv(xbc, None), c.device, 3))
        rows.append(row)
    return {"causal_conv1d_used": kernel is not None and c.device.type == "cuda", "rows": rows}


# ------------------------------------------------------------------------------------------------------ verify
def _hf_source(c: Check) -> tuple[Path, str]:
    """SmolLM2-135M-Instruct where its weights (and gguf) are installed, else a random Llama saved here."""
    sys.path.insert(0, str(ROOT))
    from tests.helpers import tiny_hf_llama

    if not c.dry:
        try:
            from rad_megatron.checkpoint.hf_source import default_model_path, resolve

            if importlib.util.find_spec("gguf") is not None:
                return resolve(default_model_path()).folder, "SmolLM2-135M-Instruct (real weights)"
        except Exception:  # noqa: BLE001 - not here: fall back to random weights
            pass
    folder = c.work / "hf_model"
    if not (folder / "config.json").is_file():
        tiny_hf_llama(folder, seed=0, **({} if c.dry else SMOLLM2_SHAPE))
    return folder, ("tiny random Llama (tests.helpers.TINY)" if c.dry else
                    "random-init Llama of SmolLM2-135M's shape (transformers), char-level tokenizer")


def part_verify(c: Check) -> dict:
    """`rad verify --hf FOLDER --tokens 8`, run in this process (its world of one) through the CLI's entry point."""
    import contextlib
    import io

    from rad_megatron.cli import main as rad

    folder, which = _hf_source(c)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        rc = rad(["verify", "--hf", str(folder), "--tokens", "8"])
    (c.out / "verify.log").write_text(stdout.getvalue())
    if rc not in (0, 1):  # 1: ran, but over the tolerance
        raise RuntimeError(f"rad verify exited {rc}")
    res = json.loads([ln for ln in stdout.getvalue().splitlines() if ln.startswith("{")][-1])
    rec = {"model": which, **{k: res[k] for k in ("max_abs_logit_diff", "greedy_tokens_equal", "tol", "device")}}
    if rc:
        rec.update(status="failed", detail=f"logit diff {res['max_abs_logit_diff']:.2e} (tol {res['tol']}) or "
                   f"greedy tokens differ ({res['greedy_tokens_equal']})")
    return rec


# ----------------------------------------------------------------------------------------------------- distill
def _synthetic_text(path: Path, docs: int, chars: int) -> None:
    import random

    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 8))) for _ in range(400)]
    with open(path, "w") as f:
        for _ in range(docs):
            text, n = [], 0
            while n < chars:
                w = rng.choice(words)
                text.append(w)
                n += len(w) + 1
            f.write(json.dumps({"text": " ".join(text)}) + "\n")


def _distill_config(c: Check, folder: Path, steps: int) -> tuple[Path, dict]:
    import yaml

    seq, batch, top_k, layers = (32, 2, 16, [1]) if c.dry else (1024, 4, 64, [5, 11, 17, 23])
    _synthetic_text(c.work / "text.jsonl", docs=24 if c.dry else 64, chars=400 if c.dry else 4000)
    cfg = {"model": {"hf": str(folder)}, "swap": {"layers": layers, "init": "rad_zero"},
           "data": {"path": str(c.work / "text.jsonl"), "seq_len": seq, "held_out": 4},
           "distill": {"roles": {"teacher_ranks": 1, "teacher_tp": 1, "student_tp": 1},
                       "train": {"stages": [{"name": "new_mamba", "trainable": "new_mamba", "steps": steps,
                                             "lr": 1e-3}], "micro_batch_size": batch, "eval_batch_size": 4,
                                 "stream": {"top_k": top_k, "lookahead": 2}}},
           "system": {"precision": "bf16"}, "out": str(c.work / "distill_run")}
    path = c.work / "distill.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, {"seq": seq, "batch": batch, "top_k": top_k, "layers": layers, "steps": steps}


def _checkpoint_weight_dtype(run: Path) -> str:
    """The dtype the trainer saved the student's weights in (read from the last checkpoint's metadata)."""
    from torch.distributed.checkpoint import FileSystemReader

    ckpt = run / "checkpoints" / (run / "checkpoints" / "latest.txt").read_text().strip()
    meta = FileSystemReader(str(ckpt)).read_metadata().state_dict_metadata
    key = next(k for k in sorted(meta) if k.endswith("mlp.linear_fc1.weight"))
    return str(meta[key].properties.dtype).replace("torch.", "")


def part_distill(c: Check) -> dict:
    from tests.helpers import free_port

    folder, which = _hf_source(c)
    steps = c.a.steps or (3 if c.dry else 50)
    cfg_path, shape = _distill_config(c, folder, steps)
    run = c.work / "distill_run"
    c.subprocess([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
                  "-m", "rad_megatron", "pipeline", "--config", str(cfg_path), "--out", str(run)],
                 "distill.log", timeout=600)
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    train, evals = [r for r in rows if "loss" in r], [r for r in rows if "heldout_kl" in r]
    steady = train[3:] or train
    rec = {"model": which, **shape, "precision_requested": "bf16",
           "checkpoint_weight_dtype": _checkpoint_weight_dtype(run),
           "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steady),
           "student_wait_s": statistics.median(r["student_wait_s"] for r in steady),
           "loss_first": train[0]["loss"], "loss_last": train[-1]["loss"],
           "heldout_kl_first": evals[0]["heldout_kl"], "heldout_kl_last": evals[-1]["heldout_kl"]}
    rec.update(_distill_mfu(run, shape, rec["tokens_per_s"]))
    rec.update(_overlap(c, folder, shape))
    if rec["checkpoint_weight_dtype"] != "bfloat16":
        rec["detail"] = (f"system.precision=bf16 was requested but the trainer saved {rec['checkpoint_weight_dtype']} "
                         f"weights: precision not honoured by this trainer")
    return rec


def _distill_mfu(run: Path, shape: dict, tokens_per_s: float) -> dict:
    """The student step's model FLOPs (forward, the backward it needs to reach the new Mamba layers, their weight
    gradients: plan.flops) at the run's measured tokens/s, against the GPU's dense bf16 peak. The teacher shares the
    GPU in this 2-process run, so this is the student's share of a shared device, not a student-alone MFU."""
    from rad_megatron.checkpoint.store import model_config
    from rad_megatron.plan.flops import train_flops

    ckpt = run / "checkpoints" / (run / "checkpoints" / "latest.txt").read_text().strip()
    per_token = train_flops(model_config(ckpt), shape["seq"], "new_mamba", shape["layers"], "none")[0]
    return {"student_model_flop_per_token": per_token, "student_mfu": per_token * tokens_per_s / PEAK_BF16_FLOPS}


def _overlap(c: Check, folder: Path, shape: dict) -> dict:
    """bench/teacher_overlap.py on the same model and shape: R = pipelined step / max(teacher alone, student alone)."""
    out = c.work / "overlap.json"
    c.subprocess([sys.executable, str(ROOT / "bench" / "teacher_overlap.py"), "--hf", str(folder),
                  "--seq", str(shape["seq"]), "--batch", str(shape["batch"]), "--steps", "3" if c.dry else "10",
                  "--top-k", str(shape["top_k"]), "--layers", ",".join(map(str, shape["layers"])),
                  "--dtype", "bf16", "--json", str(out)], "overlap.log", timeout=300)
    r = json.loads(out.read_text())
    return {"overlap_R": r["R"], "overlap_t_teacher_s": r["t_teacher_s"], "overlap_t_student_s": r["t_student_s"],
            "overlap_t_step_s": r["t_step_s"], "stream_backend": r["backend"]}


# ------------------------------------------------------------------------------------------------ student_step
def _student_configs(c: Check):
    import yaml

    from rad_megatron.config import ModelConfig

    if c.dry:
        base = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_layers=4, num_attention_heads=4,
                    num_kv_heads=2)
    else:
        base = yaml.safe_load((ROOT / "configs" / "models" / "llama3.2-1b.yaml").read_text())
    dense = ModelConfig.from_dict({**base, "mamba": {"chunk_size": 128 if not c.dry else 16}})
    layout = ["mamba" if i % 2 else "attention" for i in range(dense.num_layers)]  # 8 of 16 blocks in the 1B
    hybrid = ModelConfig.from_dict({**dense.to_dict(), "layout": layout})
    return dense, hybrid


def part_student_step(c: Check) -> dict:
    import torch

    from rad_megatron.model import build_model
    from rad_megatron.model.forward import position_ids_for
    from rad_megatron.plan.flops import train_flops
    from rad_megatron.ssm.ssd import fused_available

    batch, seq = (2, 64) if c.dry else (4, 2048)
    configs = dict(zip(("dense", "hybrid"), _student_configs(c)))
    models = {k: build_model(cfg, dtype=torch.bfloat16).to(c.device).train() for k, cfg in configs.items()}
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, configs["dense"].vocab_size, (batch, seq), generator=g).to(c.device)
    labels = torch.roll(ids, -1, 1)

    def step(model):
        model(input_ids=ids, position_ids=position_ids_for(ids), attention_mask=None, labels=labels).mean().backward()

    times = {k: [] for k in models}
    for k in models:  # warm-up (kernel autotuning, allocator)
        for _ in range(1 if c.dry else 2):
            step(models[k])
    for _ in range(2 if c.dry else 8):  # interleaved, so both see the same clocks
        for k, m in models.items():
            _sync(c.device)
            t = time.perf_counter()
            step(m)
            _sync(c.device)
            times[k].append(time.perf_counter() - t)
    rec = {"batch": batch, "seq": seq, "dtype": "bf16", "step": "forward + vocab-parallel CE + backward",
           "layout_hybrid": "".join("M" if k == "mamba" else "A" for k in configs["hybrid"].layout),
           "fused_scan_used": fused_available(ids), "peak_flops": PEAK_BF16_FLOPS}
    for k, cfg in configs.items():
        t = statistics.median(times[k])
        flops = train_flops(cfg, seq, "all", [], "none")[0] * batch * seq
        rec[k] = {"step_s": t, "tokens_per_s": batch * seq / t, "model_tflop_per_step": flops / 1e12,
                  "mfu": flops / t / PEAK_BF16_FLOPS}
    if c.device.type == "cuda":
        rec["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return rec


# ---------------------------------------------------------------------------------------------------- report
def _summary(name: str, r: dict) -> str:
    if r["status"] == "failed" or set(r) <= {"status", "detail", "seconds"}:
        return r.get("detail", "")
    text = _numbers(name, r)
    return f"{text} ({r['detail']})" if r.get("detail") else text


def _numbers(name: str, r: dict) -> str:
    if name == "te_vs_local":
        return (f"{r['spec_loaded']} spec from the local model's checkpoint: max abs logit diff "
                f"{r['max_abs_logit_diff']:.2e}")
    if name == "ssm_kernels":
        parts = []
        for row in r["scan"]:
            s = f"L={row['L']}: chunked/ref {row['chunked_vs_sequential']:.1e}, {row['chunked_s'] * 1e3:.1f} ms"
            if "fused_s" in row:
                s += f"; fused/ref {row['fused_vs_sequential']:.1e}, {row['fused_s'] * 1e3:.2f} ms"
            parts.append(s)
        conv = r["conv"]["causal_conv1d_used"]
        return "; ".join(parts) + f" (mamba_ssm: {r['mamba_ssm']}; causal-conv1d used: {conv})"
    if name == "verify":
        return (f"{r['model']} on {r['device']}: max abs logit diff {r['max_abs_logit_diff']:.2e} (tol {r['tol']}), "
                f"greedy tokens equal {r['greedy_tokens_equal']}")
    if name == "distill":
        return (f"{r['steps']} steps, seq {r['seq']} x {r['batch']}: {r['tokens_per_s']:.0f} tokens/s, loss "
                f"{r['loss_first']:.3f} -> {r['loss_last']:.3f}, held-out KL {r['heldout_kl_first']:.4f} -> "
                f"{r['heldout_kl_last']:.4f}, student MFU {r['student_mfu']:.1%} (GPU shared with the teacher), "
                f"saved weights {r['checkpoint_weight_dtype']}; overlap R "
                f"{r['overlap_R']:.2f} (stream over {r['stream_backend']})")
    if name == "student_step":
        d, h = r["dense"], r["hybrid"]
        return (f"{r['batch']}x{r['seq']} tokens bf16: dense {d['tokens_per_s']:.0f} tok/s (MFU {d['mfu']:.1%}), "
                f"hybrid {r['layout_hybrid']} {h['tokens_per_s']:.0f} tok/s (MFU {h['mfu']:.1%}); fused scan "
                f"{r['fused_scan_used']}")
    return ""


def write_report(c: Check, env: dict) -> None:
    report = {"environment": env, "dry_run": c.dry, "parts": c.records}
    (c.out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    lines = ["# GPU readiness check" + (" (CPU dry run: tiny shapes)" if c.dry else ""), "",
             " ".join(f"{k}: {v};" for k, v in env.items()), "",
             "| part | status | result | s |", "|---|---|---|---|"]
    for name, r in c.records.items():
        lines.append(f"| {name} | {r['status']} | {_summary(name, r).replace('|', '/')} | {r.get('seconds', '')} |")
    (c.out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _environment(c: Check) -> dict:
    import torch

    from rad_megatron.distributed.cpu import te_available

    env = {"device": torch.cuda.get_device_name() if c.device.type == "cuda" else "cpu",
           "torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0],
           "transformer_engine": te_available(), "mamba_ssm": c.mamba_found,
           "causal_conv1d": importlib.util.find_spec("causal_conv1d") is not None}
    try:
        from importlib.metadata import version

        env["megatron_core"] = version("megatron-core")
    except Exception:  # noqa: BLE001
        env["megatron_core"] = "?"
    return env


def main(argv=None) -> int:
    a = _args(argv)
    if a.dry_run:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # CPU even on a GPU machine, in this process and its children
    import warnings

    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(ROOT))
    from rad_megatron.distributed import ParallelConfig, init_distributed
    from rad_megatron.ssm.ssd import FUSED_SCAN_SOURCE

    init_distributed(ParallelConfig(tp=1))
    c = Check(a)
    c.mamba_found = FUSED_SCAN_SOURCE
    env = _environment(c)
    for name in a.parts.split(","):
        c.run(name, globals()[f"part_{name}"])
    write_report(c, env)
    return 1 if any(r["status"] == "failed" for r in c.records.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
