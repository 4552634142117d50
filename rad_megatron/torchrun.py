"""torchrun with rad's exit statuses: `python -m rad_megatron.torchrun [torchrun options] -m rad_megatron COMMAND ...`
(launch/run.sh's default launcher).

torchrun itself exits 1 with a ChildFailedError traceback whenever a rank fails. Here the job exits with the failing
rank's own status instead, 2 for bad input or 3 for a run stopped by a fault, after that rank's one `rad ...: error:`
line and nothing else (torchrun's agent logs are kept for the other failures, which also get one summary line naming
the rank, its exit status or signal, and where its log is). Everything else is torchrun unchanged.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

RAD_STATUSES = (2, 3)  # rad_megatron.errors: RadError, RunStopped


def _quiet_agent() -> None:
    """The agent logs each worker's failure and the SIGTERMs it sends the others; the failing rank has said why."""
    # torch's elastic loggers each set their own level when created (at import), so each is set here
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("torch.distributed.elastic", "torch.distributed.run", "torch.distributed.launcher")):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def _status(failure) -> tuple[int, str]:
    code = failure.exitcode
    if code < 0:
        try:
            return 128 - code, f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return 1, f"killed by signal {-code}"
    return code, f"exit status {code}"


def main(argv=None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    if not os.environ.get("LOGLEVEL"):  # LOGLEVEL set by the user shows the agent's logs as plain torchrun does
        _quiet_agent()
    try:
        run(parse_args(sys.argv[1:] if argv is None else argv))
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        status, what = _status(failure)
        if status not in RAD_STATUSES:
            log = f"; its error file: {failure.error_file}" if failure.error_file not in (None, "<N/A>") else ""
            sys.stderr.write(f"torchrun: rank {rank} failed first ({what}){log}\n")
        return status if 0 < status < 256 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
