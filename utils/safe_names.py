"""Names from user files that become file names, and output paths that must stay where the user said.

Slide ids, case ids and task names are read from CSVs, split files and flags, and then used as file
or folder names (``<slide>.h5``, ``splits/<task>/...``). :func:`check_name` is the one rule every
reader applies: a name is refused when it is empty, is ``.`` or ``..``, is absolute, contains a path
separator (``/`` or ``\\``), or contains a control character (NUL included). Dots elsewhere are
harmless (``TCGA-XX.UUID``, ``a..b``). :func:`contained` resolves an output path and refuses one that
would leave the root the user named (a symbolic link inside the root pointing out of it included).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from utils.errors import InputError

_SEPARATORS = ("/", "\\")


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be used as one file or folder name, else None."""
    if not isinstance(name, str):
        return f"not text ({type(name).__name__})"
    if name == "":
        return "empty"
    if name in (".", ".."):
        return f"{name!r} names a folder, not a file"
    bad_char = next((c for c in name if ord(c) < 0x20 or ord(c) == 0x7F), None)
    if bad_char is not None:
        return f"contains the control character {bad_char!r}"
    if any(sep in name for sep in _SEPARATORS):
        return "contains a path separator (/ or \\)"
    if os.path.isabs(name) or Path(name).drive:
        return "is an absolute path"
    return None


def check_name(name: str, what: str, where: str) -> str:
    """``name`` when it is a safe file name, else one :class:`InputError` line.

    ``what`` says what the name is (``"slide id"``, ``"--task"``); ``where`` names its origin (a file and
    row, or a flag), e.g. ``"dataset_csv/x.csv: data row 3"``.
    """
    problem = name_problem(name)
    if problem is not None:
        raise InputError(f"{where}: {what} {name!r} cannot name a file: {problem}")
    return name


def check_names(names: Iterable[str], what: str, path: str | Path, row_label: str = "data row") -> None:
    """:func:`check_name` for each name of a file's column; the error names ``path`` and the (1-based) row."""
    for i, name in enumerate(names):
        check_name(name, what, f"{path}: {row_label} {i + 1}")


def refuse_nul(path: str | Path) -> None:
    """One :class:`InputError` line when the file at ``path`` holds a NUL byte (pandas' C reader would cut
    the cell at it silently, turning ``x\0y`` into ``x``); names the file and the data row."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return  # the reader reports an unreadable file itself
    at = data.find(b"\x00")
    if at >= 0:
        row = data.count(b"\n", 0, at)  # line 1 is the header: data row = line - 1
        raise InputError(f"{path}: data row {row}: contains a NUL byte (a text CSV never does)")


def contained(root: str | Path, *parts: str) -> Path:
    """``root/parts...`` resolved, after checking that it stays under ``root`` (also resolved).

    Each part may be a relative path of several components (``"plip_5x/slide.h5"``); a result outside
    ``root`` -- through ``..``, an absolute part or a symbolic link -- is one :class:`InputError` line.
    """
    base = Path(root).expanduser().resolve()
    target = base.joinpath(*parts).resolve()
    if target != base and base not in target.parents:
        shown = Path(root).joinpath(*parts)
        raise InputError(f"{shown}: output path leaves the output folder {root} (resolves to {target})")
    return target


def distinct_outputs(paths: dict[str, Path]) -> None:
    """Refuse outputs that resolve to the same file (e.g. a slide's 5x and 20x files): one line naming both."""
    seen: dict[Path, str] = {}
    for label, path in paths.items():
        resolved = Path(path).resolve()
        if resolved in seen:
            raise InputError(f"{path}: the {label} output and the {seen[resolved]} output are the same file")
        seen[resolved] = label
