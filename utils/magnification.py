"""Magnification values as users write them: ``5x``, ``5``, ``20x``, ``20``, ``10x``, ``2.5x``.

The released scripts take ``'5x'``/``'20x'`` strings; the paper's README writes ``5``/``20``. Both
forms are accepted everywhere; folder names always use the ``x`` form (``plip_5x``).
"""

from __future__ import annotations

import math

from utils.errors import InputError


def magnification_value(text: str | float | int, flag: str = "magnification") -> float:
    """``"5x"``/``"5"``/``5`` -> 5.0; anything else (``5y``, ``0``, ``-5``, ``nan``) is one-line InputError."""
    raw = str(text).strip()
    number = raw[:-1] if raw.lower().endswith("x") else raw
    try:
        value = float(number)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"{flag} {text!r}: not a magnification (write e.g. 5x or 5, 20x or 20)")
    return value


def magnification_label(text: str | float | int, flag: str = "magnification") -> str:
    """The folder-name form: ``5`` / ``"5x"`` / ``5.0`` -> ``"5x"``, ``2.5`` -> ``"2.5x"``."""
    value = magnification_value(text, flag)
    return f"{int(value)}x" if value == int(value) else f"{value:g}x"


def magnification_arg(text: str) -> str:
    """argparse ``type`` for a magnification flag: validates and returns the ``x`` form."""
    import argparse

    try:
        return magnification_label(text)
    except InputError as err:
        raise argparse.ArgumentTypeError(str(err).split(": ", 1)[-1]) from None
