"""One exception type for everything a user can get wrong.

The CLI turns a `RadError` into one line on stderr and exit status 2; anything else is a bug and keeps its traceback.
"""

import difflib


class RadError(Exception):
    """Bad input: a config value, a checkpoint, a path or a layout. The message names the field and the fix."""


def closest(name: str, choices) -> str:
    """' (did you mean X?)' for the closest of `choices`, or '' when nothing is close."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""
