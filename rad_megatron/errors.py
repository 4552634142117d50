"""The exceptions a user sees as one line.

The CLI turns a `RadError` (bad input: nothing was written) into one line on stderr and exit status 2, and a
`RunStopped` (a run met a fault it cannot fix itself: a non-finite loss, a full or read-only disk, a lost peer; its
last checkpoint is kept) into one line and exit status 3. Anything else is a bug and keeps its traceback.
"""

import difflib


class RadError(Exception):
    """Bad input: a config value, a checkpoint, a path or a layout. The message names the field and the fix."""

    exit_status = 2


class RunStopped(RadError):
    """A run stopped on a fault (non-finite loss, disk full or read-only, a peer rank lost); the message names the
    step, the file or the rank, and the last checkpoint is intact (--resume continues from it)."""

    exit_status = 3


def closest(name: str, choices) -> str:
    """' (did you mean X?)' for the closest of `choices`, or '' when nothing is close."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""
