"""Naming what stopped a run, in words a user can act on: a full or read-only disk, a lost peer rank.

The causes hide in different places: an `OSError`'s errno, the text of a torch.distributed error (gloo: "Connection
closed by peer"; a deadline: "Timed out"), the per-rank failures a torch `CheckpointException` carries, and sometimes
only the filesystem itself (torch's zip writer reports a full disk as "unexpected pos", so the folder's free space and
read-only flag are read after the failure).
"""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

DISK_ERRNOS = {
    errno.ENOSPC: "no space left on device (ENOSPC)",
    errno.EDQUOT: "disk quota exceeded (EDQUOT)",
    errno.EROFS: "read-only file system (EROFS)",
    errno.EACCES: "permission denied (EACCES)",
    errno.EPERM: "operation not permitted (EPERM)",
}
# a write that failed on a full disk has used up what was left; below this the disk counts as full
FULL_BELOW_BYTES = 1 << 20
PEER_CLOSED = ("connection closed by peer", "connection reset by peer", "broken pipe", "remote process exited",
               "communicator was aborted", "connection refused")
TIMED_OUT = ("timed out", "timeout", "deadline")


def chain(err: BaseException):
    """`err`, the exceptions it was raised from, and those a CheckpointException collected from each rank."""
    seen, todo = set(), [err]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__]
        for failure in (getattr(e, "failures", None) or {}).values():
            todo.append(failure[0] if isinstance(failure, tuple) else failure)


def disk_cause(err: BaseException | None, folder) -> str | None:
    """ENOSPC / EROFS / ... from the error's errno, else from the state of the filesystem holding `folder`."""
    for e in chain(err) if err is not None else ():
        if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
            return DISK_ERRNOS[e.errno]
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        return DISK_ERRNOS[errno.EROFS]
    free = st.f_bavail * st.f_frsize
    if free < FULL_BELOW_BYTES:
        return f"{DISK_ERRNOS[errno.ENOSPC]}, {free} bytes free"
    return None


def peer_cause(err: BaseException) -> str | None:
    """'connection closed' / 'timed out' when a torch.distributed error says a peer is gone or silent."""
    text = " ".join(str(e) for e in chain(err)).lower()
    if any(k in text for k in PEER_CLOSED):
        return "connection closed: the process is gone"
    if any(k in text for k in TIMED_OUT):
        return "timed out"
    return None


def first_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return f"{type(err).__name__}: {lines[0][:300]}" if lines else type(err).__name__


def describe_failure(err: BaseException, folder=None) -> str:
    """The cause of a failure, for a one-line message; with `folder` (a failed write there) a full or read-only disk
    is looked for first."""
    disk = disk_cause(err, folder) if folder is not None else None
    if disk:
        return disk
    peer = peer_cause(err)
    if peer:
        return f"a peer rank stopped ({peer})"
    for e in chain(err):  # a CheckpointException's own text is a multi-line traceback: name the rank's error
        failures = getattr(e, "failures", None)
        if failures == {}:  # raised on a rank whose own part was fine (e.g. a teacher in a sharded training save)
            return "a peer rank stopped (its part of the checkpoint write failed)"
        if not failures:
            return first_line(e)
    return first_line(err)


def failpoint(name: str) -> None:
    """Test hook: stop this process (SIGSTOP) at the point `name` when the environment variable RAD_FAILPOINT names
    it, so that a test can kill it exactly there (e.g. in the middle of a checkpoint write). Nothing otherwise."""
    if os.environ.get("RAD_FAILPOINT") == name:
        os.kill(os.getpid(), signal.SIGSTOP)
