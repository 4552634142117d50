"""A run folder is never reused silently: a new run needs a new (or empty) folder, `--resume` continues the run in it,
and `--force` moves the old run aside (OUT -> OUT.old-YYYYmmdd-HHMMSS) instead of mixing two runs' files. Nothing a
user made is deleted."""

from __future__ import annotations

import os
import time
from pathlib import Path

from rad_megatron.errors import RadError


def holds_files(out: Path) -> bool:
    return out.exists() and (not out.is_dir() or any(out.iterdir()))


def check_run_folder(out, resume: bool, force: bool) -> None:
    """Refuse what would mix runs; called on every rank before anything is written."""
    out = Path(out)
    if resume and force:
        raise RadError("--resume continues the run in the output folder and --force moves it aside; give one of them")
    if resume:
        if not (out / "checkpoints" / "latest.txt").is_file():
            also = " with --force (it holds files, which move aside)" if holds_files(out) else ""
            raise RadError(f"--resume: '{out}' holds no checkpoint (no checkpoints/latest.txt); start a new run "
                           f"there without --resume{also}")
        return
    if holds_files(out) and not force:
        raise RadError(f"run folder '{out}' already holds files; pass --resume to continue its run, --force to move "
                       f"it aside (to {out.name}.old-<time>), or choose another --out")


def move_aside(out, env=None) -> Path | None:
    """With --force: rank 0 renames an existing non-empty `out` to a free `out.old-<time>` and returns it (the other
    ranks wait for rank 0 at their first collective, before any of them writes)."""
    from rad_megatron.distributed.init import _launcher_env

    out = Path(out)
    if _launcher_env(os.environ if env is None else env)[0] != 0 or not holds_files(out):
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = out.with_name(f"{out.name}.old-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = out.with_name(f"{out.name}.old-{stamp}-{n}")
    out.rename(aside)
    print(f"moved the earlier run in {out} aside to {aside}", flush=True)
    return aside
