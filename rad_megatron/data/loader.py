"""The training stream of a distillation run: global sample id -> a packed sequence with its document boundaries,
the held-out examples, and a fingerprint of both.

Sources (data.path, or the weighted data.blend) are tokenised once into Megatron indexed datasets (data.corpus),
packed per epoch (data.packing) and interleaved by weight (data.blend). The order is global: the trainer's sampler
hands out ids 0, 1, 2, ... (step s of a run takes [s * G, (s + 1) * G) with G = dp * grad_accum * micro_batch_size,
and each replica and micro-batch its slice, distill.schedule.replica_slice), so a run resumed at another
data-parallel size continues exactly where the last one stopped. A rank keeps no per-sample or per-token array in
memory: every index is a memory-mapped file, every sequence is read when asked for.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from rad_megatron.data.blend import Blend
from rad_megatron.data.corpus import Corpus, Source, default_cache_dir, ensure_corpus
from rad_megatron.data.datasets import DataConfig, ResumableSampler, pad_rows
from rad_megatron.data.packing import PackedSource, training_row
from rad_megatron.errors import RadError, closest

SOURCE_FIELDS = {f.name for f in dataclasses.fields(Source)}


def tokenizer_fingerprint(tok) -> str:
    """The vocabulary and eos id (what the teacher's top-k indices and the student's logits must agree on)."""
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps([len(tok), vocab, tok.eos_token_id]).encode()).hexdigest()[:16]


def tokenization_id(tok) -> str:
    """The fingerprint plus the chat template (chat data tokenises through it)."""
    template = getattr(tok, "chat_template", None) or ""
    return f"{tokenizer_fingerprint(tok)}-{hashlib.sha256(str(template).encode()).hexdigest()[:8]}"


def sources_of(cfg: DataConfig) -> list[Source]:
    """data.path or data.blend as Sources, each checked (weight > 0, known fields)."""
    defaults = {k: getattr(cfg, k) for k in ("format", "prompt_field", "response_field", "text_field",
                                             "max_examples")}
    if cfg.blend and cfg.path:
        raise RadError("data.path and data.blend are both set; give one (a blend lists every source with its path)")
    if not cfg.blend:
        if not cfg.path:
            raise RadError("data.path is empty; give a .jsonl/.txt/.parquet file, a Megatron .bin/.idx prefix, a hub "
                           "dataset name, or data.blend")
        return [Source(path=cfg.path, **defaults)]
    out = []
    for i, entry in enumerate(cfg.blend):
        where = f"data.blend[{i}]"
        if not isinstance(entry, dict) or "path" not in entry:
            raise RadError(f"{where} must be a mapping with a path (and a weight), got {entry!r}")
        for k in entry:
            if k not in SOURCE_FIELDS:
                raise RadError(f"unknown config key '{where}.{k}'{closest(k, SOURCE_FIELDS)}")
        weight = entry.get("weight", 1.0)
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not weight > 0:
            raise RadError(f"{where}.weight={weight!r} (source {entry['path']}) must be a number > 0; remove the "
                           f"source from the blend instead of giving it no weight")
        out.append(Source(**{**defaults, **entry, "weight": float(weight)}))
    return out


def _held_out_documents(num_documents: int, count: int, seed: int) -> list[int]:
    """`count` distinct documents, seeded, drawn without a permutation of all of them."""
    if count >= num_documents:
        raise RadError(f"data.held_out={count} leaves no training documents in the first source "
                       f"({num_documents} documents); lower data.held_out")
    rng, chosen, seen = np.random.RandomState([seed, 104729]), [], set()
    while len(chosen) < count:
        d = int(rng.randint(num_documents))
        if d not in seen:
            seen.add(d)
            chosen.append(d)
    return chosen


class TrainData:
    """Packed training sequences by global sample id, held-out batches, and the fingerprint of both."""

    def __init__(self, cfg: DataConfig, tok, is_main: bool = True):
        self.cfg, self.seq_len = cfg, cfg.seq_len
        sources = sources_of(cfg)
        cache = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
        tok_id = tokenization_id(tok)
        corpora = [Corpus(ensure_corpus(s, tok, tok_id, cache, cfg.num_proc, f"data.blend[{i}]" if cfg.blend
                                        else "data", is_main)) for i, s in enumerate(sources)]
        held = _held_out_documents(corpora[0].num_documents, cfg.held_out, cfg.seed) if cfg.held_out else []
        self.sources = [PackedSource(c, cfg.seq_len, cfg.seed, i, exclude=held if i == 0 else (),
                                     max_documents=s.max_examples) for i, (c, s) in enumerate(zip(corpora, sources))]
        for s, p in zip(sources, self.sources):
            if p.num_samples < 1:
                raise RadError(f"data source {s.path}: {p.tokens_per_epoch} training tokens do not fill one sequence "
                               f"of data.seq_len={cfg.seq_len}; lower data.seq_len or add data")
        self.blend = Blend([s.weight for s in sources], [p.num_samples for p in self.sources], cache / "blends")
        self.held = pad_rows([corpora[0].read(d) for d in held], cfg.seq_len, tok.pad_token_id) if held else None
        self.fingerprint = hashlib.sha256(json.dumps({
            "corpora": [[c.meta["sha256"], c.meta["documents"]] for c in corpora],
            "sources": [dataclasses.asdict(s) | {"path": None} for s in sources],
            "weights": self.blend.weights.tolist(), "seq_len": cfg.seq_len, "seed": cfg.seed, "held": held,
        }, sort_keys=True).encode()).hexdigest()[:20]

    @property
    def num_samples(self) -> int:
        """Samples per period of the blend (one epoch of every source): the sampler's size."""
        return self.blend.period

    def sampler(self) -> ResumableSampler:
        """Global sample ids in order (the shuffling is inside each source's epochs)."""
        return ResumableSampler(self.num_samples, self.cfg.seed, shuffle=False)

    def row(self, k: int) -> dict[str, np.ndarray]:
        source, m = self.blend.locate(k)
        return training_row(*self.sources[source].sample(m))

    def batch(self, ids, device="cpu") -> dict[str, torch.Tensor]:
        """Rows `ids` stacked: input_ids, labels [n, seq_len] int64, loss_mask float32, seq_idx int64."""
        rows = [self.row(k) for k in ids]
        return {key: torch.from_numpy(np.stack([r[key] for r in rows])).to(device) for key in rows[0]}
