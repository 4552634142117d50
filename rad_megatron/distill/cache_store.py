"""The offline teacher cache on disk: the teacher's top-k log-probabilities for every token of the training samples
(and of every held-out batch), written once by `rad teacher-cache` and read by any number of distillation runs.

Layout of a cache folder:
  manifest.json       what the cache is and how to read it: teacher, tokenizer fingerprint, data fingerprint, top_k,
                      temperature, value dtype, sequence length, micro-batch size, writers, samples, shard sizes.
                      Written last and atomically: a folder without it is an incomplete cache (partial.json holds the
                      same settings while it is being written).
  shard_WWW.bin       one shard per writer rank: fixed-size records, one per training sample, appended in the order
                      the writer computed them. A record: checksum of the sample's token ids (float64), top-k values
                      [seq, k] (float32, or bfloat16 bits), top-k indices [seq, k] (uint16 below 65,537 tokens, else
                      int32), the log-probability of each label at T = 1 [seq] (float32; with the loss mask it gives
                      the teacher's nll sum exactly as the live stream computes it) and the loss mask [seq] (uint8).
                      The tail mass (1 - sum of the top-k probabilities) is not stored: the loss derives it from the
                      values, as it does for the live stream.
  shard_WWW.ids       the global sample id of each record (int64), appended after its record is on disk: a record
                      counts once its id is there, so a writer killed mid-record resumes by truncating both files
                      to the records with ids.
  eval.safetensors    the held-out batches' targets (values, indices, label log-probs, mask, checksum per batch).

Readers: `TeacherCache.targets(sample ids)` (any ids the cache holds), `TeacherCache.eval_targets(i)`, and
`CachedTargets`, which serves a student replica by (step, micro-batch) with distill.stream.StudentReceiver's
contract, so the trainer cannot tell a cache from a live teacher. Bit-identity with the live stream holds for the
same teacher (and teacher TP size), data and micro-batch size: the cache writer computes exactly the micro-batches
the live teacher would, and the stored values are the ones it would send.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from rad_megatron.distill.schedule import EVAL_MICRO, replica_slice
from rad_megatron.distill.stream import checksum, target_sums
from rad_megatron.errors import RadError
from rad_megatron.faults import failpoint

FORMAT = 1
MANIFEST, PARTIAL, EVAL_FILE = "manifest.json", "partial.json", "eval.safetensors"
VALUE_DTYPES = ("float32", "bfloat16")
MATCHED = ("tokenizer", "data", "top_k", "temperature")  # what a run must agree on with its cache


def index_dtype_for(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 65536 else "int32"


def record_dtype(seq_len: int, top_k: int, values: str, indices: str) -> np.dtype:
    return np.dtype([("checksum", "<f8"), ("values", "<u2" if values == "bfloat16" else "<f4", (seq_len, top_k)),
                     ("indices", "<u2" if indices == "uint16" else "<i4", (seq_len, top_k)),
                     ("label_logp", "<f4", (seq_len,)), ("mask", "u1", (seq_len,))])


def manifest_dtype(m: dict) -> np.dtype:
    return record_dtype(m["seq_len"], m["top_k"], m["dtype"], m["index_dtype"])


def shard_paths(folder: Path, writer: int) -> tuple[Path, Path]:
    return Path(folder) / f"shard_{writer:03d}.bin", Path(folder) / f"shard_{writer:03d}.ids"


def committed_records(folder: Path, writer: int, dtype: np.dtype, group: int = 1) -> int:
    """Records of a shard that are complete and have their id, rounded down to whole groups of `group`."""
    bin_path, ids_path = shard_paths(folder, writer)
    if not bin_path.exists() or not ids_path.exists():
        return 0
    n = min(bin_path.stat().st_size // dtype.itemsize, ids_path.stat().st_size // 8)
    return n - n % group


# ---------------------------------------------------------------------------------------------------- writing
def _values_array(vals: torch.Tensor, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return vals.to(torch.bfloat16).view(torch.int16).cpu().numpy().view(np.uint16)
    return vals.float().cpu().numpy()


def to_records(dtype: np.dtype, input_ids, vals, idx, label_logp, mask, values: str) -> np.ndarray:
    """One micro-batch of targets -> records (host memory)."""
    rec = np.zeros(input_ids.shape[0], dtype=dtype)
    rec["checksum"] = [checksum(row) for row in input_ids]
    rec["values"] = _values_array(vals, values)
    rec["indices"] = idx.cpu().numpy()
    rec["label_logp"] = label_logp.float().cpu().numpy()
    rec["mask"] = mask.cpu().numpy()
    return rec


def _write_synced(f, data: bytes) -> None:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())


class ShardWriter:
    """The append-only shard of one writer rank (see the module docstring); opening it drops uncommitted bytes."""

    def __init__(self, folder: Path, writer: int, dtype: np.dtype, group: int = 1):
        self.dtype = dtype
        self.count = committed_records(folder, writer, dtype, group)
        bin_path, ids_path = shard_paths(folder, writer)
        for path, size in ((bin_path, self.count * dtype.itemsize), (ids_path, self.count * 8)):
            with open(path, "ab") as f:
                f.truncate(size)
        self.bin, self.ids = open(bin_path, "ab"), open(ids_path, "ab")

    def append(self, sample_ids, records: np.ndarray) -> None:
        _write_synced(self.bin, records.tobytes())
        # a test hook: a kill here leaves records without their ids (nothing unless RAD_FAILPOINT names it)
        failpoint(f"teacher-cache-records-written:{self.count}")
        _write_synced(self.ids, np.asarray(sample_ids, "<i8").tobytes())
        self.count += len(records)

    def close(self) -> None:
        self.bin.close()
        self.ids.close()


def write_eval_file(folder: Path, batches: list[tuple]) -> None:
    """Held-out targets, one entry per batch: (input_ids, values, indices, label_logp, mask)."""
    from safetensors.torch import save_file

    tensors = {}
    for i, (ids, vals, idx, label_logp, mask) in enumerate(batches):
        tensors.update({f"{i}.values": vals.float().cpu().contiguous(), f"{i}.indices": idx.int().cpu().contiguous(),
                        f"{i}.label_logp": label_logp.float().cpu().contiguous(),
                        f"{i}.mask": mask.float().cpu().contiguous(),
                        f"{i}.checksum": torch.tensor([checksum(ids)], dtype=torch.float64)})
    tmp = Path(folder) / f".{EVAL_FILE}.tmp{os.getpid()}"
    save_file(tensors, str(tmp))
    os.replace(tmp, Path(folder) / EVAL_FILE)


# ---------------------------------------------------------------------------------------------------- reading
def read_manifest(path: Path, fix: str) -> dict:
    path = Path(path)
    if not (path / MANIFEST).is_file():
        if (path / PARTIAL).is_file():
            raise RadError(f"teacher cache {path} is incomplete (no {MANIFEST}; it was interrupted): finish it with "
                           f"{fix} --resume")
        raise RadError(f"teacher cache {path}: no {MANIFEST} there (not a teacher cache); make one with {fix}")
    manifest = json.loads((path / MANIFEST).read_text())
    if manifest.get("format") != FORMAT:
        raise RadError(f"teacher cache {path}: format {manifest.get('format')} is not {FORMAT}; remake it with {fix}")
    return manifest


class TeacherCache:
    """A complete cache: targets by global sample id and held-out targets by batch (see the module docstring)."""

    def __init__(self, path, fix: str = "rad teacher-cache --config CONFIG"):
        self.path, self.fix = Path(path), fix
        self.manifest = m = read_manifest(self.path, fix)
        self.dtype = manifest_dtype(m)
        self.shards, ids = [], []
        for w, shard in enumerate(m["shards"]):
            bin_path, ids_path = shard_paths(self.path, w)
            n = shard["records"]
            for p, want in ((bin_path, n * self.dtype.itemsize), (ids_path, n * 8)):
                size = p.stat().st_size if p.exists() else 0
                if size < want:  # larger is fine: an extension is being written, its records are not read
                    raise RadError(f"teacher cache shard {p} is {size} bytes, {MANIFEST} says {want} (truncated): "
                                   f"rewrite it with {fix} --resume")
            self.shards.append(np.memmap(bin_path, dtype=self.dtype, mode="r", shape=(n,)) if n else None)
            ids.append(np.fromfile(ids_path, dtype="<i8", count=n))
        where = np.concatenate([np.stack([np.full(len(x), w), np.arange(len(x))], 1) for w, x in enumerate(ids)])
        all_ids = np.concatenate(ids)
        self._order = np.argsort(all_ids, kind="stable")
        self._sorted_ids, self._where = all_ids[self._order], where[self._order]
        self._eval = None

    def check_matches(self, **run) -> None:
        """Refuse (one line) a cache whose tokenizer, data, top_k or temperature (those of them given) differ from
        the run's."""
        for key in (k for k in MATCHED if k in run):
            if self.manifest[key] != run[key]:
                raise RadError(f"distill.teacher.cache={self.path} was made with {key}={self.manifest[key]!r}, this "
                               f"run has {key}={run[key]!r}: make a cache for this run's tokenizer, data and stream "
                               f"settings ({self.fix} with another --out)")

    def _locate(self, ids) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        pos = np.searchsorted(self._sorted_ids, ids)
        ok = (pos < len(self._sorted_ids)) & (self._sorted_ids[np.minimum(pos, len(self._sorted_ids) - 1)] == ids)
        if not ok.all():
            raise RadError(f"teacher cache {self.path} holds no targets for training samples "
                           f"{ids[~ok][:4].tolist()}... ({self.manifest['samples']} samples cached): extend it with "
                           f"{self.fix} --replicas N --resume (N = the run's student data-parallel size)")
        return self._where[pos]

    def records(self, ids) -> np.ndarray:
        return np.stack([self.shards[w][r] for w, r in self._locate(ids)])

    def targets(self, ids) -> dict[str, torch.Tensor]:
        """values float32 [n, seq, k], indices int64, label_logp float32 [n, seq], mask float32, checksum [n]."""
        rec = self.records(ids)
        if self.manifest["dtype"] == "bfloat16":
            values = torch.from_numpy(rec["values"].view(np.int16)).view(torch.bfloat16).float()
        else:
            values = torch.from_numpy(np.ascontiguousarray(rec["values"]))
        return {"values": values, "indices": torch.from_numpy(rec["indices"].astype(np.int64)),
                "label_logp": torch.from_numpy(np.ascontiguousarray(rec["label_logp"])),
                "mask": torch.from_numpy(rec["mask"].astype(np.float32)),
                "checksum": torch.from_numpy(np.ascontiguousarray(rec["checksum"])), "bytes": rec.nbytes}

    def eval_targets(self, i: int) -> dict[str, torch.Tensor]:
        if self._eval is None:
            from safetensors.torch import load_file

            self._eval = load_file(str(self.path / EVAL_FILE)) if (self.path / EVAL_FILE).is_file() else {}
        if f"{i}.values" not in self._eval:
            raise RadError(f"teacher cache {self.path} has no held-out batch {i} (made for "
                           f"{self.manifest['eval_batches']} batches of {self.manifest['eval_batch_size']}): make it "
                           f"with this run's data.held_out and distill.train.eval_batch_size")
        t = {k.split(".", 1)[1]: v for k, v in self._eval.items() if k.startswith(f"{i}.")}
        return {**t, "indices": t["indices"].long(), "bytes": sum(v.numel() * v.element_size() for v in t.values())}


