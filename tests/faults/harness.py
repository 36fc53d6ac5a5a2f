"""Running one fault case and classifying what the tool did (the fault catalogue's machinery).

A case (:class:`Case`, registered with :func:`case`) builds its own small workspace, damages something
and runs one tool through its ``main(argv)`` wrapped in :func:`utils.errors.run_cli`, exactly as the
tool's ``__main__`` block runs it (the root CLIs and ``models.convert_checkpoint`` are loaded by module
name; nothing else of theirs is used); a case whose point is a crash, a kill or a second concurrent
process starts the tool as a subprocess. Each outcome falls in one class:

* ``clear error before training``: exit code != 0 with ``error:`` line(s) (or one ``failed <slide>:``
  line per bad slide, or the consistency checker's ``PROBLEM`` lines), no traceback, no training started;
* ``late error``: exit code != 0 after a fold started training;
* ``traceback``: an exception escaped, or a traceback was printed;
* ``unclear error``: exit code != 0 without a one-line reason, or with a problem the case found (a
  misleading reason, a partial file, a result that still claims a number for the refused run);
* ``warned``: exit code 0 where the case expects a refusal, but a ``warning:`` line names the problem;
* ``silent``: exit code 0 where the case expects a refusal (without a warning), or exit 0 with outputs
  inconsistent with the inputs (each succeeding case checks its outputs);
* ``ok``: a case that should succeed did, with consistent outputs;
* ``false refusal``: a case that should succeed was refused.

Everything a case reads is hashed before the command and compared afterwards (:meth:`Ctx.inputs`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.paths import PROJECT

CLEAR = "clear error before training"
LATE = "late error"
TRACEBACK = "traceback"
UNCLEAR = "unclear error"
WARNED = "warned"
SILENT = "silent"
OK = "ok"
FALSE_REFUSAL = "false refusal"
CLASSES = (CLEAR, LATE, TRACEBACK, UNCLEAR, WARNED, SILENT, OK, FALSE_REFUSAL)
REFUSE, SUCCEED = "refuse", "succeed"

# Entry points by module name (imported when first used).
CLIS = {
    "main": "main",
    "hier": "create_hierarchical_features",
    "check": "check_hierarchical_consistency",
    "splits": "create_splits",
    "extract": "extract_features",
    "explain": "explain",
    "convert": "models.convert_checkpoint",
    "predict": "predict",
    "reproduce": "reproduce",
}
TRAINING_STARTED = re.compile(r"^(fold \d+: .*trainable parameters|epoch\s+\d+)", re.MULTILINE)


# ------------------------------------------------------------------------------------------ running
@dataclass
class Result:
    """What one command did."""

    code: int
    out: str = ""
    err: str = ""
    exception: str | None = None  # an exception that escaped run_cli (one line)

    @property
    def trained(self) -> bool:
        return bool(TRAINING_STARTED.search(self.out))

    def error_lines(self) -> list[str]:
        """``error: ...`` lines, ``failed <slide>: ...`` lines (one per bad slide), argparse's
        ``prog: error: ...`` and the consistency checker's ``PROBLEM <slide>: ...`` report lines."""
        lines = [line.strip() for line in self.err.splitlines()]
        found = [
            line
            for line in lines
            if line.startswith(("error:", "failed ")) or re.match(r"^[\w.]+(\.py)?: error: ", line)
        ]
        return found + [line.strip() for line in self.out.splitlines() if line.startswith("PROBLEM ")]


def run_inprocess(tool: str, argv: list) -> Result:
    """``run_cli(<tool>.main, argv)`` with stdout/stderr captured; escaped exceptions are recorded."""
    from utils.errors import run_cli

    module = importlib.import_module(CLIS[tool])
    out, err = io.StringIO(), io.StringIO()
    exception = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = run_cli(module.main, [str(a) for a in argv])
        except SystemExit as stop:  # argparse
            code = stop.code if isinstance(stop.code, int) else 2
        except Exception as exc:  # noqa: BLE001 - the point is to see what escapes
            code = 1
            err.write("".join(traceback.format_exception(exc)))
            exception = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:200]
    return Result(int(code or 0), out.getvalue(), err.getvalue(), exception)


def start_subprocess(tool: str, argv: list, log: Path) -> subprocess.Popen:
    """A background run of ``tool`` as a user starts it; its stdout and stderr go to ``log``."""
    module = CLIS[tool]
    command = (
        [sys.executable, "-m", module] if "." in module else [sys.executable, str(PROJECT / f"{module}.py")]
    )
    handle = open(log, "w", encoding="utf-8")  # noqa: SIM115 - closed by the child's exit
    return subprocess.Popen([*command, *map(str, argv)], cwd=PROJECT, stdout=handle, stderr=subprocess.STDOUT)


