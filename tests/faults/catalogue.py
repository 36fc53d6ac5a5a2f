"""The fault catalogue: every case (``CASES``), and its classification table.

Each case damages an input (missing, empty, corrupt or truncated files, wrong shapes, NaN/Inf, a wrong
``level0_mag``, leaky splits, unknown slides, mismatched prompts, inputs changed between resumes, a busy
run folder, unwritable outputs, a SIGKILL and rerun, bad flag values, ...) and runs one tool; the
tests (``test_fault_catalogue.py``) assert each case's outcome class and that no input changed.
This module also prints the table of what every tool does::

    python -m tests.faults.catalogue                 # the default cases (as pytest runs them)
    python -m tests.faults.catalogue --all           # every case, the slow ones too
    python -m tests.faults.catalogue --only resume --json rows.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from tests.faults.harness import CASES, CLASSES, CLEAR, OK, Row, run_case
from tests.faults.workspace import Assets

# Every tests/faults/cases_*.py module registers its cases when imported (in file-name order).
for _module in sorted(Path(__file__).parent.glob("cases_*.py")):
    importlib.import_module(f"tests.faults.{_module.stem}")

__all__ = ["CASES", "main", "print_table"]


def print_table(rows: list[Row]) -> None:
    """Case, expectation, outcome, inputs, first error line or note; then the counts per class."""
    width = max(len(r.case.name) for r in rows)
    print(f"\n{'case':<{width}}  {'expected':<8}  {'outcome':<27}  {'inputs':<8}  first error line / note")
    print("-" * (width + 110))
    for r in rows:
        line = r.line if len(r.line) <= 150 else r.line[:147] + "..."
        inputs = "MODIFIED" if r.modified else "same"
        print(f"{r.case.name:<{width}}  {r.case.expect:<8}  {r.outcome:<27}  {inputs:<8}  {line}")
    print(f"\n{len(rows)} cases in {sum(r.seconds for r in rows):.0f} s")
    for name in (*CLASSES, "set-up error"):
        print(f"  {name:<28} {sum(r.outcome == name for r in rows)}")
    print(f"  {'inputs modified':<28} {sum(bool(r.modified) for r in rows)}")
    odd = [r for r in rows if r.outcome not in (CLEAR, OK) or r.modified]
    for r in odd:
        print(
            f"  [{r.outcome}] {r.case.name}: {r.line}"
            + (f" (modified: {r.modified[:3]})" if r.modified else "")
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the fault catalogue and print what each tool does.")
    parser.add_argument("--all", action="store_true", help="include the slow cases")
    parser.add_argument("--only", default=None, help="the cases whose name contains this text")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    cases = [c for c in CASES if (args.all or not c.slow) and (args.only is None or args.only in c.name)]
    if args.list:
        for c in cases:
            print(f"{c.tool:<8} {c.expect:<8} {c.outcome:<27} {'slow' if c.slow else '':<4} {c.name}")
        print(f"{len(cases)} cases")
        return 0
    work = Path(tempfile.mkdtemp(prefix="fault-catalogue-"))
    os.environ["HIVEMIL_CACHE"] = str(work / "cache")
    for key, value in (
        ("HF_HUB_OFFLINE", "1"),
        ("TRANSFORMERS_OFFLINE", "1"),
        ("TOKENIZERS_PARALLELISM", "false"),
    ):
        os.environ.setdefault(key, value)
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    assets, rows = Assets(work), []
    try:
        for i, c in enumerate(cases, 1):
            try:
                rows.append(run_case(c, assets, work))
            except Exception as exc:  # noqa: BLE001 - a broken set-up is reported in the table, not hidden
                rows.append(
                    Row(
                        c,
                        "set-up error",
                        f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:200],
                        [],
                        0.0,
                    )
                )
            print(
                f"[{i}/{len(cases)}] {rows[-1].outcome:<27} {rows[-1].seconds:5.1f} s  {c.name}",
                file=sys.stderr,
            )
    finally:
        if rows:
            print_table(rows)
        if args.json and rows:
            fields = [{"case": r.case.name, "tool": r.case.tool, "expected": r.case.expect, "outcome": r.outcome,
                       "line": r.line, "inputs_modified": r.modified, "seconds": round(r.seconds, 1)}
                      for r in rows]  # fmt: skip
            Path(args.json).write_text(json.dumps(fields, indent=1))
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
