"""The offline teacher cache, made (`rad teacher-cache`): the teacher runs once over the training samples a
distillation will consume, in the order it consumes them, and its targets go to disk (distill.cache_store) for runs
that then need no teacher ranks at all (`distill.teacher.cache=PATH`).

Which samples: the trainer's global order (data.loader.TrainData: step s takes samples [s * G, (s + 1) * G),
G = dp * grad_accum * micro_batch_size), so the cache holds samples [0, steps * replicas * grad_accum * mbs) for
`replicas` student replicas. They are computed in micro-batch groups [j * mbs, (j + 1) * mbs): exactly the
micro-batches the live teacher would compute for any data-parallel size (a replica's micro-batch is always such a
group), which is why the cached values equal the streamed ones bit for bit.

Parallelism: the teacher runs at tensor-parallel size `distill.roles.teacher_tp` (Megatron's global parallel
state), the remaining ranks are data-parallel replicas; replica w writes shard w and computes groups j = w mod W, in
order. A pipeline-parallel teacher is not supported here (there is no pipeline-parallel forward in rad_megatron yet).

Resumable: a writer's shard keeps what was committed; `--resume` continues (or extends a finished cache to more
samples) with the same settings, producing the same files as an uninterrupted run. Everything is checked before
anything is written.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from rad_megatron.distill.cache_store import (FORMAT, MANIFEST, PARTIAL, VALUE_DTYPES, ShardWriter,
                                              committed_records, index_dtype_for, manifest_dtype, shard_paths,
                                              to_records, write_eval_file)
from rad_megatron.distill.schedule import eval_rows, num_eval_batches
from rad_megatron.distill.stream import StreamConfig, teacher_token_targets
from rad_megatron.errors import RadError
from rad_megatron.probe.report import write_json_atomic


@dataclass
class CacheJob:
    """Where the cache goes and how much of the training it covers."""

    out: Path
    """The cache folder."""
    replicas: int = 1
    """Student data-parallel replicas it is made for: samples = steps x replicas x grad_accum x micro_batch_size."""
    dtype: str = "float32"
    """Stored top-k values: float32 (bit-identical to the live stream) or bfloat16 (half the bytes)."""
    resume: bool = False
    """Continue (or extend) the cache already in `out`."""
    stop_after: int | None = None
    """Stop after this many micro-batch groups per writer, without the manifest (an interruption, for tests)."""


def intended_manifest(teacher: str, tokenizer: str, data, train_cfg, writers: int, vocab: int, dtype: str,
                      eval_batches: int) -> dict:
    """Everything a cache is made with, except how many samples it holds."""
    stream: StreamConfig = train_cfg.stream
    if not stream.top_k:
        raise RadError("distill.train.stream.top_k=0 (the whole vocabulary) cannot be cached; set top_k > 0")
    if dtype not in VALUE_DTYPES:
        raise RadError(f"--dtype {dtype}: use one of {', '.join(VALUE_DTYPES)}")
    return {"format": FORMAT, "teacher": teacher, "tokenizer": tokenizer, "data": data.fingerprint,
            "top_k": stream.top_k, "temperature": stream.temperature, "dtype": dtype,
            "index_dtype": index_dtype_for(vocab), "seq_len": data.seq_len,
            "micro_batch_size": train_cfg.micro_batch_size, "writers": writers,
            "eval_batch_size": train_cfg.eval_batch_size, "eval_batches": eval_batches}


def _existing(out: Path, intent: dict, resume: bool, fix: str) -> int:
    """Samples already planned in `out` (0 for a new cache); refuses a folder that holds something else."""
    found = next((out / f for f in (MANIFEST, PARTIAL) if (out / f).is_file()), None)
    if found is None:
        if out.exists() and any(out.iterdir()):
            raise RadError(f"--out {out} is not empty and holds no teacher cache; choose another --out")
        return 0
    if not resume:
        raise RadError(f"--out {out} already holds a teacher cache; pass --resume to continue or extend it, or "
                       f"choose another --out")
    import json

    old = json.loads(found.read_text())
    diff = sorted(k for k in intent if old.get(k) != intent[k])
    if diff:
        raise RadError(f"--resume {out}: that cache was made with different {', '.join(diff)}; resume with the same "
                       f"config and number of ranks, or choose another --out ({fix})")
    return old.get("samples", 0)


def _eval_targets(model, batches: list[dict], stream: StreamConfig, device) -> list[tuple]:
    """Held-out batches (one example per row, no packing) as the live teacher serves them."""
    out = []
    for b in batches:
        b = {k: v.to(device) for k, v in b.items()}
        vals, idx, label_logp = teacher_token_targets(model, b["input_ids"], b["labels"], stream)
        out.append((b["input_ids"], vals, idx, label_logp, b["loss_mask"]))
    return out


def held_out_batches(held: dict | None, size: int) -> list[dict]:
    """The trainer's held-out batches: rows [i * size, (i + 1) * size) of the held-out set."""
    return [{k: v[eval_rows(i, size)] for k, v in held.items()} for i in range(num_eval_batches(held, size))]


