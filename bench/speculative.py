"""Speculative generation on SmolLM2 against plain greedy decoding, side by side in one process.

    python bench/speculative.py --hybrid runs/demo/checkpoints/step_000060 [--contexts 512,2048] [--prompts 2]
        [--new-tokens 32] [--draft-len 4] [--identity-prompts 20]

Targets: the original SmolLM2-135M-Instruct (the teacher) and the distilled hybrid `--hybrid` (e.g. the last
checkpoint of `make demo`: 4 attention layers replaced by Mamba-2 and distilled). Methods, all greedy, batch 1:
  plain                 greedy steps on the cached engine (inference/engine.py), the yardstick
  (a) self-speculative  the target drafting with a skip set of its attention layers (the probe's chosen set,
                        restricted to the target's attention layers)
  (b) draft model       the distilled hybrid drafting for its teacher
each speculative method with both Mamba rollbacks where the drafting or verifying model has Mamba layers
(snapshot, recompute). Prompts: few-shot GSM8K text (train solutions, then a test question) cut to the context length;
with --identity-prompts N also the first N test questions alone, under the chat template.
Methods run in turn for each prompt, their order rotating between prompts, so that load drift hits each alike.
Every speculative output is checked token for token against plain greedy decoding of the same target. Times are CPU
seconds of the one torch thread (time.thread_time), not wall time: the machine these ran on is shared. Printed:
decode tokens/s (after the prefills; the first token comes from the target's prefill) and its ratio to plain, the
end-to-end ratio (prefills included: a separate draft model prefills the prompt too), acceptance rate (accepted /
drafted) and tokens emitted per target forward.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# CPU time of this thread: torch runs on it alone (--threads 1), and unlike wall time it does not count the time the
# scheduler gives to other processes on a shared machine
CLOCK = time.thread_time
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
    out, t0 = [tok], CLOCK()
    while len(out) < new_tokens:
        tok = int(session.feed(torch.tensor([[tok]]))[0, -1].argmax())
        out.append(tok)
    return out, CLOCK() - t0


def run_one(target, make_draft, rollback, prompt, new_tokens, k):
    """(tokens, stats or None, seconds end to end, seconds of decoding after the prefills)."""
    from rad_megatron.inference.spec_generate import speculative_decode

    t0 = CLOCK()
    if make_draft is None:
        out, decode = plain_greedy(target, prompt, new_tokens)
        return out, None, CLOCK() - t0, decode
    out, stats = speculative_decode(target, prompt, new_tokens, make_draft(), k=k, rollback=rollback, clock=CLOCK)
    return out, stats, CLOCK() - t0, stats.seconds


@torch.no_grad()
def forward_costs(targets: dict, prompt: list[int], k: int, repeats: int = 9) -> dict[str, dict[str, float]]:
    """Median CPU seconds, after `prompt`, of a one-token step, the same step with the skip set, and a (k+1)-token
    verify forward, per target (name -> (model, skip set)), interleaved across targets and cases; the pieces of the
    cost model (accepted + 1) / (k c + v)."""
    from rad_megatron.inference.engine import InferenceSession

    sessions = {}
    for name, (model, _) in targets.items():
        sessions[name] = InferenceSession(model, 1, len(prompt) + k + 2)
        sessions[name].feed(torch.tensor([prompt]), last_only=True)
    n = len(prompt)
    times = {name: {"step": [], "skip step": [], "verify": []} for name in targets}
    for _ in range(repeats):
        for name, (_, skip) in targets.items():
            for case, (tokens, sk) in {"step": ([[1]], ()), "skip step": ([[1]], skip),
                                       "verify": ([[1] * (k + 1)], ())}.items():
                sessions[name].rewind(n)  # the cost does not depend on the Mamba states' values
                t0 = CLOCK()
                sessions[name].feed(torch.tensor(tokens), sk)
                times[name][case].append(CLOCK() - t0)
    return {name: {c: sorted(v)[len(v) // 2] for c, v in cases.items()} for name, cases in times.items()}


def print_costs(costs: dict, k: int) -> None:
    print("\nforward costs after the first prompt (CPU ms, median of 9 interleaved; ratios to the same target's "
          "one-token step):")
    for name, c in costs.items():
        print(f"  {name:8} step {c['step'] * 1e3:7.1f}  skip-set step {c['skip step'] / c['step']:.3f}  "
              f"verify of {k + 1} tokens {c['verify'] / c['step']:.3f}")
    print(f"  the hybrid's step / the teacher's step (draft cost of (b)): "
          f"{costs['hybrid']['step'] / costs['teacher']['step']:.3f}")


def question_prompts(tok, count: int) -> list[list[int]]:
    """The first `count` GSM8K test questions as `rad generate` sends them (chat template)."""
    lines = (DATA / "test.jsonl").read_text().splitlines()[:count]
    return [tok.apply_chat_template([{"role": "user", "content": json.loads(line)["question"]}],
                                    add_generation_prompt=True, tokenize=True, return_dict=False)
            for line in lines]


def run_prompts(rows, prompts, new_tokens, k) -> dict:
    """Every method on every prompt (plain first per target: the reference), totals per method."""
    agg = {name: {"seconds": 0.0, "decode_seconds": 0.0, "tokens": 0, "drafted": 0, "accepted": 0, "steps": 0,
                  "identical": 0, "prompts": len(prompts)} for name in rows}
    names = list(rows)
    for i, prompt in enumerate(prompts):
        reference = {}
        order = names[i % len(names):] + names[: i % len(names)]
        for name in sorted(order, key=lambda n: "plain" not in n):
            target, make_draft, rollback = rows[name]
            out, stats, seconds, decode = run_one(target, make_draft, rollback, prompt, new_tokens, k)
            key = name.split(":")[0]
            reference.setdefault(key, out)
            r = agg[name]
            r["seconds"] += seconds
            r["decode_seconds"] += decode
            r["tokens"] += len(out)
            r["identical"] += out == reference[key]
            if stats is not None:
                r["drafted"] += stats.drafted
                r["accepted"] += stats.accepted
                r["steps"] += stats.steps
    return agg


def print_table(agg: dict, title: str) -> None:
    print(f"\n{title}")
    print(f"{'method':38} {'decode tok/CPU-s':>16} {'x plain':>7} {'end-to-end x':>12} {'accept':>7} "
          f"{'tok/step':>8} {'identical':>9}")
    for name, r in agg.items():
        plain, n = agg[name.split(":")[0] + ": plain"], r["prompts"]
        speed = (r["tokens"] - n) / r["decode_seconds"]
        base = (plain["tokens"] - n) / plain["decode_seconds"]
        e2e = (r["tokens"] / r["seconds"]) / (plain["tokens"] / plain["seconds"])
        acc = f"{r['accepted'] / r['drafted']:.3f}" if r["drafted"] else "-"
        per_step = f"{(r['tokens'] - n) / r['steps']:.2f}" if r["steps"] else "1.00"
        print(f"{name:38} {speed:16.2f} {speed / base:7.2f} {e2e:12.2f} {acc:>7} {per_step:>8} "
              f"{r['identical']:>5}/{n:<3}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hybrid", required=True, help="distilled hybrid checkpoint (its teacher: --hf)")
    ap.add_argument("--hf", default=None, help="the teacher (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--probe", default=str(ROOT / "docs/results/probe_smollm2.json"))
    ap.add_argument("--contexts", default="512,2048")
    ap.add_argument("--prompts", type=int, default=2, help="prompts per context (0: only the forward costs)")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--draft-len", type=int, default=4)
    ap.add_argument("--identity-prompts", type=int, default=0,
                    help="also run every method on the first N GSM8K test questions alone (chat template)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1: on a shared machine, OpenMP's 2-thread sync turns every small op into "
                         "a scheduling wait; measured 10x on a Mamba layer step)")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))  # this checkout's rad_megatron, not the one the venv was installed from
    torch.set_num_threads(a.threads)

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
    for context in (int(c) for c in a.contexts.split(",") if c):
        prompts = gsm8k_prompts(tok, context, max(1, a.prompts))
        if a.prompts:
            report[context] = run_prompts(rows, prompts, a.new_tokens, a.draft_len)
            print_table(report[context], f"context {context} ({a.prompts} prompts)")
        costs = forward_costs({"teacher": (teacher, skip_teacher), "hybrid": (hybrid, skip_hybrid)}, prompts[0],
                              a.draft_len)
        print_costs(costs, a.draft_len)
        report[f"{context} costs"] = costs
    if a.identity_prompts:
        prompts = question_prompts(tok, a.identity_prompts)
        report["questions"] = run_prompts(rows, prompts, a.new_tokens, a.draft_len)
        print_table(report["questions"], f"{len(prompts)} GSM8K test questions alone, chat template "
                                         f"({min(map(len, prompts))}-{max(map(len, prompts))} tokens)")
    print(json.dumps({"skip_teacher": skip_teacher, "skip_hybrid": skip_hybrid, "results": report}))


if __name__ == "__main__":
    main()
