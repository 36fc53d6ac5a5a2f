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
GOLDEN_TOWER = GOLDEN / "tiny_clip"
GOLDEN_PROMPTS = (GOLDEN / "prompts_2class.json", GOLDEN / "prompts_3class.json")


def missing(*paths: Path) -> str | None:
    """Why a test that reads these files cannot run here (``None`` when all exist): ../shared differs
    between machines, so such a test skips, naming what is absent, instead of erroring."""
    absent = [str(p) for p in paths if not p.exists()]
    return f"not present: {', '.join(absent)}" if absent else None


def golden_cases() -> list[Path]:
    """The golden cases that can be checked here: ``case_*.pt`` of GOLDEN, when the tiny tower and both
    prompt files they were computed with are present too (else none)."""
    if not GOLDEN.is_dir() or missing(GOLDEN_TOWER / "config.json", *GOLDEN_PROMPTS):
        return []
    return sorted(GOLDEN.glob("case_*.pt"))
