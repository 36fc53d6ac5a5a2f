"""The fault catalogue's pristine assets, built once per test session (see tests/faults/workspace.py)."""

from __future__ import annotations

import pytest

from tests.faults.workspace import Assets


@pytest.fixture(scope="session")
def fault_assets(tmp_path_factory) -> Assets:
    return Assets(tmp_path_factory.mktemp("fault_assets"))
