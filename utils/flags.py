"""Command-line flags declared once, on the fields of a dataclass.

A field made with :func:`flag` carries its flag names, help text and argparse options in its metadata;
:func:`add_flags` derives the parser from the dataclass and :func:`given_values` reads back only the
flags the user actually gave (every flag defaults to ``argparse.SUPPRESS``), so the dataclass default
is the one and only default and callers can tell "not given" from "given the default value".
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

_MISSING = dataclasses.MISSING


def flag(
    *names: str,
    default: Any = _MISSING,
    help: str = "",  # noqa: A002 - argparse's own keyword
    type: Callable[[str], Any] | None = None,  # noqa: A002
    choices: Iterable[Any] | None = None,
    action: str | None = None,
    metavar: str | None = None,
    group: str | None = None,
    default_text: str | None = None,
) -> Any:
    """A dataclass field that is also a command-line flag.

    ``names`` are the option strings (``"--lr"``, or both ``"--max_slides", "--max-slides"``).
    ``type`` defaults to the type of ``default`` (bool defaults become ``store_true`` flags unless
    ``action`` says otherwise). ``default_text`` replaces the shown default in ``--help``.
    """
    if not names:
        raise ValueError("a flag needs at least one option string")
    metadata = {
        "flags": tuple(names),
        "help": help,
        "type": type,
        "choices": tuple(choices) if choices is not None else None,
        "action": action,
        "metavar": metavar,
        "group": group,
        "default_text": default_text,
    }
    return dataclasses.field(default=default, metadata=metadata)


def flag_fields(cls) -> list[dataclasses.Field]:
    """The fields of dataclass ``cls`` declared with :func:`flag`, in declaration order."""
    return [f for f in dataclasses.fields(cls) if "flags" in f.metadata]


def add_flags(parser: argparse.ArgumentParser, cls, groups: dict[str, str] | None = None) -> None:
    """Add one argument per :func:`flag` field of ``cls`` to ``parser``.

    ``groups`` maps a field's ``group`` key to the title of an argument group (created on first use).
    """
    made: dict[str, argparse._ArgumentGroup] = {}
    for f in flag_fields(cls):
        meta = f.metadata
        target = parser
        if meta["group"] is not None:
            title = (groups or {}).get(meta["group"], meta["group"])
            target = made.setdefault(meta["group"], parser.add_argument_group(title))
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        action = meta["action"]
        if action is None and isinstance(f.default, bool):
            action = "store_false" if f.default else "store_true"
        if action is not None:
            kwargs["action"] = action
        else:
            value_type = meta["type"]
            if value_type is None and f.default is not _MISSING and f.default is not None:
                value_type = type(f.default)
            if value_type is not None:
                kwargs["type"] = value_type
            if meta["choices"] is not None:
                kwargs["choices"] = meta["choices"]
            if meta["metavar"] is not None:
                kwargs["metavar"] = meta["metavar"]
        kwargs["help"] = _help_text(f)
        target.add_argument(*meta["flags"], **kwargs)


def _help_text(f: dataclasses.Field) -> str:
    meta = f.metadata
    shown = meta["default_text"]
    if shown is None and f.default is not _MISSING and not isinstance(f.default, bool):
        shown = "none" if f.default is None else str(f.default)
    text = meta["help"]
    return f"{text} (default: {shown})" if shown else text


def given_values(namespace: argparse.Namespace) -> dict[str, Any]:
    """The values of the flags present on the command line (absent flags are not in the namespace)."""
    return dict(vars(namespace))
