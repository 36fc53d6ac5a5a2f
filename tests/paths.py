"""Where the tests find the project and the shared reference material (one home for these paths)."""

from __future__ import annotations

from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
SHARED = PROJECT.parent / "shared"
GOLDEN = SHARED / "golden"
REFERENCE_DATA = SHARED / "reference_data"
# The published TCGA dataset CSVs and 16-shot splits, shipped with the project (copies of REFERENCE_DATA).
SHIPPED_DATASET_CSV = PROJECT / "dataset_csv"
SHIPPED_SPLITS = PROJECT / "splits"
BUILTIN_TCGA_TASKS = ("tcga_brca", "tcga_nsclc", "tcga_rcc")
