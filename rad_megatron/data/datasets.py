"""Training data for distillation: Hugging Face `datasets` over local jsonl/text/parquet files (or hub names),
chat-formatted (question/answer -> the tokenizer's chat template, prompt tokens masked out of the loss) or plain text,
packed into fixed-length sequences, and a sampler whose position can be saved and resumed exactly."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from rad_megatron.errors import RadError
from rad_megatron.validation import rules


@dataclass
class DataConfig:
    """Where the distillation text comes from and how it is cut."""

    path: str = ""
    """Local .jsonl / .json / .txt / .parquet file, or a hub dataset name (needs a network)."""
    format: str = field(default="auto", metadata=rules(choices=("auto", "chat", "text")))
    """'chat' (prompt_field + response_field through the chat template), 'text' (text_field), or 'auto'."""
    prompt_field: str = "question"
    """Chat format: the user turn."""
    response_field: str = "answer"
    """Chat format: the assistant turn (the only tokens the loss sees)."""
    text_field: str = "text"
    """Text format: the document."""
    seq_len: int = field(default=256, metadata=rules(ge=1))
    """Tokens per packed training sequence."""
    held_out: int = field(default=16, metadata=rules(ge=0))
    """Examples set aside (before packing) for held-out evaluation."""
    max_examples: int | None = field(default=None, metadata=rules(ge=1))
    """Use at most this many examples (after the held-out split); None: all."""
    seed: int = field(default=0, metadata=rules(ge=0))
    """Shuffle seed of the example order and of the sampler."""


def load_examples(cfg: DataConfig) -> list[dict]:
    from datasets import load_dataset

    if not cfg.path:
        raise RadError("data.path is empty; give a .jsonl/.txt/.parquet file or a hub dataset name")
    path = Path(cfg.path)
    if path.exists():
        kind = {".jsonl": "json", ".json": "json", ".txt": "text", ".parquet": "parquet"}.get(path.suffix)
        if kind is None:
            raise RadError(f"data.path {path}: unsupported suffix '{path.suffix}' (use .jsonl, .txt or .parquet)")
        try:
            ds = load_dataset(kind, data_files=str(path), split="train")
        except Exception as e:  # noqa: BLE001 - datasets wraps the parser's error; name the file and the line
            raise RadError(f"data.path {path}: {_unreadable(path, kind, e)}") from None
    elif "/" in cfg.path and not cfg.path.startswith((".", "/")):
        ds = load_dataset(cfg.path, split="train")
    else:
        raise RadError(f"data.path {cfg.path}: no such file")
    return list(ds)


def _unreadable(path: Path, kind: str, err: Exception) -> str:
    """What is wrong with a data file `datasets` could not read: the first line that is not a JSON object (.jsonl),
    else the parser's own first line."""
    import json

    if kind == "json" and path.suffix == ".jsonl":
        with open(path, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    if not isinstance(json.loads(line), dict):
                        return f"line {n} is not a JSON object; every line must be one example {{...}}"
                except ValueError as e:
                    return f"line {n} is not valid JSON ({e}); fix or remove that line"
    cause = err.__cause__ or err
    return f"cannot be read as {kind} ({type(cause).__name__}: {(str(cause).strip().splitlines() or [''])[0][:160]})"


def _format(cfg: DataConfig, example: dict) -> str:
    if cfg.format != "auto":
        return cfg.format
    if cfg.prompt_field in example and cfg.response_field in example:
        return "chat"
    if cfg.text_field in example:
        return "text"
    raise RadError(f"data: an example has neither '{cfg.prompt_field}'/'{cfg.response_field}' nor "
                   f"'{cfg.text_field}' fields (fields: {sorted(example)}); set data.format and the field names")


def tokenize_example(tok, cfg: DataConfig, example: dict) -> tuple[list[int], list[int]]:
    """Token ids and a loss mask (1 = learn this token) for one example, ending with eos."""
    if _format(cfg, example) == "chat" and not getattr(tok, "chat_template", None):
        # a base model's tokenizer has no chat template: a plain question/answer layout, answer tokens learned
        prompt = tok(f"Question: {example[cfg.prompt_field]}\nAnswer: ")["input_ids"]
        answer = tok(str(example[cfg.response_field]))["input_ids"] + \
            ([tok.eos_token_id] if tok.eos_token_id is not None else [])
        return prompt + answer, [0] * len(prompt) + [1] * len(answer)
    if _format(cfg, example) == "chat":
        user = [{"role": "user", "content": str(example[cfg.prompt_field])}]
        prompt = tok.apply_chat_template(user, tokenize=True, add_generation_prompt=True, return_dict=False)
        full = tok.apply_chat_template(user + [{"role": "assistant", "content": str(example[cfg.response_field])}],
                                       tokenize=True, return_dict=False)
        if full[: len(prompt)] != prompt:  # templates that rewrite the prompt when a reply follows
            prompt = []
        return list(full), [0] * len(prompt) + [1] * (len(full) - len(prompt))
    ids = tok(str(example[cfg.text_field]))["input_ids"] + ([tok.eos_token_id] if tok.eos_token_id is not None else [])
    return ids, [1] * len(ids)


def split_examples(examples: list[dict], cfg: DataConfig) -> tuple[list[dict], list[dict]]:
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    shuffled = [examples[i] for i in order]
    held, train = shuffled[: cfg.held_out], shuffled[cfg.held_out:]
    if cfg.max_examples:
        train = train[: cfg.max_examples]
    if not train:
        raise RadError(f"data: no training examples left after holding out {cfg.held_out}")
    return train, held


def pack(tok, cfg: DataConfig, examples: list[dict]) -> dict[str, torch.Tensor]:
    """Concatenate examples and cut into sequences: input_ids/labels/loss_mask [N, seq_len] (the tail is dropped)."""
    ids, mask = [], []
    for ex in examples:
        i, m = tokenize_example(tok, cfg, ex)
        ids += i
        mask += m
    n = (len(ids) - 1) // cfg.seq_len
    if n < 1:
        raise RadError(f"data: {len(ids)} tokens do not fill one sequence of data.seq_len={cfg.seq_len}")
    t, m = torch.tensor(ids[: n * cfg.seq_len + 1]), torch.tensor(mask[: n * cfg.seq_len + 1])
    return {"input_ids": t[:-1].view(n, cfg.seq_len), "labels": t[1:].view(n, cfg.seq_len),
            "loss_mask": m[1:].view(n, cfg.seq_len).float()}


def pad_batch(tok, cfg: DataConfig, examples: list[dict]) -> dict[str, torch.Tensor]:
    """Held-out examples one per row (right-padded, pads masked): evaluation sees whole examples."""
    rows = [tokenize_example(tok, cfg, ex) for ex in examples]
    width = min(max(len(i) for i, _ in rows), cfg.seq_len + 1)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad)
    mask = torch.zeros(len(rows), width)
    for r, (i, m) in enumerate(rows):
        i, m = i[:width], m[:width]
        ids[r, : len(i)] = torch.tensor(i)
        mask[r, : len(m)] = torch.tensor(m, dtype=torch.float)
    return {"input_ids": ids[:, :-1], "labels": ids[:, 1:], "loss_mask": mask[:, 1:]}


class ResumableSampler:
    """Sequence indices in a seeded permutation per epoch; `state_dict` / `load_state_dict` resume mid-epoch."""

    def __init__(self, size: int, seed: int = 0):
        self.size, self.seed, self.epoch, self.position = size, seed, 0, 0

    def _perm(self):
        return torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 1000003 + self.epoch))

    def take(self, count: int) -> list[int]:
        out = []
        while len(out) < count:
            perm = self._perm()
            step = min(count - len(out), self.size - self.position)
            out += perm[self.position: self.position + step].tolist()
            self.position += step
            if self.position == self.size:
                self.epoch, self.position = self.epoch + 1, 0
        return out

    def state_dict(self):
        return {"epoch": self.epoch, "position": self.position, "size": self.size, "seed": self.seed}

    def load_state_dict(self, state):
        if state["size"] != self.size or state["seed"] != self.seed:
            raise RadError(f"resume: the data differs from the checkpoint's ({state['size']} sequences, seed "
                           f"{state['seed']} there; {self.size}, {self.seed} now)")
        self.epoch, self.position = state["epoch"], state["position"]
