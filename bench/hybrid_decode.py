"""Decode cost of distilled hybrids against the original model as context grows, side by side in one process.

    python bench/hybrid_decode.py [--hf PATH] [--contexts 512,2048,8064] [--batch 2] [--steps 6] [--probe FILE]

Models: the original (all attention) and hybrids with k of its attention layers replaced by MIL-initialised Mamba-2
layers (timing only: the weights do not change the cost): k = 8, 15, 22 chosen by the probe's per-layer ranking
(docs/results/probe_smollm2.json) and MIL's 50% layout (every other layer). Per context length: a prefill of
[batch, context] random tokens per model (the model order alternates between context lengths), then `steps` greedy
decode steps, interleaved across models step by step so that load drift hits every model alike; tokens/s is batch /
median step time. Times are CPU seconds of the one torch thread (time.thread_time, --threads 1), not wall time: the
machine these ran on is shared. Cache bytes are the tensors the inference context actually holds (KV for attention
layers, conv + SSM state for Mamba layers). Then a profile of one decode step of the 50% hybrid at the longest context: time per
layer kind (forward hooks), and the Mamba decode step's conv and state update against the previous implementation
(F.conv1d on the window; a state-sized temporary per step), interleaved.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's rad_megatron, not the one the venv was installed from

from rad_megatron.inference.engine import InferenceSession  # noqa: E402
# CPU time of this thread: torch runs on it alone (--threads 1), and unlike wall time it does not count the time the
# scheduler gives to other processes on a shared machine
CLOCK = time.thread_time


def layer_sets(num_layers: int, probe: Path) -> dict[str, list[int]]:
    ranking = json.loads(probe.read_text())["per_layer_ranking"]
    sets = {"original": []}
    for k in (8, 15, 22):
        sets[f"k={k} (probe ranking)"] = sorted(ranking[:k])
    sets["MIL 50% (every other)"] = list(range(0, num_layers, 2))
    return sets


def cache_bytes(session) -> tuple[int, int]:
    """(KV bytes, Mamba state bytes) held by a session's inference context."""
    from rad_megatron.inference.rollback import mamba_mixers

    mamba = {m.layer_number for m in mamba_mixers(session.model)}
    kv = ssm = 0
    for layer, tensors in session.context.key_value_memory_dict.items():
        size = sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))
        if layer in mamba:
            ssm += size
        else:
            kv += size
    return kv, ssm


@torch.no_grad()
def measure(models: dict, context: int, batch: int, steps: int, order: list[str], vocab: int) -> dict[str, dict]:
    prompt = torch.randint(0, vocab, (batch, context), generator=torch.Generator().manual_seed(context))
    sessions, rows, logits = {}, {}, {}
    for name in order:
        session = InferenceSession(models[name], batch, context + steps + 1)
        t0 = CLOCK()
        logits[name] = session.feed(prompt, last_only=True)[:, -1]
        rows[name] = {"prefill_s": CLOCK() - t0, "steps": []}
        sessions[name] = session
    tokens = {name: [] for name in order}
    for _ in range(steps):  # interleaved: one step of every model, then the next step
        for name in order:
            tok = logits[name].argmax(-1, keepdim=True)
            tokens[name].append(tok)
            t0 = CLOCK()
            logits[name] = sessions[name].feed(tok)[:, -1]
            rows[name]["steps"].append(CLOCK() - t0)
    for name in order:
        kv, ssm = cache_bytes(sessions[name])
        step = statistics.median(rows[name]["steps"])
        rows[name].update(step_s=step, tokens_per_s=batch / step, kv_bytes=kv, ssm_bytes=ssm)
    del sessions
    return rows


def layer_profile(model, context: int, batch: int, steps: int = 4) -> dict[str, float]:
    """Seconds per decode step spent in each layer kind (attention, Mamba, MLP, output layer)."""
    from megatron.core.ssm.mamba_layer import MambaLayer
    from megatron.core.ssm.mlp_layer import MLPLayer

    spent, start, handles = {}, {}, []

    def kind(m):
        return "mamba" if isinstance(m, MambaLayer) else "mlp" if isinstance(m, MLPLayer) else "attention"

    modules = [(m, kind(m)) for m in model.decoder.layers] + [(model.output_layer, "output layer")]
    for m, k in modules:
        handles.append(m.register_forward_pre_hook(lambda _m, _a, k=k: start.__setitem__(k, CLOCK())))
        handles.append(m.register_forward_hook(
            lambda _m, _a, _o, k=k: spent.__setitem__(k, spent.get(k, 0.0) + CLOCK() - start[k])))
    session = InferenceSession(model, batch, context + steps + 1)
    with torch.no_grad():
        session.feed(torch.randint(0, model.rad_config.vocab_size, (batch, context)), last_only=True)
        spent.clear()
        t0 = CLOCK()
        for _ in range(steps):
            session.feed(torch.ones(batch, 1, dtype=torch.long))
        total = CLOCK() - t0
    for h in handles:
        h.remove()
    out = {k: v / steps for k, v in spent.items()}
    out["total"] = total / steps
    return out