@torch.no_grad()
def write_teacher_cache(ctx, model, data, train_cfg, teacher: str, tokenizer: str, job: CacheJob,
                        fix: str = "rad teacher-cache --config CONFIG") -> dict:
    """Every rank of a TP x DP teacher job calls this; returns {samples, written, complete} (see the module doc)."""
    from tqdm.auto import tqdm

    out, mbs, W = Path(job.out), train_cfg.micro_batch_size, ctx.dp
    eval_batches = held_out_batches(data.held, train_cfg.eval_batch_size)
    intent = intended_manifest(teacher, tokenizer, data, train_cfg, W, model.rad_config.vocab_size, job.dtype,
                               len(eval_batches))
    planned = _existing(out, intent, job.resume, fix)
    samples = max(train_cfg.total_steps * job.replicas * train_cfg.grad_accum * mbs, planned)
    dist.barrier()  # every rank has checked before anything is written
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if not (out / MANIFEST).is_file() or samples > planned:
            write_json_atomic(out / PARTIAL, {**intent, "samples": samples})
    dtype, writes = manifest_dtype(intent), ctx.tp_rank == 0
    done = committed_records(out, ctx.dp_rank, dtype, mbs) // mbs  # read before any rank appends
    dist.barrier()
    if ctx.dp_rank == 0 and not (out / "eval.safetensors").is_file():
        targets = _eval_targets(model, eval_batches, train_cfg.stream, ctx.device)
        if writes and targets:
            write_eval_file(out, targets)
    mine = list(range(ctx.dp_rank, samples // mbs, W))[done:]
    if job.stop_after is not None:
        mine = mine[:job.stop_after]
    writer = ShardWriter(out, ctx.dp_rank, dtype, mbs) if writes else None
    for j in tqdm(mine, desc="teacher cache", disable=not ctx.is_main, dynamic_ncols=True):
        ids = list(range(j * mbs, (j + 1) * mbs))
        b = data.batch(ids, ctx.device)
        vals, idx, label_logp = teacher_token_targets(model, b["input_ids"], b["labels"], train_cfg.stream,
                                                      seq_idx=b["seq_idx"])
        if writer is not None:
            writer.append(ids, to_records(dtype, b["input_ids"], vals, idx, label_logp, b["loss_mask"], job.dtype))
    if writer is not None:
        writer.close()
    dist.barrier()
    counts = [committed_records(out, w, dtype, mbs) for w in range(W)]
    complete = all(c == len(range(w, samples // mbs, W)) * mbs for w, c in enumerate(counts))
    if complete and ctx.is_main:
        shards = [{"file": shard_paths(out, w)[0].name, "records": c} for w, c in enumerate(counts)]
        write_json_atomic(out / MANIFEST, {**intent, "samples": samples, "shards": shards})
        (out / PARTIAL).unlink(missing_ok=True)
    dist.barrier()
    return {"samples": samples, "written": sum(counts), "complete": complete}


# ---------------------------------------------------------------------------------------------------- any batches
@torch.no_grad()
def write_targets(model, batches, out, *, teacher: str, tokenizer: str, data: str, stream: StreamConfig,
                  eval_batches=(), dtype: str = "float32"):
    """A one-writer cache of given batches (the library API for drivers with their own data, e.g. `rad study`).

    `batches` yields (sample ids, batch) with batch holding input_ids, labels, loss_mask [n, seq] (and seq_idx for
    packed documents); `eval_batches` are held-out batch dicts (served as held-out batch i). `data` fingerprints what
    the samples are. A complete cache at `out` made with the same teacher, tokenizer, data, top_k, temperature and
    dtype is returned as it is (nothing recomputed); an interrupted one is continued (batches whose samples are all
    stored are skipped); a cache of anything else is refused. Returns the TeacherCache; read it back by sample id
    (`targets`), held-out batch (`eval_targets`) or (step, micro) (`CachedTargets`)."""
    from rad_megatron.distill.cache_store import TeacherCache

    out, eval_batches, batches = Path(out), list(eval_batches), iter(batches)
    first = next(batches, None)
    if first is None:
        raise RadError("write_targets: no batches")
    batches, (ids0, b0) = itertools.chain([first], batches), first
    meta = {"teacher": teacher, "tokenizer": tokenizer, "data": data, "top_k": stream.top_k,
            "temperature": stream.temperature, "dtype": dtype}
    intent = {"format": FORMAT, **meta, "index_dtype": index_dtype_for(model.rad_config.vocab_size),
              "seq_len": b0["input_ids"].shape[1], "micro_batch_size": len(ids0), "writers": 1,
              "eval_batch_size": eval_batches[0]["input_ids"].shape[0] if eval_batches else 0,
              "eval_batches": len(eval_batches)}
    if (out / MANIFEST).is_file():
        cache = TeacherCache(out)
        if all(cache.manifest.get(k) == v for k, v in meta.items()):
            return cache
        raise RadError(f"{out} holds a teacher cache made for another teacher, tokenizer, data or stream settings; "
                       f"delete it or choose another folder")
    _existing(out, intent, resume=True, fix="write_targets")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / PARTIAL, intent)
    device = next(model.parameters()).device
    if eval_batches and not (out / "eval.safetensors").is_file():
        write_eval_file(out, _eval_targets(model, eval_batches, stream, device))
    dtype_np = manifest_dtype(intent)
    writer = ShardWriter(out, 0, dtype_np)
    stored = set(np.fromfile(shard_paths(out, 0)[1], dtype="<i8").tolist())
    for ids, b in batches:
        if set(int(i) for i in ids) <= stored:
            continue
        b = {k: v.to(device) for k, v in b.items()}
        vals, idx, label_logp = teacher_token_targets(model, b["input_ids"], b["labels"], stream, b.get("seq_idx"))
        writer.append(list(ids), to_records(dtype_np, b["input_ids"], vals, idx, label_logp, b["loss_mask"], dtype))
    writer.close()
    write_json_atomic(out / MANIFEST, {**intent, "samples": writer.count,
                                       "shards": [{"file": shard_paths(out, 0)[0].name, "records": writer.count}]})
    (out / PARTIAL).unlink(missing_ok=True)
    return TeacherCache(out)


# ---------------------------------------------------------------------------------------------------- the command
def cache_folder(cfg, out: str | None) -> Path:
    path = out or cfg.distill.teacher.cache
    if not path:
        raise RadError("no cache folder: give --out or distill.teacher.cache in the config")
    return Path(path)


def run_teacher_cache(cfg, job: CacheJob):
    """`rad teacher-cache`: the teacher of `cfg` (distill.teacher, or the model itself for self-distillation, as
    `rad pipeline` does) at distill.roles.teacher_tp over cfg's training data; every launched rank takes part.
    Returns (this rank's DistContext, summary)."""
    from rad_megatron.data.loader import TrainData, tokenizer_fingerprint
    from rad_megatron.distill.roles import RoleLayout
    from rad_megatron.distributed import ParallelConfig, init_distributed
    from rad_megatron.settings import build_data_config, build_train_config, from_dict
    from rad_megatron.sources import load_source, prepare_sources

    out = Path(job.out)
    if not job.resume and any((out / f).is_file() for f in (MANIFEST, PARTIAL)):  # before loading a big teacher
        raise RadError(f"--out {out} already holds a teacher cache; pass --resume to continue or extend it, or "
                       f"choose another --out")
    if job.replicas < 1:
        raise RadError(f"--replicas {job.replicas}: give the student data-parallel size (>= 1)")
    train_cfg, data_cfg = build_train_config(cfg.distill), build_data_config(cfg.data)  # checked before the model
    teacher = cfg.distill.teacher if (cfg.distill.teacher.hf or cfg.distill.teacher.ckpt) else cfg.model
    tp = from_dict(RoleLayout, cfg.distill.roles, "config.distill.roles").teacher_tp
    prepare_sources(teacher)
    ctx = init_distributed(ParallelConfig(tp=tp, seed=train_cfg.seed))
    model, tok, meta = load_source(teacher, ctx.tp, ctx.tp_rank, device=ctx.device)
    data = TrainData(data_cfg, tok, is_main=ctx.is_main)
    teacher_id = f"ckpt:{Path(teacher.ckpt).resolve()}" if teacher.ckpt else f"hf:{meta.get('source')}"
    result = write_teacher_cache(ctx, model.eval(), data, train_cfg, teacher_id, tokenizer_fingerprint(tok), job)
    return ctx, {"out": str(out), **result}