class CachedTargets:
    """distill.stream.StudentReceiver's contract (`receive(step, micro, ids)`, `wait_s`, `bytes_received`) served
    from a TeacherCache for one student replica. Step `first_step` starts at global sample `first_sample` (the
    sampler's position when training starts or resumes); every step takes dp * grad_accum * mbs samples."""

    def __init__(self, cache: TeacherCache, replica: int, dp: int, grad_accum: int, mbs: int, first_step: int,
                 first_sample: int, device="cpu"):
        self.cache, self.replica, self.dp, self.mbs, self.device = cache, replica, dp, mbs, device
        self.per_step, self.first_step, self.first_sample = dp * grad_accum * mbs, first_step, first_sample
        self.wait_s = 0.0
        self.bytes_received = 0

    def sample_ids(self, step: int, micro: int) -> list[int]:
        start = self.first_sample + (step - self.first_step) * self.per_step
        return replica_slice(list(range(start, start + self.per_step)), self.replica, micro, self.dp, self.mbs)

    def receive(self, step: int, micro: int, ids: torch.Tensor):
        t0 = time.perf_counter()
        if micro >= EVAL_MICRO:
            t = self.cache.eval_targets(micro - EVAL_MICRO)
            ok = t["checksum"].item() == checksum(ids)
        else:
            t = self.cache.targets(self.sample_ids(step, micro))
            ok = t["checksum"].tolist() == [checksum(row) for row in ids]
        if not ok:
            raise RadError(f"teacher cache {self.cache.path}: the targets of step {step} micro-batch {micro} were "
                           f"computed for other tokens (the data or its order differs from the cache's)")
        nll, tokens = target_sums(t["label_logp"], t["mask"])
        self.bytes_received += t["bytes"]
        vals, idx = t["values"].to(self.device), t["indices"].to(self.device)
        self.wait_s += time.perf_counter() - t0
        return vals, idx, nll, tokens
