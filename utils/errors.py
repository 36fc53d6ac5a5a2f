"""One exception type for bad user input, and its kind for numbers that are not finite.

Every problem caused by the user's files or flags is raised as :class:`InputError` with a single-line
message that names the file (or flag) and the problem. Entry points catch it and print
``error: <message>`` without a traceback (see :func:`run_cli`). :class:`NonFiniteError` is the
InputError of a loss or model output that is not finite (a diverged run, overflowing features): a
rerun with the same inputs gives the same, so drivers that retry failures do not retry it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class InputError(Exception):
    """A user-facing, one-line error about an input file or option."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class NonFiniteError(InputError):
    """A training loss or a model output that is NaN or infinite: deterministic, never retried."""


def listed(items, limit: int = 5) -> str:
    """``"a, b, c (+N more)"``: the first ``limit`` items of a list named in an error line."""
    items = [str(v) for v in items]
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def one_line(err: BaseException | str, limit: int = 200, with_type: bool = True) -> str:
    """An exception (or text) squeezed onto one line and cut to ``limit`` characters.

    ``"Type: message"`` for exceptions (``with_type=False``: the message only); the one way an
    underlying library's error becomes part of an :class:`InputError` line.
    """
    text = f"{type(err).__name__}: {err}" if with_type and isinstance(err, BaseException) else str(err)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a CLI ``main`` and turn :class:`InputError` into ``error: ...`` on stderr and exit code 2."""
    try:
        code = main(argv)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)
