"""GSM8K accuracy of the teacher and of final students: zero-shot chat prompts, greedy batched generation on our
engine, answers scored by rad_megatron.eval's GSM8K scorer (flexible: the stated or last number; strict: only a
'#### N' / 'The answer is N' statement). One JSON per model, written atomically, so a resumed study skips it."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from rad_megatron.errors import RadError


def read_questions(path, limit: int) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise RadError(f"config.accuracy.path {path} does not exist; point it at GSM8K test.jsonl")
    rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()][:limit]
    if not rows or any("question" not in r or "answer" not in r for r in rows):
        raise RadError(f"config.accuracy.path {path}: needs question/answer rows (GSM8K format)")
    return rows


def gsm8k_accuracy(model, tok, questions: list[dict], max_new_tokens: int, batch_size: int) -> dict:
    from rad_megatron.data.prompts import encode_prompts
    from rad_megatron.eval.generation import generate_until_batch
    from rad_megatron.eval.scorers import gsm8k_correct
    from rad_megatron.inference.engine import SamplingConfig

    t0 = time.perf_counter()
    prompts = encode_prompts(tok, [q["question"] for q in questions], chat=True)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths share a batch
    texts: dict[int, str] = {}
    for i in range(0, len(order), batch_size):
        rows = order[i:i + batch_size]
        outs = generate_until_batch(model, tok, [prompts[r] for r in rows], [], max_new_tokens, SamplingConfig())
        texts.update(zip(rows, outs))
    responses = [texts[i] for i in range(len(questions))]
    flexible = [gsm8k_correct(r, q["answer"]) for r, q in zip(responses, questions)]
    strict = [gsm8k_correct(r, q["answer"], strict=True) for r, q in zip(responses, questions)]
    return {"n": len(questions), "flexible": sum(flexible) / len(questions), "strict": sum(strict) / len(questions),
            "max_new_tokens": max_new_tokens, "seconds": time.perf_counter() - t0,
            "samples": [{"question": q["question"], "response": r, "correct": c}
                        for q, r, c in zip(questions, responses, flexible)]}


def saved_accuracy(path: Path, n: int, max_new_tokens: int) -> dict | None:
    """The result in `path` if it was measured on the same number of questions and generation budget."""
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    return saved if saved.get("n") == n and saved.get("max_new_tokens") == max_new_tokens else None


def measure_accuracy(path: Path, model, tok, questions, max_new_tokens: int, batch_size: int) -> dict:
    """gsm8k_accuracy of `model`, written atomically to `path` (read back by saved_accuracy)."""
    result = gsm8k_accuracy(model, tok, questions, max_new_tokens, batch_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, path)
    return result
