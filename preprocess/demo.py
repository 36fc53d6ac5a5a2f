"""The embedded ``demo`` task: small synthetic 5x/20x feature bags generated on first use.

Three classes of 16 slides each (some patients with two slides). Each slide has 20-60 5x patches on a
2048-px grid (level0_mag 40) or a 1024-px grid (level0_mag 20, a quarter of the slides), each with up
to 16 20x children on the 4x4 sub-grid (some with none, some with fewer), plus a few 20x patches
outside every 5x patch. Features (dim 64) are Gaussian noise plus a small per-slide offset; the class
signal (a class-specific direction) is planted mostly in about 30% of the 20x children, and more weakly
in the 5x parents of those regions, so a mean-pooled linear classifier separates the classes.

Everything is written with the project's own writers: 5x/20x files, the hierarchical files via
:func:`preprocess.hierarchy.build_slide_hierarchy` (what ``create_hierarchical_features.py`` runs),
``dataset_csv/demo.csv``, three 8-shot splits via :func:`datasets.splits.make_few_shot_splits` and the
prompt file ``text_prompt/HiVE_MIL/curated/demo.json``. Generation is deterministic in ``seed`` and
safe under concurrency: it happens in a temporary folder renamed into place, with a marker file that
records the generator version and seed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from datasets.features import FeatureLayout, write_patch_file
from datasets.hierarchy import patch_px
from datasets.splits import make_few_shot_splits, split_csv_path, write_split
from datasets.tasks import TaskSpec
from preprocess.hierarchy import build_slide_hierarchy
from utils.atomic_io import atomic_write_text
from utils.paths import cache_root

GENERATOR_VERSION = 1
TASK_NAME = "demo"
EXTRACTOR = "demo"
FEATURE_DIM = 64
FEW_SHOT_NUM = 8
NUM_FOLDS = 3
CLASS_NAMES = ("solid", "glandular", "papillary")
SLIDES_PER_CLASS = 16
TWO_SLIDE_PATIENTS_PER_CLASS = 3
MARKER = "DEMO_VERSION.json"
PROMPT_LLM = "curated"

SIGNAL_20X = 3.0  # class-direction strength added to signal 20x children
SIGNAL_5X = 0.8  # weaker strength added to 5x patches of tumour regions
SLIDE_OFFSET_STD = 0.15  # per-slide nuisance shared by all its patches


@dataclass(frozen=True)
class DemoData:
    """Where the demo data lives and how to use it."""

    root: Path
    data_root_dir: Path
    task: TaskSpec
    splits_root: Path
    feature_extractor: str = EXTRACTOR
    feature_dim: int = FEATURE_DIM
    few_shot_num: int = FEW_SHOT_NUM
    num_folds: int = NUM_FOLDS

    @property
    def layout(self) -> FeatureLayout:
        return FeatureLayout(self.data_root_dir, self.task.name, self.feature_extractor)

    def split_path(self, fold: int) -> Path:
        return split_csv_path(self.splits_root, self.task.name, self.few_shot_num, fold)


def default_demo_root() -> Path:
    """``<cache>/demo`` (:func:`utils.paths.cache_root`: ``$HIVEMIL_CACHE`` or ``<project>/cache``)."""
    return cache_root() / "demo"


def ensure_demo_text_tower() -> Path:
    """The demo's tiny text tower (:func:`models.towers.tiny.ensure_demo_text_tower`), imported only when
    a demo task is run: reading a config (``--help``, a bad flag) does not import torch."""
    from models.towers import tiny

    return tiny.ensure_demo_text_tower()


def run_defaults(root: str | Path | None = None, seed: int = 0) -> dict:
    """``main.py`` settings for the demo task: its generated data, tiny text tower and training settings.

    A tiny random text tower on synthetic data learns in a few epochs at a larger learning rate, so the
    demo trains at lr 1e-3 for 10 epochs; explicit flags override every value.
    """
    demo = ensure_demo_data(root, seed=seed)
    return {
        "data_root_dir": str(demo.data_root_dir),
        "feature_extractor": demo.feature_extractor,
        "feature_dim": demo.feature_dim,
        "k": demo.num_folds,
        "few_shot_num": demo.few_shot_num,
        "splits_root": str(demo.splits_root),
        "csv_dir": str(demo.task.csv_path.parent),
        "prompt_dir": str(demo.task.prompt_dir),
        "LLM": PROMPT_LLM,
        "text_tower": str(ensure_demo_text_tower()),
        "lr": 1e-3,
        "max_epochs": 10,
    }


def task_defaults(task: str) -> dict:
    """CLI hook: :func:`run_defaults` for ``--task demo``, nothing for any other task."""
    return run_defaults() if task == TASK_NAME else {}


def _task_at(root: Path) -> TaskSpec:
    return TaskSpec(
        name=TASK_NAME,
        class_names=CLASS_NAMES,
        csv_path=root / "dataset_csv" / f"{TASK_NAME}.csv",
        prompt_dir=root / "text_prompt",
        label_dict={c: i for i, c in enumerate(CLASS_NAMES)},
    )


def _demo_at(root: Path) -> DemoData:
    return DemoData(
        root=root, data_root_dir=root / "features", task=_task_at(root), splits_root=root / "splits"
    )


def _marker_ok(root: Path, seed: int, version: int = GENERATOR_VERSION) -> bool:
    try:
        marker = json.loads((root / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return marker.get("version") == version and marker.get("seed") == seed


def write_marker(root: Path, seed: int, version: int = GENERATOR_VERSION) -> None:
    """The marker file of a generated tree (write it last: it says the tree is complete)."""
    atomic_write_text(root / MARKER, json.dumps({"version": version, "seed": seed}) + "\n")


def ensure_generated_tree(
    root: Path, seed: int, version: int, generate: Callable[[Path, int], object], force: bool = False
) -> None:
    """Make sure ``root`` holds a complete tree of generator ``version`` and ``seed``.

    When absent, outdated or ``force``: ``generate(tmp, seed)`` writes it into a temporary sibling folder
    (ending with :func:`write_marker`), which is renamed into place, so concurrent callers and interrupted
    runs never see a partial tree.
    """
    if not force and _marker_ok(root, seed, version):
        return
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        generate(tmp, seed)
        if not force and _marker_ok(root, seed, version):  # another process finished first
            return
        _swap_into_place(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_demo_data(root: str | Path | None = None, seed: int = 0, force: bool = False) -> DemoData:
    """Return the demo data under ``root``, generating it first when absent, outdated or ``force``
    (atomically, :func:`ensure_generated_tree`)."""
    root = Path(root) if root is not None else default_demo_root()
    ensure_generated_tree(root, seed, GENERATOR_VERSION, generate_demo_data, force)
    return _demo_at(root)


def _swap_into_place(tmp: Path, root: Path) -> None:
    old = None
    if root.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
        with contextlib.suppress(FileNotFoundError):
            os.replace(root, old / "tree")
    try:
        os.replace(tmp, root)
    except OSError:
        if not root.exists():
            raise
        # Someone else renamed a fresh tree into place in between; theirs is as good as ours.
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------------ generation


def _patients(rng: np.random.Generator) -> pd.DataFrame:
    """Dataset table: per class 16 slides from 13 patients (3 with two slides); ~1/4 at level0_mag 20."""
    rows = []
    case_no = slide_no = 0
    for label in CLASS_NAMES:
        n_cases = SLIDES_PER_CLASS - TWO_SLIDE_PATIENTS_PER_CLASS
        two_slides = set(rng.choice(n_cases, TWO_SLIDE_PATIENTS_PER_CLASS, replace=False).tolist())
        for i in range(n_cases):
            case_id = f"demo_case_{case_no:03d}"
            case_no += 1
            for _ in range(2 if i in two_slides else 1):
                level0 = 20 if rng.random() < 0.25 else 40
                rows.append((case_id, f"demo_slide_{slide_no:03d}", label, level0))
                slide_no += 1
    return pd.DataFrame(rows, columns=["case_id", "slide_id", "label", "level0_mag"])


def _class_directions(rng: np.random.Generator) -> np.ndarray:
    """Orthonormal class directions [C, D]."""
    q, _ = np.linalg.qr(rng.standard_normal((FEATURE_DIM, len(CLASS_NAMES))))
    return q.T.astype(np.float32)


def slide_arrays(
    rng: np.random.Generator,
    level0_mag: int,
    direction: np.ndarray,
    signal_20x: float = SIGNAL_20X,
    signal_5x: float = SIGNAL_5X,
    n5_range: tuple[int, int] = (20, 61),
):
    """(x5, coords5, x20, coords20) of one synthetic slide: ``signal_20x * direction`` planted in the
    signal 20x children, ``signal_5x * direction`` in the tumour 5x patches; ``n5_range`` [low, high)."""
    size5 = patch_px(level0_mag, 5)
    step20 = patch_px(level0_mag, 20)
    n5 = int(rng.integers(*n5_range))
    width = int(np.ceil(np.sqrt(n5 * 1.6)))
    height = int(np.ceil(n5 / width * 1.3)) + 1
    cells = rng.choice(width * height, n5, replace=False)
    origin = rng.integers(0, 4000, size=2) // 16 * 16
    coords5 = origin + np.stack([cells % width, cells // width], axis=1) * size5

    offset = rng.normal(0, SLIDE_OFFSET_STD, FEATURE_DIM).astype(np.float32)
    x5 = rng.standard_normal((n5, FEATURE_DIM)).astype(np.float32) + offset
    tumour = rng.random(n5) < 0.4
    x5[tumour] += signal_5x * direction

    sub = np.stack(np.meshgrid(np.arange(4), np.arange(4), indexing="ij"), axis=-1).reshape(-1, 2)
    coords20, signal = [], []
    for i in range(n5):
        draw = rng.random()
        n_children = 0 if draw < 0.1 else (16 if draw > 0.35 else int(rng.integers(1, 16)))
        picked = sub[np.sort(rng.choice(16, n_children, replace=False))]
        coords20.append(coords5[i] + picked * step20)
        signal.append(tumour[i] & (rng.random(n_children) < 0.75))
    n_orphans = int(rng.integers(0, 4))  # 20x tissue beyond every 5x patch (right of the grid)
    orphan_rows = rng.choice(height, n_orphans, replace=False)
    coords20.append(origin + np.stack([np.full(n_orphans, width + 1), orphan_rows], axis=1) * size5)
    signal.append(np.zeros(n_orphans, dtype=bool))
    coords20 = np.concatenate(coords20).astype(np.int64)
    signal = np.concatenate(signal)
    x20 = rng.standard_normal((coords20.shape[0], FEATURE_DIM)).astype(np.float32) + offset
    x20[signal] += signal_20x * direction
    order = rng.permutation(coords20.shape[0])  # 20x files are not ordered by parent
    return x5, coords5.astype(np.int64), x20[order], coords20[order]


def generate_demo_data(root: Path, seed: int = 0) -> DemoData:
    """Write the whole demo tree under ``root`` (which should be empty); deterministic in ``seed``."""
    root = Path(root)
    demo = _demo_at(root)
    rng = np.random.default_rng(np.random.SeedSequence([GENERATOR_VERSION, int(seed) & 0xFFFFFFFF]))
    table = _patients(rng)
    directions = _class_directions(rng)
    layout = demo.layout
    for slide_id, label, level0 in zip(table["slide_id"], table["label"], table["level0_mag"]):
        x5, coords5, x20, coords20 = slide_arrays(rng, int(level0), directions[CLASS_NAMES.index(label)])
        write_patch_file(layout.low_file(slide_id), x5, coords5)
        write_patch_file(layout.high_file(slide_id), x20, coords20)
        build_slide_hierarchy(layout, slide_id, int(level0), seed=seed)
    demo.task.csv_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(demo.task.csv_path, table.to_csv(index=False, lineterminator="\n"))
    splits = make_few_shot_splits(table, FEW_SHOT_NUM, k=NUM_FOLDS, seed=seed, val_frac=0.5, test_frac=0.5)
    for fold, split in enumerate(splits):
        write_split(demo.split_path(fold), split)
    atomic_write_text(demo.task.prompt_file(PROMPT_LLM), json.dumps(DEMO_PROMPTS, indent=2) + "\n")
    write_marker(root, seed)
    return demo


# Per class: 4 coarse (5x) descriptions, then 4 groups of 3 fine (20x) ones; group j refines coarse j.
DEMO_PROMPTS: dict[str, dict[str, str]] = {
    "solid": {
        "solid sheets": "tumour cells grow in broad sheets without forming glands",
        "high cellularity": "densely packed tumour nuclei fill the field",
        "geographic necrosis": "large areas of dead tumour tissue",
        "pushing border": "the tumour edge is smooth and well demarcated",
        "polygonal cells": "cells with distinct borders and ample cytoplasm",
        "absent lumens": "no luminal spaces between adjacent tumour cells",
        "scant stroma": "thin strands of connective tissue between cell nests",
        "crowded nuclei": "overlapping enlarged nuclei with little cytoplasm",
        "frequent mitoses": "many dividing cells visible in each field",
        "prominent nucleoli": "large red nucleoli inside vesicular nuclei",
        "nuclear debris": "fragments of karyorrhectic nuclei in necrotic areas",
        "ghost cells": "outlines of dead cells without staining nuclei",
        "eosinophilic necrosis": "pink granular material replacing viable tissue",
        "compressed stroma": "fibrous tissue squeezed at the tumour margin",
        "smooth contour": "rounded tumour outline without spiculation",
        "peritumoral lymphocytes": "a band of lymphocytes along the border",
    },
    "glandular": {
        "gland formation": "tumour cells line tubular or acinar spaces",
        "mucin production": "pools of pale blue mucus within or around glands",
        "desmoplastic stroma": "reactive fibrous tissue surrounds the glands",
        "infiltrative edge": "glands invade the surrounding tissue irregularly",
        "tubular lumens": "open round spaces lined by one cell layer",
        "cribriform pattern": "sieve-like glands with multiple punched-out lumens",
        "columnar cells": "tall cells with basal elongated nuclei",
        "intracellular mucin": "mucin vacuoles pushing nuclei to the side",
        "extracellular mucin pools": "lakes of mucus with floating cell clusters",
        "goblet-like cells": "cells distended by a single mucin droplet",
        "loose fibroblasts": "spindle cells in a pale myxoid background",
        "collagen bundles": "dense pink collagen between tumour glands",
        "stromal inflammation": "scattered lymphocytes within the fibrous stroma",
        "single-file invasion": "tumour cells invading in narrow cords",
        "angulated glands": "small irregular glands with sharp corners",
        "perineural spread": "tumour glands wrapping around nerve fibres",
    },
    "papillary": {
        "papillary fronds": "finger-like projections lined by tumour cells",
        "fibrovascular cores": "each projection has a central vessel and stroma",
        "foamy macrophages": "clusters of lipid-laden macrophages in the cores",
        "psammoma bodies": "laminated calcified spheres among the papillae",
        "branching papillae": "projections that split into secondary fronds",
        "cuboidal lining": "a single layer of small cube-shaped cells",
        "nuclear grooves": "longitudinal folds in oval nuclei",
        "central capillary": "a thin-walled vessel in the middle of a frond",
        "oedematous core": "loose pale stroma within the papilla",
        "hyalinised core": "glassy pink collagen in the papillary axis",
        "lipid-laden cells": "macrophages with bubbly clear cytoplasm",
        "haemosiderin deposits": "brown pigment from old bleeding in the cores",
        "cholesterol clefts": "needle-shaped empty spaces in the stroma",
        "concentric lamination": "onion-skin layers of calcium deposits",
        "dystrophic calcification": "purple granular calcium in degenerate tissue",
        "calcified fragments": "broken pieces of mineral scattered among cells",
    },
}
