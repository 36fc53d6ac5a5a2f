"""Every fault case ends as its entry says: the asserted outcome class, and no input changed.

A case marked with a ``defect`` is a strict expected failure (fixing the defect makes it pass, which
fails the run until the entry is updated); a ``slow`` case runs under ``pytest -m slow``.
"""

from __future__ import annotations

import pytest

from tests.faults.catalogue import CASES
from tests.faults.harness import Case, run_case


def _param(case: Case):
    marks = [pytest.mark.slow] if case.slow else []
    if case.defect:
        marks.append(pytest.mark.xfail(strict=True, raises=AssertionError, reason=case.defect))
    return pytest.param(case, id=case.name, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_fault_case(case, fault_assets, tmp_path):
    row = run_case(case, fault_assets, tmp_path)
    output = (
        ""
        if row.result is None
        else f"\n--- stdout\n{row.result.out[-1500:]}\n--- stderr\n{row.result.err[-1500:]}"
    )
    assert row.outcome == case.outcome, f"{row.outcome}: {row.line}{output}"
    assert not row.modified, f"inputs modified: {row.modified[:5]}"
