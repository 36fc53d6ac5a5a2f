"""The embedded ``demo_survival`` task: a small synthetic survival cohort generated on first use
(docs/survival.md §10).

100 cases (15 of them with two slides); each slide is made by the classification demo's slide generator
(:func:`preprocess.demo.slide_arrays`: 10-30 5x patches, up to 16 20x children each, some orphan 20x
patches, level0_mag 40 or 20), with the signal planted only in 20x children:

* every case draws u ~ N(0, 1); its signal 20x children (about 30% of the children: those of ~40% of the
  5x patches, each with probability 0.75) carry ``max(0, 1.5 + 0.75 u) * SIGNAL_20X`` along one fixed
  feature direction;
* the case's signal load is the mean projection of all its 20x patches on that direction (what was
  planted, with the noise the features carry); standardised over the cohort it is the log-hazard
  (times 1.5): the event time is exponential with hazard ``log 2 / 24 * exp(1.5 load)`` per month (median
  24 months at the mean load), censored by an independent uniform follow-up in [6, 120] months (~30%).

The hazard thus depends only on the feature direction in the 20x children; the load itself reaches a
c-index of about 0.8. Written with the project's own writers and code paths: features and hierarchy files as the
classification demo, the survival CSV read back with :func:`datasets.survival.read_survival_csv`, bins
and five case-level ``,train,val`` splits (the field's layout) from
:func:`datasets.survival.make_survival_splits`, the attribute prompts
``text_prompt/HiLa/demo_survival.json``. Deterministic in ``seed``; generated into a temporary folder and
renamed into place (:func:`preprocess.demo.ensure_generated_tree`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from datasets.features import FeatureLayout, write_patch_file
from datasets.splits import write_split
from datasets.survival import (
    DEFAULT_BINS,
    PROMPT_FOLDER,
    SPLIT_PARTS,
    bin_cuts,
    make_survival_splits,
    read_survival_csv,
    survival_split_path,
)
from preprocess.demo import (
    EXTRACTOR,
    FEATURE_DIM,
    SIGNAL_20X,
    ensure_demo_text_tower,
    ensure_generated_tree,
    slide_arrays,
    write_marker,
)
from preprocess.hierarchy import build_slide_hierarchy
from utils.atomic_io import atomic_write_text
from utils.paths import cache_root

GENERATOR_VERSION = 2  # 2: the field's train/val split files (the cohort itself is that of version 1)
COHORT_VERSION = 1  # seeds the cohort: unchanged since version 1
TASK_NAME = "demo_survival"
NUM_CASES = 100
TWO_SLIDE_CASES = 15
NUM_FOLDS = 5
N5_RANGE = (10, 31)
LOG_HAZARD_RATIO = 1.5  # per unit of the latent risk u
BASELINE_MEDIAN_MONTHS = 24.0
FOLLOW_UP_MONTHS = (6.0, 120.0)


@dataclass(frozen=True)
class DemoSurvivalData:
    """Where the survival demo lives."""

    root: Path
    data_root_dir: Path
    csv_path: Path
    splits_root: Path
    prompt_dir: Path
    feature_extractor: str = EXTRACTOR
    feature_dim: int = FEATURE_DIM
    num_folds: int = NUM_FOLDS

    @property
    def layout(self) -> FeatureLayout:
        return FeatureLayout(self.data_root_dir, TASK_NAME, self.feature_extractor)

    @property
    def prompt_file(self) -> Path:
        return self.prompt_dir / PROMPT_FOLDER / f"{TASK_NAME}.json"


def default_root() -> Path:
    """``<cache>/demo_survival``."""
    return cache_root() / TASK_NAME


def _data_at(root: Path) -> DemoSurvivalData:
    return DemoSurvivalData(
        root=root,
        data_root_dir=root / "features",
        csv_path=root / "dataset_csv" / f"{TASK_NAME}.csv",
        splits_root=root / "splits",
        prompt_dir=root / "text_prompt",
    )


def ensure_demo_survival_data(
    root: str | Path | None = None, seed: int = 0, force: bool = False
) -> DemoSurvivalData:
    """The survival demo under ``root`` (default :func:`default_root`), generated first when absent,
    outdated or ``force``."""
    root = Path(root) if root is not None else default_root()
    ensure_generated_tree(root, seed, GENERATOR_VERSION, generate_demo_survival_data, force)
    return _data_at(root)


def run_defaults(root: str | Path | None = None, seed: int = 0) -> dict:
    """``main.py`` settings for ``--task demo_survival``: its data, the tiny text tower, HiLa-style, and
    training settings that fit the demo (lr 1e-3, 10 epochs, no early stopping, one CPU thread);
    explicit flags win."""
    demo = ensure_demo_survival_data(root, seed=seed)
    return {
        "data_root_dir": str(demo.data_root_dir),
        "feature_extractor": demo.feature_extractor,
        "feature_dim": demo.feature_dim,
        "k": demo.num_folds,
        "splits_root": str(demo.splits_root),
        "csv_dir": str(demo.csv_path.parent),
        "prompt_dir": str(demo.prompt_dir),
        "text_tower": str(ensure_demo_text_tower()),
        "model_type": "HiLa",
        "lr": 1e-3,
        "max_epochs": 10,
        "threads": 1,  # tiny bags: one intra-op thread is fastest (and robust on a busy machine)
    }


def _cases(rng: np.random.Generator) -> pd.DataFrame:
    """Case and slide ids with level0_mag (15 cases with two slides, ~1/4 of slides at level0_mag 20)."""
    two = set(rng.choice(NUM_CASES, TWO_SLIDE_CASES, replace=False).tolist())
    rows, slide_no = [], 0
    for case in range(NUM_CASES):
        for _ in range(2 if case in two else 1):
            level0 = 20 if rng.random() < 0.25 else 40
            rows.append((f"surv_case_{case:03d}", f"surv_slide_{slide_no:03d}", level0))
            slide_no += 1
    return pd.DataFrame(rows, columns=["case_id", "slide_id", "level0_mag"])


def _outcomes(rng: np.random.Generator, load: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(months, censorship) from each case's standardised signal load."""
    risk = (load - load.mean()) / load.std()
    rate = np.log(2.0) / BASELINE_MEDIAN_MONTHS * np.exp(LOG_HAZARD_RATIO * risk)
    event_time = rng.exponential(1.0 / rate)
    follow_up = rng.uniform(*FOLLOW_UP_MONTHS, size=load.shape[0])
    months = np.maximum(np.round(np.minimum(event_time, follow_up), 2), 0.01)
    return months, (event_time > follow_up).astype(int)


