"""Command-line flags declared once, on the fields of a dataclass.

A field made with :func:`flag` carries its flag names, help text and argparse options in its metadata;
:func:`add_flags` derives the parser from the dataclass and :func:`given_values` reads back only the
flags the user actually gave (every flag defaults to ``argparse.SUPPRESS``), so the dataclass default
is the one and only default and callers can tell "not given" from "given the default value".

Option dataclasses nest: a field whose default is (a factory of) a dataclass with flag fields
contributes that dataclass's flags (``RunConfig.hivemil: HiveMILOptions``). Every flag has one flat
*key* -- its argparse ``dest``, the field name unless ``flag(dest=...)`` says otherwise -- unique over
the whole tree; :func:`flag_values` / :func:`with_flag_values` convert between a nested object and its
flat ``{key: value}`` form (the form of ``config.json`` and of ``given_values``).
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
    dest: str | None = None,
    resumable: bool = False,
) -> Any:
    """A dataclass field that is also a command-line flag.

    ``names`` are the option strings (``"--lr"``, or both ``"--max_slides", "--max-slides"``).
    ``type`` defaults to the type of ``default`` (bool defaults become ``store_true`` flags unless
    ``action`` says otherwise). ``default_text`` replaces the shown default in ``--help``.
    ``dest``: the flag's key (argparse dest, config key) when it differs from the field name.
    ``resumable``: the value does not change a run's results (a run may resume with another value).
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
        "dest": dest,
        "resumable": resumable,
    }
    return dataclasses.field(default=default, metadata=metadata)


def both_spellings(name: str) -> tuple[str, ...]:
    """A project-added flag with underscores and with hyphens: ``"max_slides"`` -> both forms."""
    under, hyphen = "--" + name.replace("-", "_"), "--" + name.replace("_", "-")
    return (under,) if under == hyphen else (under, hyphen)


def flag_key(f: dataclasses.Field) -> str:
    """The flat key of a :func:`flag` field: its ``dest`` or its name."""
    return f.metadata["dest"] or f.name


def nested_type(f: dataclasses.Field) -> type | None:
    """The option dataclass a field nests (a dataclass default or factory with flags), else None."""
    if "flags" in f.metadata:
        return None
    if f.default_factory is not _MISSING and isinstance(f.default_factory, type):
        candidate = f.default_factory
    elif f.default is not _MISSING and dataclasses.is_dataclass(f.default):
        candidate = type(f.default)
    else:
        return None
    return candidate if dataclasses.is_dataclass(candidate) and all_flag_fields(candidate) else None


def all_flag_fields(cls) -> list[dataclasses.Field]:
    """Every :func:`flag` field of ``cls`` and of the option dataclasses it nests, in declaration order."""
    out: list[dataclasses.Field] = []
    for f in dataclasses.fields(cls):
        if "flags" in f.metadata:
            out.append(f)
        elif (inner := nested_type(f)) is not None:
            out.extend(all_flag_fields(inner))
    return out


def flag_keys(cls) -> list[str]:
    """The flat keys of every flag of ``cls`` (nested included); a key used twice is an error."""
    keys = [flag_key(f) for f in all_flag_fields(cls)]
    doubled = sorted({k for k in keys if keys.count(k) > 1})
    if doubled:
        raise ValueError(f"{cls.__name__}: flag keys declared twice: {doubled}")
    return keys


def resumable_keys(cls) -> frozenset[str]:
    """The keys of the flags declared ``resumable=True`` (nested included)."""
    return frozenset(flag_key(f) for f in all_flag_fields(cls) if f.metadata["resumable"])


def flag_values(obj) -> dict[str, Any]:
    """``{key: value}`` of every flag of dataclass instance ``obj``, nested option objects flattened."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        if "flags" in f.metadata:
            out[flag_key(f)] = getattr(obj, f.name)
        elif nested_type(f) is not None:
            out.update(flag_values(getattr(obj, f.name)))
    return out


def with_flag_values(obj, values: dict[str, Any]):
    """A copy of dataclass instance ``obj`` with the flags named by flat key in ``values`` set.

    Nested option objects are replaced field by field (their non-flag fields are kept); a key that is
    no flag of ``obj`` raises ``TypeError``.
    """
    unknown = set(values) - set(flag_keys(type(obj)))
    if unknown:
        raise TypeError(f"{type(obj).__name__} has no flags {sorted(unknown)}")
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        inner = nested_type(f)
        if "flags" in f.metadata:
            if flag_key(f) in values:
                changes[f.name] = values[flag_key(f)]
        elif inner is not None:
            mine = {k: v for k, v in values.items() if k in set(flag_keys(inner))}
            if mine:
                changes[f.name] = with_flag_values(getattr(obj, f.name), mine)
    return dataclasses.replace(obj, **changes)


def add_flags(
    parser: argparse.ArgumentParser,
    cls,
    groups: dict[str, str] | None = None,
    aliases: dict[str, tuple[str, ...]] | None = None,
) -> None:
    """Add one argument per :func:`flag` field of ``cls`` to ``parser``.

    ``groups`` maps a field's ``group`` key to the title of an argument group (created on first use).
    ``aliases`` maps a flag key to older option strings a CLI still accepts for it (README lists them).
    The flags of nested option dataclasses are added where the nesting field is declared; each
    argument's ``dest`` is the flag's key.
    """
    flag_keys(cls)  # refuses a key declared twice
    made: dict[str, argparse._ArgumentGroup] = {}
    for f in all_flag_fields(cls):
        meta = f.metadata
        target = parser
        if meta["group"] is not None:
            title = (groups or {}).get(meta["group"], meta["group"])
            target = made.setdefault(meta["group"], parser.add_argument_group(title))
        kwargs: dict[str, Any] = {"dest": flag_key(f), "default": argparse.SUPPRESS}
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
        target.add_argument(*meta["flags"], *(aliases or {}).get(flag_key(f), ()), **kwargs)


def _help_text(f: dataclasses.Field) -> str:
    meta = f.metadata
    shown = meta["default_text"]
    if shown is None and f.default is not _MISSING and not isinstance(f.default, bool):
        shown = "none" if f.default is None else str(f.default)
    text = meta["help"]
    return f"{text} (default: {shown})" if shown else text


def flag_from(cls, name: str, **changes: Any) -> Any:
    """A field declared like ``cls``'s flag field ``name`` (same option strings, default and help), for a
    dataclass that keeps the setting as its own field; ``changes`` replace metadata (``group``,
    ``resumable``), never the spelling or the default."""
    source = next(f for f in dataclasses.fields(cls) if f.name == name and "flags" in f.metadata)
    bad = set(changes) - {"group", "resumable"}
    if bad:
        raise ValueError(f"flag_from may change only group and resumable, not {sorted(bad)}")
    return dataclasses.field(default=source.default, metadata={**source.metadata, **changes})


def read_flags(cls, namespace: argparse.Namespace):
    """``cls`` (defaults) with the flags of ``cls`` given on the command line (parsed with :func:`add_flags`)."""
    keys = set(flag_keys(cls))
    return with_flag_values(cls(), {k: v for k, v in vars(namespace).items() if k in keys})


def given_values(namespace: argparse.Namespace) -> dict[str, Any]:
    """``{key: value}`` of the flags present on the command line (absent flags are not in the namespace);
    the keys of nested options are flat (:func:`with_flag_values` applies them)."""
    return dict(vars(namespace))
