"""rad_megatron checkpoints: a Megatron `dist_checkpointing` folder (any TP on save, any TP on load) plus
`rad_meta.json` (model config and layout, how each Mamba layer was initialised, the TP it was saved at).

Writes are atomic: everything goes to a sibling temp folder that is renamed into place once complete, so a crash
never leaves a half-written checkpoint under the final name, and an existing non-empty folder is only replaced with
force=True.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch.distributed.checkpoint.api import CheckpointException

from rad_megatron.config import ModelConfig
from rad_megatron.errors import RadError, RunStopped
from rad_megatron.faults import describe_failure, failpoint

META = "rad_meta.json"
FORMAT_VERSION = 1


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def check_writable(path: Path, force: bool) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not force:
        raise RadError(f"refusing to overwrite non-empty '{path}'; choose another --out or pass --force")


def save_model(model, path, metadata: dict | None = None, force: bool = False, extra_state: dict | None = None,
               tokenizer=None, per_rank_state: dict | None = None, per_rank_name: str | None = None):
    """Save `model` (all TP ranks call this) to `path` atomically; `metadata` is merged into rad_meta.json and the
    tokenizer (if given) is saved under `path/tokenizer`, so a checkpoint is self-contained.

    A failed write (a full or read-only disk, a lost peer) is a `RunStopped` naming the folder and the cause on every
    rank; the temporary folder is removed and whatever `path` held before is untouched."""
    from megatron.core import dist_checkpointing

    path = Path(path)
    if model is not None:
        check_writable(path, force)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        _everyone(_fresh_folder, tmp)
        # Ranks without a model (a distillation teacher) still take part: dist_checkpointing.save is collective, and
        # a failure on any rank raises on every rank.
        sharded = model.sharded_state_dict() if model is not None else {}
        if extra_state:
            sharded.update(extra_state)
        dist_checkpointing.save(sharded, str(tmp))
        failpoint(f"checkpoint-shards-written:{path.name}")  # a test hook: nothing unless RAD_FAILPOINT names it
        _everyone(_write_rank_state, tmp, per_rank_state, per_rank_name, every_rank=True)
        _everyone(_publish, model, path, tmp, metadata, tokenizer)
    except (Exception, CheckpointException) as e:  # CheckpointException is a BaseException
        raise _save_failed(path, tmp, e) from None


def _fresh_folder(tmp: Path):
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)


def _write_rank_state(tmp: Path, state, name):
    if state is not None:
        (tmp / "train_state").mkdir(exist_ok=True)
        torch.save(state, tmp / "train_state" / f"{name}.pt")


def _publish(model, path: Path, tmp: Path, metadata, tokenizer):
    meta = {"format_version": FORMAT_VERSION, "model": model.rad_config.to_dict(), "saved_tp": model.rad_tp,
            "saved_pp": getattr(model, "rad_pp", 1), **(metadata or {})}
    (tmp / META).write_text(json.dumps(meta, indent=2))
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp / "tokenizer")
    old = path.with_name(f".{path.name}.old")
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def _everyone(step, *args, every_rank: bool = False):
    """Run a local write (on rank 0 only unless `every_rank`), then let every rank learn whether it failed anywhere:
    a rank that stopped alone would leave the others waiting in the next collective."""
    error = None
    if every_rank or _rank() == 0:
        try:
            step(*args)
        except OSError as e:
            error = e
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        errors = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(errors, error)
        error = next((e for e in errors if e is not None), None)
    if error is not None:
        raise error


def _save_failed(path: Path, tmp: Path, err: BaseException) -> RunStopped:
    """The one line for a failed save, after naming the cause (looked up before the partial folder is removed, which
    frees the space) and removing the partial folder."""
    cause = describe_failure(err, tmp.parent)
    removed = ""
    if _rank() == 0:  # the rank that made the temporary folder removes it
        shutil.rmtree(tmp, ignore_errors=True)
        removed = "the partial folder was removed and "
    kept = f"'{path}' is untouched" if path.exists() else "earlier checkpoints are untouched"
    return RunStopped(f"cannot write checkpoint '{path}' in folder '{tmp.parent}': {cause}; {removed}{kept}")


def read_meta(path) -> dict:
    path = Path(path)
    f = path / META
    if not f.is_file():
        raise RadError(f"'{path}' is not a rad_megatron checkpoint (no {META}); convert HF weights with rad convert")
    try:
        meta = json.loads(f.read_text())
    except (ValueError, UnicodeDecodeError) as e:  # truncated or not JSON
        raise RadError(f"checkpoint file '{f}' is corrupt (not JSON: {e}); copy the checkpoint again or re-create "
                       f"it with rad convert") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
        raise RadError(f"checkpoint file '{f}' is not a rad_megatron {META} (no 'model' mapping); re-create the "
                       f"checkpoint with rad convert")
    return meta


def model_config(path) -> ModelConfig:
    return ModelConfig.from_dict(read_meta(path)["model"])


def check_complete(path) -> None:
    """Refuse a checkpoint folder that lacks a file its `dist_checkpointing` index (.metadata) lists, naming it,
    before any rank starts a collective load that would fail on one rank with a storage-layer traceback."""
    from torch.distributed.checkpoint import FileSystemReader

    path = Path(path)
    for name in ("metadata.json", ".metadata"):
        if not (path / name).is_file():
            raise RadError(f"checkpoint '{path}' is incomplete: '{name}' is missing; copy the whole folder again "
                           f"or re-create it with rad convert")
    try:
        storage = FileSystemReader(str(path)).read_metadata().storage_data
    except Exception as e:  # noqa: BLE001 - a truncated or foreign .metadata fails in pickle or in torch
        raise RadError(f"checkpoint '{path}' has an unreadable .metadata ({type(e).__name__}); copy the whole "
                       f"folder again or re-create it with rad convert") from None
    needed: dict[str, int] = {}  # bytes each shard file must hold: the end of the last item the index places in it
    for info in storage.values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    files = sorted(needed)
    missing = [f for f in files if not (path / f).is_file()]
    if missing:
        raise RadError(f"checkpoint '{path}' is incomplete: shard file '{missing[0]}' is missing ({len(missing)} of "
                       f"{len(files)} shard files); copy the whole folder again or re-create it with rad convert")
    for f in files:
        size = (path / f).stat().st_size
        if size < needed[f]:
            raise RadError(f"checkpoint shard '{path / f}' is truncated ({size} bytes, its index needs {needed[f]}); "
                           f"copy the whole folder again or re-create it with rad convert")


def load_model(path, tp: int = 1, dtype=torch.float32, process_group=None, pp: int = 1, pg_collection=None,
               **build):
    """Build the model recorded in `path` at TP size `tp` (and PP size `pp`: this rank's stage) and load its weights
    (resharding if saved at another TP/PP). `process_group` holds every rank that loads (a subset of the world, e.g.
    the teachers); `pg_collection` gives the model groups other than Megatron's global parallel state; `build` holds
    build_model's other runtime options (recompute, sequence_parallel)."""
    from megatron.core import dist_checkpointing

    from rad_megatron.model import build_model

    cfg = model_config(path)
    check_complete(path)
    model = build_model(cfg, tp=tp, dtype=dtype, pp=pp, pg_collection=pg_collection, **build)
    try:
        # a model on groups outside the global parallel state names its data-parallel group itself
        metadata = {"dp_cp_group": pg_collection.dp_cp} if pg_collection is not None else None
        sharded = model.sharded_state_dict(metadata=metadata)
        state = dist_checkpointing.load(sharded, str(path), process_group=process_group)
    except (Exception, CheckpointException) as e:  # noqa: BLE001 - several types, CheckpointException a BaseException
        raise RadError(f"cannot load checkpoint '{path}': {describe_failure(e)}") from None
    # a training checkpoint also holds optimizer and training state (distill.train_state); the model takes its own
    model.load_state_dict({k: v for k, v in state.items() if k in sharded}, strict=True)
    model.rad_meta = read_meta(path)
    return model


def load_tokenizer(path):
    from transformers import AutoTokenizer

    folder = Path(path) / "tokenizer"
    if not folder.is_dir():
        raise RadError(f"checkpoint '{path}' has no tokenizer/ folder; re-create it with rad convert")
    return AutoTokenizer.from_pretrained(folder)
