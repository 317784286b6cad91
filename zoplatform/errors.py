"""User-facing errors.

Anything raised as :class:`ZOError` is a problem with the user's input (bad
value, missing file, unknown name).  The CLI prints ``error: <message>`` as a
single line and exits non-zero, with no traceback, so every message must name
the bad value and say what is allowed.
"""


class ZOError(ValueError):
    """Bad user input: the message is shown as one line, without a traceback."""


class DataError(ZOError):
    """A data file is missing or malformed (the message names file and field)."""


class ConfigError(ZOError):
    """A config value or combination is invalid."""


class Diverged(ZOError):
    """Training produced a non-finite loss or gradient estimate: the run stops (FAILED, exit 1)
    and keeps its last finite checkpoint.  ``step`` is the step (1-based) that diverged."""

    exit_code = 1

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step
