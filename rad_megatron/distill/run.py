"""One distillation run as a library call, for student and teacher ranks alike."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

from rad_megatron.data.loader import TrainData, tokenizer_fingerprint
from rad_megatron.errors import RadError


def check_same_tokenizer(tok) -> None:
    """Teacher and student must tokenize identically (the stream indexes the vocabulary)."""
    mine = tokenizer_fingerprint(tok)
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    if len(set(everyone)) > 1:
        raise RadError("teacher and student tokenizers differ; distillation needs the same tokenizer on both sides "
                       "(choose a teacher from the same model family)")


def open_teacher_cache(path, tok, train: TrainData, train_cfg):
    """The offline teacher cache a run trains from, refused (one line) unless it was made for this run's tokenizer,
    data, top_k and temperature."""
    from rad_megatron.distill.cache_store import TeacherCache

    cache = TeacherCache(path, fix=CACHE_FIX)
    cache.check_matches(tokenizer=tokenizer_fingerprint(tok), data=train.fingerprint, top_k=train_cfg.stream.top_k,
                        temperature=train_cfg.stream.temperature)
    return cache


CACHE_FIX = "rad teacher-cache --config CONFIG"


def refuse_foreign_cache(cfg, train_cfg, data_cfg) -> None:
    """At the door of `rad distill` / `rad pipeline`, before a model loads or a file is written: the cache
    distill.teacher.cache must be whole (manifest, shards) and made for this run's top_k and temperature, and, where
    the model's tokenizer can be read without loading the model, for its tokenizer and data (a hub or GGUF model has
    those checked by run_distill once loaded)."""
    from rad_megatron.distill.cache_store import TeacherCache
    from rad_megatron.distributed.init import _launcher_env
    from rad_megatron.sources import local_tokenizer

    cache = TeacherCache(cfg.distill.teacher.cache, fix=CACHE_FIX)
    cache.check_matches(top_k=train_cfg.stream.top_k, temperature=train_cfg.stream.temperature)
    tok = local_tokenizer(cfg.model)
    if tok is not None:
        cache.check_matches(tokenizer=tokenizer_fingerprint(tok))
        train = TrainData(data_cfg, tok, is_main=_launcher_env(os.environ)[0] == 0)
        cache.check_matches(data=train.fingerprint)


def run_distill(role, model, tok, data_cfg, train_cfg, out: Path, new_layers: list[int], resume: bool = False,
                stop_after: int | None = None, meta: dict | None = None,
                teacher_cache: str | None = None, system=None) -> list[dict]:
    """Students train `model`; teachers serve with `model` (their teacher). With `teacher_cache` (a folder written by
    `rad teacher-cache`) every rank is a student and the targets are read from it. Returns the student's records.
    `system` (distill.system.TrainerSystem) says how the models were built and how the student trains; None: fp32,
    no recompute, no sequence or pipeline parallelism."""
    from rad_megatron.distill.system import eval_width_multiple
    from rad_megatron.distill.teacher import run_teacher
    from rad_megatron.distill.trainer import StudentTrainer, check_resume_config, latest_checkpoint

    out = Path(out)
    vocab = model.rad_config.vocab_size
    if train_cfg.stream.top_k > vocab:
        raise RadError(f"distill.train.stream.top_k={train_cfg.stream.top_k} exceeds the vocabulary ({vocab}); "
                       f"use top_k <= {vocab}, or 0 to send the whole vocabulary")
    check_same_tokenizer(tok)
    from rad_megatron.distill.peers import make_meeting_group, peer_losses_named

    make_meeting_group(train_cfg.stream.timeout_s)  # collective: every rank, now that both sides have loaded
    # the one place a distillation's model goes to the rank's device (the GPU where there is one); the data stays on
    # the host and each micro-batch moves when it is used (schedule.take)
    model = model.to(role.device)
    train = TrainData(data_cfg, tok, is_main=dist.get_rank() == 0)
    held = train.held  # on the host, like the training data: each evaluation batch moves when it is used
    if held is not None and system is not None:
        held = pad_width(held, eval_width_multiple(system))
    cache = open_teacher_cache(teacher_cache, tok, train, train_cfg) if teacher_cache else None
    start = 0
    ckpt = latest_checkpoint(out) if resume else None
    if resume and ckpt is None:
        raise RadError(f"--resume: no checkpoint under {out}/checkpoints (nothing to resume)")
    if ckpt is not None:
        check_resume_config(ckpt, train_cfg, role.student_dp)
    if role.is_student:
        if ckpt is not None:
            from rad_megatron.checkpoint.store import load_model

            build = system.student.options() if system is not None else {}
            model = load_model(ckpt, tp=role.tp, process_group=role.student_group, **build).to(role.device)
        trainer = StudentTrainer(role, model, train_cfg, train, held, new_layers, out, tokenizer=tok, meta=meta,
                                 teacher_cache=cache, mixed_precision=system is not None and system.mixed_precision)
        if ckpt is not None:
            start = trainer.load_state(ckpt)
            _truncate_metrics(out / "metrics.jsonl", start, role.is_main)
        with peer_losses_named(role, lambda: trainer.step):
            records = trainer.run(start, stop_after)
        if role.is_main:
            plot_metrics(out / "metrics.jsonl", out / "loss.png")
        return records
    if ckpt is not None:
        from rad_megatron.checkpoint.store import read_meta

        start = read_meta(ckpt)["train"]["step"]
    model.requires_grad_(False)  # the teacher only serves: no optimizer, no gradients
    with peer_losses_named(role, lambda: None):
        run_teacher(role, model, train_cfg, train, held, out, start, stop_after)
    return []


def pad_width(held: dict, multiple: int) -> dict:
    """Held-out batches widened (masked, pad id 0) to a multiple of `multiple` positions: sequence parallelism
    splits every sequence over the TP ranks. Causal, so the unpadded positions see the same tokens."""
    width = held["input_ids"].shape[1]
    extra = -width % multiple
    if not extra:
        return held
    return {k: torch.nn.functional.pad(v, (0, extra)) for k, v in held.items()}


def _truncate_metrics(path: Path, step: int, is_main: bool):
    """A resumed run rewrites what came after its checkpoint."""
    if not path.is_file() or not is_main:
        return
    keep = [ln for ln in path.read_text().splitlines() if json.loads(ln)["step"] <= step]
    path.write_text("".join(ln + "\n" for ln in keep))


def plot_metrics(metrics: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(ln) for ln in metrics.read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    ev = [r for r in rows if "heldout_kl" in r]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    a.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    a.set_xlabel("step")
    a.set_ylabel("loss")
    a.set_title("training loss")
    b.plot([r["step"] for r in ev], [r["heldout_kl"] for r in ev], "o-", label="held-out KL to teacher")
    b.set_xlabel("step")
    b.set_ylabel("KL")
    b.set_title("held-out KL(teacher || student)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)

