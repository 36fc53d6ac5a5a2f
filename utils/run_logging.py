"""Run log: everything the CLI prints also goes to ``log.txt``; optional TensorBoard scalars; progress bars.

Messages go through :meth:`RunLog.info` (printed with ``tqdm.write`` so progress bars stay intact) and
are appended line by line to the log file -- a log is a stream, so a killed run keeps its log up to
the kill. TensorBoard writers are created per fold under ``tb/fold_<k>`` only with ``--log_data``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tqdm.auto import tqdm


def progress_enabled(quiet: bool) -> bool:
    """Progress bars only on an interactive terminal and without ``--quiet``."""
    return not quiet and sys.stderr.isatty()


class RunLog:
    """Print to the console (unless quiet) and append to ``log_path`` (once set)."""

    def __init__(self, log_path: str | Path | None = None, quiet: bool = False):
        self.quiet = quiet
        self._file = None
        self._buffer: list[str] = []
        if log_path is not None:
            self.attach(log_path)

    def attach(self, log_path: str | Path) -> None:
        """Start writing to ``log_path`` (appending); lines logged before are written first."""
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        self._file = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        for line in self._buffer:
            self._write(line)
        self._buffer.clear()

    @property
    def attached(self) -> bool:
        """Whether lines go to a log file yet (before :meth:`attach` they are buffered)."""
        return self._file is not None

    def _write(self, line: str) -> None:
        self._file.write(line + "\n")
        self._file.flush()

    def info(self, message: str = "", console: bool = True) -> None:
        self._record(str(message) or "\n")
        if console and not self.quiet:
            tqdm.write(str(message), file=sys.stdout)

    def warning(self, message: str) -> None:
        """A warning is always shown (on stderr), even with ``--quiet``."""
        self._record(f"warning: {message}")
        tqdm.write(f"warning: {message}", file=sys.stderr)

    def error(self, message: str) -> None:
        """An error line (``error: ...`` on stderr and in the log), e.g. one of several problems found."""
        self._record(f"error: {message}")
        tqdm.write(f"error: {message}", file=sys.stderr)

    def _record(self, text: str) -> None:
        for line in text.splitlines():
            if self._file is None:
                self._buffer.append(line)
            else:
                self._write(line)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class ScalarLog:
    """TensorBoard scalars for one fold; a no-op unless enabled."""

    def __init__(self, log_dir: str | Path | None):
        self._writer = None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(log_dir))

    def add(self, tag: str, value: float, step: int) -> None:
        if self._writer is not None:
            self._writer.add_scalar(tag, value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None


def bar(iterable=None, *, total: int | None = None, desc: str = "", enabled: bool = True, leave: bool = True):
    """A tqdm progress bar (disabled when not ``enabled``)."""
    return tqdm(iterable, total=total, desc=desc, disable=not enabled, leave=leave, dynamic_ncols=True)
