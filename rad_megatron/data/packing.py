"""Document-aware packing of one source: which documents and offsets make each packed sequence, computed once per
epoch and cached, and the assembly of a sequence with its document boundaries.

An epoch of a source is its training documents in a seeded order, concatenated and cut into sequences of
seq_len + 1 tokens (consecutive sequences share one token, as in Megatron's GPTDataset; the tail is dropped), and
visited in a seeded order. The three arrays are Megatron's: the document order, the sample index (per sequence, the
position in the document order and the offset where it starts: megatron.core.datasets.helpers.build_sample_idx)
and the shuffle; each is an .npy file, memory-mapped, so a rank holds none of them in memory.

A sequence carries where its documents start: `seq_idx` (document number within the row, per input token) and a loss
mask that drops the one prediction crossing a boundary (the last token of a document does not predict the first
token of the next). A document cut at the end of a row continues at position 0 of the row that follows it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from rad_megatron.data.corpus import Corpus
from rad_megatron.probe.report import write_json_atomic


def _save_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def load_or_build(path: Path, build) -> np.ndarray:
    """The cached array at `path` (memory-mapped), built and saved first if missing. Ranks that race write the same
    bytes under private names and rename, so any reader sees a complete file."""
    if not path.is_file():
        _save_atomic(path, build())
    return np.load(path, mmap_mode="r")


class PackedSource:
    """Packed sequences of one source's training documents, per epoch (see the module docstring).

    Training documents: all of the corpus but `exclude` (the held-out ones), or a seeded choice of `max_documents`
    of those. Everything is built on first use and then only memory-mapped."""

    def __init__(self, corpus: Corpus, seq_len: int, seed: int, source_index: int, exclude=(),
                 max_documents: int | None = None):
        self.corpus, self.seq_len, self.seed, self.source_index = corpus, seq_len, seed, source_index
        self.exclude, self.max_documents = sorted(int(d) for d in exclude), max_documents
        key = hashlib.sha256(json.dumps([seq_len, seed, source_index, self.exclude, max_documents]).encode())
        self.folder = corpus.folder / "packing" / key.hexdigest()[:16]
        self.folder.mkdir(parents=True, exist_ok=True)
        self.documents = load_or_build(self.folder / "documents.npy", self._build_documents)
        summary = self.folder / "summary.json"
        if not summary.is_file():
            tokens = int(corpus.sizes[self.documents].sum(dtype=np.int64)) if len(self.documents) else 0
            write_json_atomic(summary, {"tokens_per_epoch": tokens, "documents": len(self.documents)})
        self.tokens_per_epoch = json.loads(summary.read_text())["tokens_per_epoch"]
        self.num_samples = max((self.tokens_per_epoch - 1) // seq_len, 0)
        self._epoch: tuple | None = None

    def _build_documents(self) -> np.ndarray:
        docs = np.setdiff1d(np.arange(self.corpus.num_documents, dtype=np.int32), np.asarray(self.exclude, np.int32))
        if self.max_documents is not None and self.max_documents < len(docs):
            pick = np.random.RandomState([self.seed, self.source_index, 99991]).choice(
                len(docs), self.max_documents, replace=False)
            docs = np.sort(docs[pick])
        return docs.astype(np.int32)

    def _rng(self, epoch: int) -> np.random.RandomState:
        return np.random.RandomState([self.seed, self.source_index, epoch])

    def _build_order(self, epoch: int) -> np.ndarray:
        order = np.array(self.documents, dtype=np.int32)
        self._rng(epoch).shuffle(order)
        return order

    def _epoch_arrays(self, epoch: int):
        if self._epoch is None or self._epoch[0] != epoch:
            from megatron.core.datasets.helpers import build_sample_idx

            order = load_or_build(self.folder / f"epoch{epoch:05d}_documents.npy", lambda: self._build_order(epoch))
            index = load_or_build(self.folder / f"epoch{epoch:05d}_samples.npy", lambda: build_sample_idx(
                np.asarray(self.corpus.sizes, dtype=np.int32), np.asarray(order), self.seq_len, 1,
                self.tokens_per_epoch, True, True))
            shuffle = load_or_build(self.folder / f"epoch{epoch:05d}_shuffle.npy", lambda: np.random.RandomState(
                [self.seed, self.source_index, epoch, 1]).permutation(self.num_samples).astype(np.int64))
            self._epoch = (epoch, order, index, shuffle)
        return self._epoch[1:]

    def sample(self, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The m-th sequence this source yields (epoch m // num_samples): (tokens, mask, document number), each
        [seq_len + 1]."""
        epoch, j = divmod(int(m), self.num_samples)
        order, index, shuffle = self._epoch_arrays(epoch)
        i = int(shuffle[j])
        (d0, o0), (d1, o1) = index[i], index[i + 1]
        parts = []
        for d in range(int(d0), int(d1) + 1):
            start = int(o0) if d == d0 else 0
            stop = int(o1) + 1 if d == d1 else None  # the end document contributes up to and including o1
            length = None if stop is None else stop - start
            parts.append(self.corpus.read(order[d], start, length))
        tokens = np.concatenate([p[0] for p in parts])
        mask = np.concatenate([p[1] for p in parts])
        doc = np.concatenate([np.full(len(p[0]), n, dtype=np.int64) for n, p in enumerate(parts)])
        return tokens, mask, doc


def training_row(tokens: np.ndarray, mask: np.ndarray, doc: np.ndarray) -> dict[str, np.ndarray]:
    """seq_len + 1 tokens -> input_ids, labels, loss_mask (the label's own mask, 0 across a boundary) and seq_idx."""
    same = doc[1:] == doc[:-1]
    return {"input_ids": tokens[:-1], "labels": tokens[1:], "loss_mask": (mask[1:] * same).astype(np.float32),
            "seq_idx": doc[:-1]}
