"""Click options derived from a pydantic config's fields, so a command's flags cannot drift from its config.

:func:`config_options` makes one option per field of a config model:

* ``int`` / ``float`` / ``str`` -> that click type; ``X | None`` -> X;
* ``Literal[...]`` -> a choice; a value outside it is one line naming the allowed values (exit 2);
* ``bool`` -> a flag pair ``--name/--no-name``;
* ``list[str]`` -> one comma-separated value (``--tasks sst2,copa``);
* anything else (``dict``, ``list[int]``, ...) has no automatic form: the command must exclude the field
  (with its reason) or give its option itself (``custom``), else building the command raises ``TypeError``.

Every option's default is ``None``, so "not given" stays distinguishable from the config's default (a config file
or a preset below the command line keeps its value); the help is the field's description (or the command's
``help`` override), with the config's default shown.  The option's parameter name is the field's name, so
``**opts`` of the command is a dict of config keys.

This module is a leaf of :mod:`pipelines.cli` (it imports nothing of the package).
"""
from __future__ import annotations

import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import click
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from pipelines.console import EXIT_USAGE


class BadValue(click.BadParameter):
    """A bad option value whose message is already the whole line (it names the flag itself)."""

    def format_message(self) -> str:
        return self.message


class OneLineUsageErrors(click.Command):
    """A bad option value (a choice, a number, an unknown option) is one ``error: ...`` line and exit 2, like a
    ConfigError, instead of click's usage block."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:
            click.echo(f"error: {e.format_message()}", err=True)
            ctx.exit(EXIT_USAGE)


class LiteralChoice(click.Choice):
    """``Literal[...]`` as a click choice: a value outside it is ``field='x' is invalid (--flag): allowed: ...``
    (the field=value form of the config's own errors)."""

    def __init__(self, field: str, choices: Iterable[str]):
        super().__init__(list(choices))
        self.field = field

    def convert(self, value, param, ctx):
        if value in self.choices:
            return value
        flag = param.opts[0] if param is not None else self.field
        allowed = ", ".join(repr(c) for c in self.choices)
        raise BadValue(f"{self.field}={value!r} is invalid ({flag}): allowed: {allowed}", ctx=ctx, param=param)


class CommaList(click.ParamType):
    """``list[str]`` as one comma-separated value: ``"sst2, copa,"`` -> ``["sst2", "copa"]``."""

    name = "a,b,..."

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        return [s.strip() for s in str(value).split(",") if s.strip()]


SCALARS: dict[Any, click.ParamType] = {int: click.INT, float: click.FLOAT, str: click.STRING}


def _strip_optional(annotation):
    """``X | None`` -> X (the CLI's "not given" is None anyway)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _default_text(field) -> str | None:
    if field.default is PydanticUndefined or field.default is None or field.default_factory is not None:
        return None
    return str(field.default)


def _with_default(text: str, default: str | None) -> str:
    """The help with the config's default, which click cannot show itself (every option's click default is
    None)."""
    return f"{text}  [default: {default}]".strip() if default is not None else text


def field_option(model: type[BaseModel], name: str, *, flag: str | None = None,
                 help: str | None = None) -> Callable:
    """The click option of one field (see the module docstring); ``TypeError`` for a type with no CLI form."""
    field = model.model_fields[name]
    kind = _strip_optional(field.annotation)
    flag = flag or "--" + name.replace("_", "-")
    text = help if help is not None else (field.description or "")
    shown = None if "default" in text.lower() else _default_text(field)
    if kind is bool:
        off = "--no-" + flag[2:]
        shown = shown and (flag if field.default else off)[2:]
        return click.option(f"{flag}/{off}", name, default=None, help=_with_default(text, shown))
    if typing.get_origin(kind) is Literal:
        ptype: click.ParamType = LiteralChoice(name, [str(c) for c in typing.get_args(kind)])
    elif typing.get_origin(kind) is list and typing.get_args(kind) == (str,):
        ptype = CommaList()
        if field.default_factory is not None and "default" not in text.lower():
            shown = ",".join(field.default_factory())
    elif kind in SCALARS:
        ptype = SCALARS[kind]
    else:
        raise TypeError(f"{model.__name__}.{name}: {field.annotation} has no automatic CLI option; exclude it "
                        f"(with the reason) or give its option explicitly")
    return click.option(flag, name, type=ptype, default=None, help=_with_default(text, shown))


def config_options(model: type[BaseModel], *, only: Iterable[str] | None = None,
                   exclude: Mapping[str, str] | None = None, flags: Mapping[str, str] | None = None,
                   help: Mapping[str, str] | None = None, custom: Mapping[str, Callable] | None = None) -> Callable:
    """A decorator adding one option per field of ``model`` (or of ``only``), in the fields' order.

    ``exclude``: field -> why it is not a CLI option (set through another option, a file, or by a program);
    ``flags``: field -> its flag when not ``--field-name``; ``help``: field -> the help text when not the
    field's description; ``custom``: field -> a click option the command gives itself (a non-default form).
    Every field must get an option, a custom option or an exclusion: a field added to the config without any
    of them fails here, when the command is built, not silently at the user."""
    names = list(model.model_fields) if only is None else list(only)
    exclude, flags, help, custom = dict(exclude or {}), dict(flags or {}), dict(help or {}), dict(custom or {})
    stale = (set(exclude) | set(flags) | set(help) | set(custom)) - set(names)
    unknown = set(names) - set(model.model_fields)
    if stale or unknown:
        raise TypeError(f"{model.__name__}: CLI settings for fields it does not have: {sorted(stale | unknown)}")
    opts = [custom[n] if n in custom else field_option(model, n, flag=flags.get(n), help=help.get(n))
            for n in names if n not in exclude]

    def decorate(f):
        for o in reversed(opts):
            f = o(f)
        return f

    return decorate


def given(opts: Mapping[str, Any]) -> dict[str, Any]:
    """The options the user gave (click's None = not given)."""
    return {k: v for k, v in opts.items() if v is not None}
