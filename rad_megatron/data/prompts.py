"""Prompt lists for the probe and generation: a .jsonl (field question | prompt | text | input), a .txt (one prompt per
line), or a Hugging Face dataset name (needs a network), optionally chat-formatted with the tokenizer's template."""

from __future__ import annotations

import json
from pathlib import Path

from rad_megatron.errors import RadError

FIELDS = ("question", "prompt", "text", "input", "code")


def read_prompts(source: str, limit: int | None = None) -> list[str]:
    path = Path(source)
    if path.exists():
        texts = _read_file(path)
    elif "/" in source and not source.startswith((".", "/")):
        texts = _read_hub(source)
    else:
        raise RadError(f"--prompts {source}: no such file (give a .jsonl / .txt path or a hub dataset name)")
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise RadError(f"--prompts {source}: no prompts found (empty file, or no '{FIELDS[0]}'/'prompt'/'text' field)")
    return texts[:limit] if limit else texts


def _read_file(path: Path) -> list[str]:
    if path.suffix == ".jsonl":
        out = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise RadError(f"--prompts {path}: line {n} is not JSON") from None
            field = next((f for f in FIELDS if f in row), None)
            if field is None:
                raise RadError(f"--prompts {path}: line {n} has none of the fields {', '.join(FIELDS)}")
            out.append(str(row[field]))
        return out
    return path.read_text().splitlines()


def _read_hub(name: str) -> list[str]:
    from datasets import load_dataset

    ds = load_dataset(name, split="test")
    field = next((f for f in FIELDS if f in ds.column_names), None)
    if field is None:
        raise RadError(f"dataset {name} has none of the fields {', '.join(FIELDS)}")
    return list(ds[field])


def encode_prompts(tokenizer, texts: list[str], chat: bool = True) -> list[list[int]]:
    if chat and getattr(tokenizer, "chat_template", None):
        return [tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=True,
                                              add_generation_prompt=True, return_dict=False) for t in texts]
    return [tokenizer(t)["input_ids"] for t in texts]
