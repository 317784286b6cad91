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
