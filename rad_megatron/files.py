"""Reading the files a user hands over (JSON reports and configs, torch states): a missing, truncated or foreign file
is one line naming it and what is wrong, not a traceback from the parser."""

from __future__ import annotations

import json
import os
from pathlib import Path

from rad_megatron.errors import RadError


def read_json(path, what: str, fix: str = "give the file again or re-create it"):
    """The JSON value in `path`; `what` names the file's role in messages (e.g. '--probe')."""
    path = Path(path)
    if not path.is_file():
        raise RadError(f"{what} '{path}' does not exist; {fix}")
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise RadError(f"{what} '{path}' is not valid JSON ({e}); {fix}") from None


def torch_load(path, what: str, fix: str = "give the file again or re-create it"):
    """A torch.save'd object (any device's, loaded onto the host)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise RadError(f"{what} '{path}' does not exist; {fix}")
    try:
        return torch.load(path, weights_only=False, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - a truncated zip or pickle fails in several ways; name the file in one line
        text = str(e).strip().splitlines()
        raise RadError(f"{what} '{path}' is corrupt ({type(e).__name__}{': ' + text[0][:120] if text else ''}); "
                       f"{fix}") from None


def write_text_atomic(path, text: str) -> None:
    """Replace `path` with `text` in one step; the temporary name is per process, so two processes writing the same
    file (e.g. `rad study --max-runs 0` beside a trainer) never share it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