def wait_for(predicate: Callable[[], bool], proc: subprocess.Popen | None, timeout: float) -> bool:
    """Poll ``predicate`` until true (False when ``proc`` ends first or after ``timeout`` s)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return predicate()
        time.sleep(0.1)
    return False


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL a process this harness started, and reap it."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def digest_tree(paths: list[Path]) -> dict[str, str]:
    """BLAKE2b of every file under ``paths`` (files or folders)."""
    out = {}
    for root in map(Path, paths):
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            out[str(path)] = hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
    return out


# ------------------------------------------------------------------------------------------ cases
@dataclass
class Ctx:
    """One case's workspace and records."""

    dir: Path
    assets: object  # tests.faults.workspace.Assets
    watched: list[Path] = field(default_factory=list)
    before: dict[str, str] = field(default_factory=dict)
    cleanup: list[Callable[[], None]] = field(default_factory=list)  # run after the inputs are compared

    def inputs(self, *paths) -> None:
        """Hash these inputs now (after the case's set-up); compared after the case."""
        self.watched += [Path(p) for p in paths]
        self.before.update(digest_tree([Path(p) for p in paths]))

    def modified(self) -> list[str]:
        after = digest_tree(self.watched)
        return sorted(k for k in set(self.before) | set(after) if self.before.get(k) != after.get(k))


@dataclass(frozen=True)
class Case:
    """One entry of the catalogue.

    ``expect``: what a careful tool does (REFUSE or SUCCEED); ``outcome``: the class asserted today
    (default: CLEAR for a refusal, OK for a success); ``defect``: where a known defect is tracked (e.g.
    ``"issue 25"``) -- the case is then an expected failure (strict: fixing the defect flips the test);
    ``slow``: not in the default test run (``pytest -m slow`` runs it).
    """

    name: str
    tool: str
    expect: str
    run: Callable[[Ctx], Result | tuple[Result, str | None]]
    outcome: str
    defect: str | None = None
    slow: bool = False


CASES: list[Case] = []


def case(name: str, tool: str, expect: str, *, outcome: str | None = None, defect: str | None = None,
         slow: bool = False):  # fmt: skip
    """Register the decorated ``run(ctx)`` as a case (see :class:`Case`)."""
    if tool not in CLIS or expect not in (REFUSE, SUCCEED):
        raise ValueError(f"case {name!r}: unknown tool {tool!r} or expectation {expect!r}")
    if outcome is not None and outcome not in CLASSES:
        raise ValueError(f"case {name!r}: unknown outcome {outcome!r}")
    if any(c.name == name for c in CASES):
        raise ValueError(f"case {name!r} registered twice")

    def register(fn):
        default = CLEAR if expect == REFUSE else OK
        CASES.append(Case(name, tool, expect, fn, outcome or default, defect, slow))
        return fn

    return register


def classify(case: Case, res: Result, problem: str | None) -> tuple[str, str]:
    """``(class, first error line or note)`` of one outcome."""
    errors = res.error_lines()
    first = errors[0] if errors else ""
    if res.exception or "Traceback (most recent call last)" in res.err + res.out:
        tail = [line for line in res.err.splitlines() if line.strip()]
        return TRACEBACK, res.exception or (tail[-1] if tail else "")
    if res.code != 0:
        if case.expect == SUCCEED:
            return FALSE_REFUSAL, first or f"exit {res.code}"
        if problem:  # refused, but with a misleading reason or a result left that claims a number
            return UNCLEAR, f"{first} [{problem}]"
        if res.trained:
            return LATE, first
        return (CLEAR, first) if errors else (UNCLEAR, f"exit {res.code}: {res.err.strip()[-120:]}")
    if case.expect == REFUSE:
        warnings = [line.strip() for line in res.err.splitlines() if line.strip().startswith("warning:")]
        if warnings and not problem:
            return WARNED, warnings[0]
        return SILENT, "exit 0" + (f"; {problem}" if problem else "")
    return (SILENT, problem) if problem else (OK, "")


@dataclass
class Row:
    """What one case did: its class, first error line or note, the inputs it changed."""

    case: Case
    outcome: str
    line: str
    modified: list[str]
    seconds: float
    result: Result | None = None


def run_case(case: Case, assets, work: Path) -> Row:
    """Run ``case`` in a fresh folder under ``work``; a broken set-up raises."""
    ctx = Ctx(Path(tempfile.mkdtemp(prefix="case-", dir=work)), assets)
    start = time.perf_counter()
    try:
        returned = case.run(ctx)
        res, problem = returned if isinstance(returned, tuple) else (returned, None)
        outcome, line = classify(case, res, problem)
        modified = ctx.modified() if ctx.watched else []
    finally:
        for undo in ctx.cleanup:
            undo()
    return Row(case, outcome, line, modified, time.perf_counter() - start, res)
