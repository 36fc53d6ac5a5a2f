"""One exception type for bad user input.

Every problem caused by the user's files or flags is raised as :class:`InputError` with a single-line
message that names the file (or flag) and the problem. Entry points catch it and print
``error: <message>`` without a traceback (see :func:`run_cli`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class InputError(Exception):
    """A user-facing, one-line error about an input file or option."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


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