def generate_demo_survival_data(root: Path, seed: int = 0) -> DemoSurvivalData:
    """Write the whole survival demo tree under ``root`` (which should be empty); deterministic in ``seed``."""
    root = Path(root)
    demo = _data_at(root)
    rng = np.random.default_rng(np.random.SeedSequence([7919, COHORT_VERSION, int(seed) & 0xFFFFFFFF]))
    table = _cases(rng)
    latent = rng.standard_normal(NUM_CASES)
    direction = rng.standard_normal(FEATURE_DIM)
    direction = (direction / np.linalg.norm(direction)).astype(np.float32)
    case_index = {f"surv_case_{i:03d}": i for i in range(NUM_CASES)}
    projections: list[list[np.ndarray]] = [[] for _ in range(NUM_CASES)]
    layout = demo.layout
    for slide_id, case_id, level0 in zip(table["slide_id"], table["case_id"], table["level0_mag"]):
        case = case_index[case_id]
        amplitude = max(0.0, 1.5 + 0.75 * float(latent[case]))
        x5, coords5, x20, coords20 = slide_arrays(
            rng, int(level0), direction, signal_20x=SIGNAL_20X * amplitude, signal_5x=0.0, n5_range=N5_RANGE
        )
        write_patch_file(layout.low_file(slide_id), x5, coords5)
        write_patch_file(layout.high_file(slide_id), x20, coords20)
        build_slide_hierarchy(layout, slide_id, int(level0), seed=seed)
        projections[case].append(x20 @ direction)
    load = np.array([np.concatenate(p).mean() for p in projections])
    months, censored = _outcomes(rng, load)
    case_of_row = table["case_id"].map(case_index).to_numpy()
    table.insert(2, "survival_months", months[case_of_row])
    table.insert(3, "censorship", censored[case_of_row])
    demo.csv_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(demo.csv_path, table.to_csv(index=False, lineterminator="\n"))
    survival = read_survival_csv(demo.csv_path)
    splits, _ = make_survival_splits(survival, bin_cuts(survival, DEFAULT_BINS), k=NUM_FOLDS, seed=seed)
    for fold, split in enumerate(splits):
        write_split(survival_split_path(demo.splits_root, TASK_NAME, fold), split, SPLIT_PARTS)
    atomic_write_text(demo.prompt_file, json.dumps(DEMO_SURVIVAL_PROMPTS, indent=2) + "\n")
    write_marker(root, seed, GENERATOR_VERSION)
    return demo


# K = 6 survival-related attributes, each described at the region (5x) and the patch (20x) level.
DEMO_SURVIVAL_PROMPTS: dict[str, dict[str, str]] = {
    "tumour burden": {
        "region": "large confluent areas occupied by densely packed tumour cells",
        "patch": "crowded atypical tumour cells with enlarged hyperchromatic nuclei",
    },
    "tumour-infiltrating lymphocytes": {
        "region": "dense bands of lymphocytes at the tumour border and inside tumour nests",
        "patch": "small round dark lymphocytes interspersed between tumour cells",
    },
    "necrosis": {
        "region": "geographic zones of dead tissue within the tumour",
        "patch": "eosinophilic debris with ghost cells and fragmented nuclei",
    },
    "stroma": {
        "region": "broad fibrous septa separating tumour islands",
        "patch": "collagen fibres and spindle-shaped fibroblasts",
    },
    "proliferation": {
        "region": "highly cellular fields with many mitotic figures",
        "patch": "atypical mitoses and prominent nucleoli",
    },
    "vascular invasion": {
        "region": "tumour emboli inside vessels near the invasive front",
        "patch": "tumour cell clusters within an endothelium-lined space",
    },
}