def mamba_step_profile(mixer, batch: int, repeats: int = 200) -> dict[str, float]:
    """Median seconds of the decode step's conv and state update: ours against the previous implementation."""
    from rad_megatron.ssm.ssd import _prepare_dt, _step, ssd_step

    conv_dim, h, p, n = sum(mixer.conv_sizes), mixer.nheads_local_tp, mixer.headdim, mixer.d_state
    conv_state = torch.randn(batch, conv_dim, mixer.d_conv)
    xt = torch.randn(batch, conv_dim, 1)
    state = torch.randn(batch, h, p, n)
    x, dt, B, C = torch.randn(batch, h, p), torch.randn(batch, h), torch.randn(batch, h, n), torch.randn(batch, h, n)
    A = -torch.exp(mixer.A_log.float())

    def old_conv():
        full = torch.cat([conv_state[..., 1:], xt], dim=-1)
        conv_state.copy_(full[..., -mixer.d_conv:])
        return F.silu(F.conv1d(full, mixer.conv1d_weight, mixer.conv1d_bias, groups=conv_dim))

    def old_ssm():
        y, new = _step(x, _prepare_dt(dt, mixer.dt_bias, True), A, B, C, state)
        state.copy_(new)
        return y

    cases = {"conv: F.conv1d (before)": old_conv, "conv: shifted multiply-adds (now)":
             lambda: mixer._conv_with_state(xt, conv_state),
             "SSM update: new state + copy (before)": old_ssm, "SSM update: in place (now)":
             lambda: ssd_step(x, dt, A, B, C, state, dt_bias=mixer.dt_bias)}
    times = {k: [] for k in cases}
    with torch.no_grad():
        for _ in range(repeats):  # interleaved
            for k, f in cases.items():
                t0 = CLOCK()
                f()
                times[k].append(CLOCK() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hf", default=None, help="HF Llama folder or .gguf (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--contexts", default="512,2048,8064", help="prompt lengths (+ steps must fit the RoPE table)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6, help="decode steps timed per model and context")
    ap.add_argument("--probe", default=str(ROOT / "docs/results/probe_smollm2.json"))
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1: on a shared machine, OpenMP's 2-thread sync turns every small op into "
                         "a scheduling wait; measured 10x on a Mamba layer step)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from rad_megatron.checkpoint.hf_import import model_from_hf
    from rad_megatron.checkpoint.hf_source import resolve
    from rad_megatron.distributed import ParallelConfig, init_distributed
    from rad_megatron.swap import swap_attention_to_mamba

    init_distributed(ParallelConfig(tp=1, seed=0))
    original, cfg = model_from_hf(resolve(a.hf))
    models = {name: original if not layers else swap_attention_to_mamba(original, layers, init="mil").eval()
              for name, layers in layer_sets(cfg.num_layers, Path(a.probe)).items()}
    names = list(models)
    print(f"{cfg.num_layers} layers, batch {a.batch}, {a.steps} decode steps interleaved across models, "
          f"{torch.get_num_threads()} CPU threads")
    results = {}
    for i, context in enumerate(int(c) for c in a.contexts.split(",")):
        rows = measure(models, context, a.batch, a.steps, names if i % 2 == 0 else names[::-1], cfg.vocab_size)
        results[context] = rows
        base = rows["original"]
        print(f"\ncontext {context}")
        print(f"{'model':24} {'prefill CPU s':>13} {'tok/CPU-s':>9} {'x orig':>6} {'KV MiB':>8} {'SSM MiB':>8} "
              f"{'cache x orig':>12}")
        for name in names:
            r = rows[name]
            cache = r["kv_bytes"] + r["ssm_bytes"]
            print(f"{name:24} {r['prefill_s']:13.2f} {r['tokens_per_s']:9.2f} "
                  f"{r['tokens_per_s'] / base['tokens_per_s']:6.2f} {r['kv_bytes'] / 2**20:8.1f} "
                  f"{r['ssm_bytes'] / 2**20:8.2f} {cache / (base['kv_bytes'] + base['ssm_bytes']):12.3f}", flush=True)
    longest = max(results)
    hybrid = models["MIL 50% (every other)"]
    prof = layer_profile(hybrid, longest, a.batch)
    print(f"\nwhere a decode step of the 50% hybrid goes (context {longest}, batch {a.batch}):")
    for k, v in sorted(prof.items(), key=lambda kv: -kv[1]):
        print(f"  {k:14} {v * 1e3:8.2f} ms  {100 * v / prof['total']:5.1f}%")
    from rad_megatron.inference.rollback import mamba_mixers

    steps = mamba_step_profile(mamba_mixers(hybrid)[0], a.batch)
    print(f"\nMamba decode step pieces (one layer, batch {a.batch}, median of 200, interleaved):")
    for k, v in steps.items():
        print(f"  {k:40} {v * 1e6:9.1f} us")
    print(json.dumps({"results": {c: {n: {k: v for k, v in r.items() if k != "steps"} for n, r in rows.items()}
                                  for c, rows in results.items()}, "profile": prof, "mamba_step": steps}))


if __name__ == "__main__":
    main()
