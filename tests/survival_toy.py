"""A toy survival task on disk (24 cases, some with two slides) shared by the survival run tests."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from datasets.features import FeatureLayout
from datasets.splits import PARTS, write_split
from datasets.survival import (
    SPLIT_PARTS,
    bin_cuts,
    make_survival_splits,
    read_survival_csv,
    survival_split_path,
)
from tests.toy_task import DIM, write_slide

TASK = "toysurv"
EXTRACTOR = "toyfe"
PROMPTS = {
    "tumour": {"region": "sheets of tumour cells", "patch": "atypical enlarged nuclei"},
    "immune": {"region": "lymphoid aggregates", "patch": "small round lymphocytes"},
    "stroma": {"region": "fibrous septa", "patch": "collagen and fibroblasts"},
}


def make_survival_toy_data(
    root, k: int = 3, n_cases: int = 24, seed: int = 0, dim: int = DIM, test_part: bool = True
) -> dict:
    """Dataset CSV, features, k case-level split files and HiLa prompts for the survival task ``toysurv``:
    ``,train,val,test`` files, or the field's ``,train,val`` files with ``test_part=False``."""
    rng = np.random.default_rng(seed)
    risk = rng.standard_normal(n_cases)
    months = np.round(rng.exponential(20.0 * np.exp(-risk)) + 0.5, 2)
    censorship = (rng.random(n_cases) < 0.3).astype(int)
    rows, layout = [], FeatureLayout(root / "features", TASK, EXTRACTOR)
    for case in range(n_cases):
        for extra in range(2 if case % 5 == 0 else 1):
            slide = f"slide_{case:02d}_{extra}"
            write_slide(layout, slide, int(risk[case] > 0), rng, dim=dim)
            rows.append((f"case_{case:02d}", slide, months[case], censorship[case], 40))
    csv_dir = root / "dataset_csv"
    csv_dir.mkdir(parents=True, exist_ok=True)
    csv_path = csv_dir / f"{TASK}.csv"
    columns = ["case_id", "slide_id", "survival_months", "censorship", "level0_mag"]
    pd.DataFrame(rows, columns=columns).to_csv(csv_path, index=False)
    table = read_survival_csv(csv_path)
    splits, _ = make_survival_splits(table, bin_cuts(table, 4), k=k, seed=seed, test_part=test_part)
    for fold, split in enumerate(splits):
        write_split(
            survival_split_path(root / "splits", TASK, fold), split, PARTS if test_part else SPLIT_PARTS
        )
    prompt = root / "prompts" / "HiLa" / f"{TASK}.json"
    prompt.parent.mkdir(parents=True, exist_ok=True)
    prompt.write_text(json.dumps(PROMPTS))
    return {
        "root": root,
        "layout": layout,
        "csv": csv_path,
        "splits": splits,
        "argv": [
            "--task", TASK, "--model_type", "mean_pool_surv", "--feature_extractor", EXTRACTOR,
            "--feature_dim", str(dim), "--data_root_dir", str(root / "features"), "--csv_dir", str(csv_dir),
            "--prompt_dir", str(root / "prompts"), "--splits_root", str(root / "splits"), "--k", str(k),
            "--device", "cpu", "--quiet", "--max_epochs", "2", "--lr", "1e-3", "--threads", "1",
        ],
    }  # fmt: skip
