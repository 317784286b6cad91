"""How a ``zo`` command fails: a user error (:class:`ZOError`) is one ``error: ...`` line on stderr and exit 2
(1 when a run failed, e.g. diverged), never a traceback; Ctrl-C is one line and exit 130."""
from __future__ import annotations

import functools
import sys

import click

from zoplatform.errors import ZOError

EXIT_USAGE = 2


def one_line_errors(interrupted: str = "interrupted"):
    """Decorator for a command: ZOError -> one line, exit 2 (or the error's exit_code); Ctrl-C -> ``interrupted``, 130."""

    def wrap(fn):
        @functools.wraps(fn)
        def wrapper(*a, **kw):
            try:
                return fn(*a, **kw)
            except ZOError as e:
                click.echo(f"error: {e}", err=True)
                sys.exit(getattr(e, "exit_code", EXIT_USAGE))
            except KeyboardInterrupt:
                click.echo(interrupted, err=True)
                sys.exit(130)

        return wrapper

    return wrap
