"""Speculative generation on SmolLM2 against plain greedy decoding, side by side in one process.

    python bench/speculative.py --hybrid runs/demo/checkpoints/step_000060 [--contexts 512,2048] [--prompts 2]
        [--new-tokens 32] [--draft-len 4]

Targets: the original SmolLM2-135M-Instruct (the teacher) and the distilled hybrid `--hybrid` (e.g. the last
checkpoint of `make demo`: 4 attention layers replaced by Mamba-2 and distilled). Methods, all greedy, batch 1:
  plain                 greedy steps on the cached engine (inference/engine.py), the yardstick
  (a) self-speculative  the target drafting with a skip set of its attention layers (the probe's chosen set,
                        restricted to the target's attention layers)
  (b) draft model       the distilled hybrid drafting for its teacher
each speculative method with both Mamba rollbacks where the drafting or verifying model has Mamba layers
(snapshot, recompute). Prompts: few-shot GSM8K text (train solutions, then a test question) cut to the context length.
Methods run in turn for each prompt, their order rotating between prompts, so that load drift hits each alike.
Every speculative output is checked token for token against plain greedy decoding of the same target. Printed:
decode tokens/s (after the prefills; the first token comes from the target's prefill) and its ratio to plain, the
end-to-end ratio (prefills included: a separate draft model prefills the prompt too), acceptance rate (accepted /
drafted) and tokens emitted per target forward.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "gsm8k"


def gsm8k_prompts(tok, context: int, count: int) -> list[list[int]]:
    """`count` prompts of exactly `context` tokens: worked train examples, then a test question at the end."""
    train = [json.loads(line) for line in (DATA / "train.jsonl").read_text().splitlines()[:400]]
    test = [json.loads(line) for line in (DATA / "test.jsonl").read_text().splitlines()[:count]]
    prompts = []
    for i, q in enumerate(test):
        tail = tok(f"Question: {q['question']}\nAnswer:")["input_ids"]
        shots, j = [], 40 * i
        while len(shots) < context - len(tail):
            ex = train[j % len(train)]
            shots += tok(f"Question: {ex['question']}\nAnswer: {ex['answer']}\n\n")["input_ids"]
            j += 1
        prompts.append(shots[len(shots) - (context - len(tail)):] + tail)
    return prompts


def methods(teacher, hybrid, skip_teacher, skip_hybrid):
    """name -> (target, drafter factory or None for plain, rollback)."""
    from rad_megatron.inference.draft import ModelDraft, SelfDraft

    rows = {"teacher: plain": (teacher, None, "snapshot"),
            "teacher: (a) self-spec": (teacher, lambda: SelfDraft(skip_teacher), "snapshot")}
    for rb in ("snapshot", "recompute"):
        rows[f"teacher: (b) hybrid drafts, {rb}"] = (teacher, lambda rb=rb: ModelDraft(hybrid, rb), rb)
    rows["hybrid: plain"] = (hybrid, None, "snapshot")
    for rb in ("snapshot", "recompute"):
        rows[f"hybrid: (a) self-spec, {rb}"] = (hybrid, lambda: SelfDraft(skip_hybrid), rb)
    return rows


@torch.no_grad()
def plain_greedy(target, prompt, new_tokens):
    """Greedy decoding on the cached engine, batch 1; returns (tokens, seconds after the prefill)."""
    from rad_megatron.inference.engine import InferenceSession

    session = InferenceSession(target, 1, len(prompt) + new_tokens)
    tok = int(session.feed(torch.tensor([prompt]), last_only=True)[0, -1].argmax())
    out, t0 = [tok], time.perf_counter()
    while len(out) < new_tokens:
        tok = int(session.feed(torch.tensor([[tok]]))[0, -1].argmax())
        out.append(tok)
    return out, time.perf_counter() - t0


def run_one(target, make_draft, rollback, prompt, new_tokens, k):
    """(tokens, stats or None, seconds end to end, seconds of decoding after the prefills)."""
    from rad_megatron.inference.spec_generate import speculative_decode

    t0 = time.perf_counter()
    if make_draft is None:
        out, decode = plain_greedy(target, prompt, new_tokens)
        return out, None, time.perf_counter() - t0, decode
    out, stats = speculative_decode(target, prompt, new_tokens, make_draft(), k=k, rollback=rollback)
    return out, stats, time.perf_counter() - t0, stats.seconds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hybrid", required=True, help="distilled hybrid checkpoint (its teacher: --hf)")
    ap.add_argument("--hf", default=None, help="the teacher (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--probe", default=str(ROOT / "docs/results/probe_smollm2.json"))
    ap.add_argument("--contexts", default="512,2048")
    ap.add_argument("--prompts", type=int, default=2, help="prompts per context")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--draft-len", type=int, default=4)
    a = ap.parse_args()

    from rad_megatron.checkpoint.hf_import import model_from_hf
    from rad_megatron.checkpoint.hf_source import resolve
    from rad_megatron.checkpoint.store import load_model, load_tokenizer
    from rad_megatron.distributed import ParallelConfig, init_distributed

    init_distributed(ParallelConfig(tp=1, seed=0))
    teacher, _ = model_from_hf(resolve(a.hf))
    hybrid = load_model(a.hybrid).eval()
    tok = load_tokenizer(a.hybrid)
    probe = json.loads(Path(a.probe).read_text())
    skip_teacher = probe["chosen"]["skip"]
    ranking = [b for b in probe["per_layer_ranking"] if b in hybrid.rad_config.attention_layers]
    skip_hybrid = sorted(ranking[: len(skip_teacher)])
    rows = methods(teacher, hybrid, skip_teacher, skip_hybrid)
    print(f"teacher skip set {skip_teacher}; hybrid Mamba layers {hybrid.rad_config.mamba_layers}, skip set "
          f"{skip_hybrid}; draft length {a.draft_len}, {a.new_tokens} new tokens, batch 1, "
          f"{torch.get_num_threads()} CPU threads", flush=True)
    report = {}
    for context in (int(c) for c in a.contexts.split(",")):
        agg = {name: {"seconds": 0.0, "decode_seconds": 0.0, "tokens": 0, "drafted": 0, "accepted": 0, "steps": 0, "identical": True}
               for name in rows}
        names = list(rows)
        for i, prompt in enumerate(gsm8k_prompts(tok, context, a.prompts)):
            reference = {}
            order = names[i % len(names):] + names[: i % len(names)]
            for name in sorted(order, key=lambda n: "plain" not in n):  # plain first: the reference tokens
                target, make_draft, rollback = rows[name]
                out, stats, seconds, decode = run_one(target, make_draft, rollback, prompt, a.new_tokens, a.draft_len)
                key = name.split(":")[0]
                if make_draft is None:
                    reference[key] = out
                r = agg[name]
                r["seconds"] += seconds
                r["decode_seconds"] += decode
                r["tokens"] += len(out)
                r["identical"] &= out == reference[key]
                if stats is not None:
                    r["drafted"] += stats.drafted
                    r["accepted"] += stats.accepted
                    r["steps"] += stats.steps
        report[context] = agg
        print(f"\ncontext {context} ({a.prompts} prompts)")
        print(f"{'method':38} {'decode tok/s':>12} {'x plain':>7} {'end-to-end x':>12} {'accept':>7} "
              f"{'tok/step':>8} {'identical':>9}")
        for name, r in agg.items():
            plain = agg[name.split(":")[0] + ": plain"]
            speed = (r["tokens"] - a.prompts) / r["decode_seconds"]
            base = (plain["tokens"] - a.prompts) / plain["decode_seconds"]
            e2e = (r["tokens"] / r["seconds"]) / (plain["tokens"] / plain["seconds"])
            acc = f"{r['accepted'] / r['drafted']:.3f}" if r["drafted"] else "-"
            per_step = f"{(r['tokens'] - a.prompts) / r['steps']:.2f}" if r["steps"] else "1.00"
            print(f"{name:38} {speed:12.2f} {speed / base:7.2f} {e2e:12.2f} {acc:>7} {per_step:>8} "
                  f"{str(r['identical']):>9}", flush=True)
    print(json.dumps({"skip_teacher": skip_teacher, "skip_hybrid": skip_hybrid, "results": report}))


if __name__ == "__main__":
    main()
