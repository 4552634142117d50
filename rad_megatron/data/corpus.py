"""A training source tokenised once into Megatron-Core's indexed dataset, read by every rank without loading it.

Format: `megatron.core.datasets.indexed_dataset` (IndexedDatasetBuilder / IndexedDataset), the memory-mapped
.bin/.idx pair Megatron-LM's preprocess_data.py writes: a document is one sequence; the .idx holds lengths and byte
offsets, the .bin the tokens (uint16 below 65,500 token ids, else int32). Why this format: it is Megatron's own, so a
corpus a Megatron-LM user already tokenised is readable as it is (give its prefix as the source); reads are by
document and offset, so a rank's memory does not grow with the corpus (pages are mapped, touched and dropped); and
the C++ helpers that build Megatron's packing and blending indices take its arrays directly.

Chat data adds a second indexed dataset of the same shape, `mask` (uint8, 1 = a token the loss learns: the
assistant's answer), written only when some token is masked. Tokenisation runs through Hugging Face `datasets`
(`map` with `num_proc`, cached by `datasets` itself), then streams into the builder batch by batch.

A built corpus lives in `<cache_dir>/<name>-<key>/` where key hashes the source files (path, size, mtime) or hub
name, the tokenizer and the format fields: changing any of them builds a new one; the same ones reuse it. The folder
is built under a temporary name and renamed when complete (`meta.json` inside marks completion), by the main rank
only; the other ranks wait for it.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from rad_megatron.errors import RadError

BUILD_VERSION = 1
SUFFIX_KIND = {".jsonl": "json", ".json": "json", ".txt": "text", ".parquet": "parquet"}


@dataclass(frozen=True)
class Source:
    """One training source of a blend."""

    path: str
    """Local .jsonl/.json/.txt/.parquet file (a glob is allowed), a Megatron indexed-dataset prefix (PREFIX.bin +
    PREFIX.idx, already tokenised with the run's tokenizer), or a hub dataset name (needs a network)."""
    weight: float = 1.0
    """Share of the training samples drawn from this source (weights are normalised over the blend)."""
    format: str = "auto"
    """'chat' (prompt_field + response_field through the chat template), 'text' (text_field), or 'auto'."""
    prompt_field: str = "question"
    """Chat format: the user turn."""
    response_field: str = "answer"
    """Chat format: the assistant turn (the only tokens the loss sees)."""
    text_field: str = "text"
    """Text format: the document (a .txt file: one document per paragraph, i.e. per blank-line-separated block)."""
    max_examples: int | None = None
    """Use at most this many training documents of this source (a seeded choice); None: all."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("RAD_DATA_CACHE") or Path.home() / ".cache" / "rad_megatron" / "data")


# ---------------------------------------------------------------------------------------------------- identity
def _files(path: str) -> list[Path]:
    if any(c in path for c in "*?["):
        return [Path(p) for p in sorted(globlib.glob(path))]
    return [Path(path)] if Path(path).is_file() else []


def is_indexed_prefix(path: str) -> bool:
    return Path(path + ".bin").is_file() and Path(path + ".idx").is_file()


def source_identity(source: Source, where: str) -> dict:
    """What the corpus is made from: files (resolved path, size, mtime), an indexed prefix, or a hub name."""
    if is_indexed_prefix(source.path):
        files = [Path(source.path + ".idx"), Path(source.path + ".bin")]
    else:
        files = _files(source.path)
    if files:
        suffixes = {f.suffix for f in files}
        if not is_indexed_prefix(source.path) and not suffixes <= set(SUFFIX_KIND):
            raise RadError(f"{where}.path {source.path}: unsupported suffix {sorted(suffixes - set(SUFFIX_KIND))} "
                           f"(use .jsonl, .json, .txt, .parquet or a Megatron .bin/.idx prefix)")
        return {"files": [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]}
    if "/" in source.path and not source.path.startswith((".", "/")) and not any(c in source.path for c in "*?["):
        return {"hub": source.path}
    raise RadError(f"{where}.path {source.path}: no such file (give a .jsonl/.txt/.parquet file, a glob, a "
                   f"Megatron .bin/.idx prefix or a hub dataset name)")


def corpus_key(source: Source, tokenizer_id: str, where: str) -> str:
    fields = {k: v for k, v in asdict(source).items() if k not in ("weight", "max_examples", "path")}
    blob = json.dumps([BUILD_VERSION, source_identity(source, where), tokenizer_id, fields], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------- building
def _tokenize_batch(batch: dict, tok, fields: dict) -> dict:
    """datasets.map function (batched): rows -> token ids and loss masks (module level: picklable for num_proc)."""
    from rad_megatron.data.datasets import DataConfig, tokenize_example

    cfg = DataConfig(**fields)
    n = len(next(iter(batch.values())))
    ids, masks = [], []
    for i in range(n):
        a, m = tokenize_example(tok, cfg, {k: v[i] for k, v in batch.items()})
        ids.append(a)
        masks.append(m)
    return {"ids": ids, "mask": masks}


def _load_rows(source: Source, where: str):
    from datasets import load_dataset

    from rad_megatron.data.datasets import _unreadable

    files = _files(source.path)
    if not files:
        return load_dataset(source.path, split="train")
    kind = SUFFIX_KIND[files[0].suffix]
    extra = {"sample_by": "paragraph"} if kind == "text" else {}
    try:
        return load_dataset(kind, data_files=[str(f) for f in files], split="train", **extra)
    except Exception as e:  # noqa: BLE001 - datasets wraps the parser's error; name the file (and line) at fault
        reasons = [(f, _unreadable(f, kind, e)) for f in files]
        f, reason = next(((f, r) for f, r in reasons if r.startswith("line ")), reasons[0])
        raise RadError(f"{where}.path {f}: {reason}") from None


def _write(folder: Path, rows, vocab_size: int, fingerprint: hashlib.sha256) -> tuple[int, int, bool]:
    """Stream tokenised rows into tokens.{bin,idx} and mask.{bin,idx}; returns (documents, tokens, any masked)."""
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    dtype = DType.optimal_dtype(vocab_size)
    tokens = IndexedDatasetBuilder(str(folder / "tokens.bin"), dtype=dtype)
    mask = IndexedDatasetBuilder(str(folder / "mask.bin"), dtype=np.uint8)
    docs = count = 0
    masked = False
    for batch in rows.iter(batch_size=1024):
        for ids, m in zip(batch["ids"], batch["mask"]):
            ids, m = np.asarray(ids, dtype=dtype), np.asarray(m, dtype=np.uint8)
            fingerprint.update(ids.tobytes())
            fingerprint.update(m.tobytes())
            tokens.add_document(ids, [ids.size])
            mask.add_document(m, [m.size])
            masked = masked or not m.all()
            docs, count = docs + 1, count + ids.size
    tokens.finalize(str(folder / "tokens.idx"))
    mask.finalize(str(folder / "mask.idx"))
    if not masked:  # plain text: every token is learned, no channel needed
        for f in ("mask.bin", "mask.idx"):
            (folder / f).unlink()
    return docs, count, masked


def build_corpus(source: Source, tok, tokenizer_id: str, folder: Path, num_proc: int, where: str = "data") -> None:
    """Tokenise `source` into `folder` (complete, or not there at all)."""
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if is_indexed_prefix(source.path):
            docs, count, masked, digest = _adopt_prefix(source.path, tmp)
        else:
            rows = _load_rows(source, where)
            fields = {k: getattr(source, k) for k in ("format", "prompt_field", "response_field", "text_field")}
            rows = rows.map(_tokenize_batch, batched=True, batch_size=256, remove_columns=rows.column_names,
                            num_proc=num_proc if num_proc > 1 else None, fn_kwargs={"tok": tok, "fields": fields},
                            desc=f"tokenising {Path(source.path).name}")
            h = hashlib.sha256()
            docs, count, masked = _write(tmp, rows, len(tok), h)
            digest = h.hexdigest()
        if docs == 0:
            raise RadError(f"data source {source.path}: no documents")
        meta = {"source": source.path, "tokenizer": tokenizer_id, "documents": docs, "tokens": count,
                "has_mask": masked, "sha256": digest, "version": BUILD_VERSION}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.replace(tmp, folder)
        except OSError:  # another job built the same corpus meanwhile: keep theirs
            if not (folder / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _adopt_prefix(prefix: str, tmp: Path):
    """A corpus already in Megatron's format: link it (no copy) and fingerprint its index and data."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    h = hashlib.sha256()
    for suffix in (".idx", ".bin"):
        os.symlink(Path(prefix + suffix).resolve(), tmp / f"tokens{suffix}")
        with open(prefix + suffix, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                h.update(block)
    ds = IndexedDataset(str(tmp / "tokens"))
    return len(ds), int(ds.sequence_lengths.sum(dtype=np.int64)), False, h.hexdigest()


def ensure_corpus(source: Source, tok, tokenizer_id: str, cache_dir: Path, num_proc: int, where: str,
                  is_main: bool) -> Path:
    """The folder of `source`'s corpus, built by the main rank if missing; other ranks wait for it."""
    key = corpus_key(source, tokenizer_id, where)
    stem = Path(source.path.rstrip("/")).stem.replace("*", "_") or "source"
    folder = Path(cache_dir) / f"{stem}-{key}"
    if not (folder / "meta.json").is_file():
        if is_main:
            folder.parent.mkdir(parents=True, exist_ok=True)
            build_corpus(source, tok, tokenizer_id, folder, num_proc, where)
        else:  # rank 0 may tokenise for longer than a collective's timeout: wait on the file instead
            while not (folder / "meta.json").is_file():
                time.sleep(0.5)
    return folder


# ---------------------------------------------------------------------------------------------------- reading
class Corpus:
    """A built corpus: document lengths (memory-mapped) and reads of (document, offset, length)."""

    def __init__(self, folder: Path):
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        self.folder = Path(folder)
        self.meta = json.loads((self.folder / "meta.json").read_text())
        self.tokens = IndexedDataset(str(self.folder / "tokens"))
        self.mask = IndexedDataset(str(self.folder / "mask")) if self.meta["has_mask"] else None

    @property
    def sizes(self) -> np.ndarray:
        """int32 [documents] token counts (memory-mapped from the .idx)."""
        return self.tokens.sequence_lengths

    @property
    def num_documents(self) -> int:
        return len(self.tokens)

    def read(self, doc: int, offset: int = 0, length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(token ids int64, loss mask uint8) of document `doc` from `offset`, `length` tokens (None: to its end)."""
        ids = self.tokens.get(int(doc), int(offset), None if length is None else int(length)).astype(np.int64)
        if self.mask is None:
            return ids, np.ones(ids.shape, dtype=np.uint8)
        return ids, self.mask.get(int(doc), int(offset), None if length is None else int(length))
