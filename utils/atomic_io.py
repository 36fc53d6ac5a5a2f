"""Atomic file writes: write to a temporary file in the target folder, then ``os.replace``.

A reader never sees a half-written file, and an interrupted write leaves the old file (if any) intact.
An output location that cannot be written (a parent that is a file, a read-only folder) is one
:class:`utils.errors.InputError` line naming it, and so is a write that fails half-way (a full disk:
``ENOSPC``, a quota, an I/O error): the partial temporary file is removed and :class:`WriteError` names
the file that was being written. Writers whose library hides the ``OSError`` (``torch.save`` raises a
bare ``RuntimeError`` on a full disk) serialise to memory and write the bytes with
:func:`atomic_write_bytes`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from utils.errors import InputError, one_line


class WriteError(InputError, OSError):
    """A write that failed half-way: one line naming the file (an :class:`InputError`, so CLIs print it
    without a traceback; also an ``OSError``, so callers that tolerate failed writes keep doing so)."""


def write_failure(target: str | Path, err: OSError) -> WriteError:
    """The one-line :class:`WriteError` for ``err`` met while writing ``target``."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        reason = "no space left on the device" if err.errno == errno.ENOSPC else "disk quota exceeded"
    else:
        reason = one_line(err, with_type=False)
    return WriteError(
        f"{target}: writing failed ({reason}); the partial file was removed, nothing was replaced"
    )


def ensure_output_dir(folder: str | Path) -> Path:
    """Create an output folder (and its parents); one :class:`InputError` line when that is impossible."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(
            f"{folder}: cannot create this output folder ({one_line(err, with_type=False)})"
        ) from None
    return folder


@contextlib.contextmanager
def atomic_path(target: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success it is renamed onto ``target``.

    On an exception the temporary file is removed and ``target`` is untouched. Use it for writers
    that want a file name (h5py, torch.save, pandas)::

        with atomic_path(out) as tmp:
            with h5py.File(tmp, "w") as f: ...
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=suffix if suffix is not None else ".tmp", dir=target.parent
        )
    except OSError as err:  # e.g. a parent that is a file, or a read-only folder: one line, no traceback
        raise InputError(f"{target}: cannot write here ({one_line(err, with_type=False)})") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.exists():  # mkstemp makes 0600 files; give the result the usual umask-based mode
            os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, target)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(err, OSError) and not isinstance(err, InputError):
            raise write_failure(target, err) from None
        raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(target: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding=encoding)


def atomic_write_bytes(target: str | Path, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
