"""Input checks shared by every task kind of a run (moved here from :mod:`training.experiment` so that
the survival task kind, which experiment dispatches to, can use them without an import cycle).

All problems are one-line :class:`utils.errors.InputError`; nothing here writes outside the slide-check
cache (:mod:`datasets.slide_check`).
"""

from __future__ import annotations

import os
import time
from functools import partial
from pathlib import Path

import numpy as np

from datasets.features import FeatureLayout
from datasets.slide_check import ORPHAN_WARNING, check_slides
from datasets.splits import Split
from training.config import RunConfig
from utils.errors import InputError
from utils.run_logging import RunLog, bar, progress_enabled


def limit_split(split: Split, config: RunConfig, fold: int) -> Split:
    """Apply ``--label_frac`` (seeded subset of the training items: slides, or cases of a survival task)
    and ``--max_slides`` (first items of each part)."""
    train = list(split.train)
    if config.label_frac < 1.0 and train:
        keep = max(1, int(round(config.label_frac * len(train))))
        rng = np.random.default_rng([config.seed, fold])
        chosen = sorted(rng.choice(len(train), size=keep, replace=False).tolist())
        train = [train[i] for i in chosen]
    parts = {"train": train, "val": list(split.val), "test": list(split.test)}
    limit = config.slide_limit
    if limit is not None:
        parts = {name: ids[:limit] for name, ids in parts.items()}
    return Split(**parts)


def feature_layout(config: RunConfig, task_name: str) -> FeatureLayout:
    """The feature files of task ``task_name`` under ``--data_root_dir`` / ``--feature_extractor`` (and the
    run's magnifications); InputError when its folder does not exist."""
    layout = FeatureLayout(
        Path(config.data_root_dir).expanduser(),
        task_name,
        config.feature_extractor,
        config.low_mag,
        config.high_mag,
    )
    if not layout.root.is_dir():
        raise InputError(
            f"feature folder not found: {layout.root} (from --data_root_dir {config.data_root_dir}, "
            f"--task {task_name}, --feature_extractor {config.feature_extractor})"
        )
    return layout


def check_feature_dim(config: RunConfig, layout: FeatureLayout, slide_id: str) -> None:
    """``--feature_dim`` against the first slide's 5x file (one clear line before the full scan)."""
    import h5py

    try:
        with h5py.File(layout.low_file(slide_id), "r") as f:
            dim = int(f["features"].shape[-1])
    except (OSError, KeyError, ValueError, IndexError):
        return  # the per-slide scan reports unreadable files with their exact problem
    if dim != config.feature_dim:
        raise InputError(
            f"--feature_dim {config.feature_dim} does not match the features of slide {slide_id} "
            f"({layout.low_file(slide_id)}: dimension {dim})"
        )


def check_every_slide(config: RunConfig, layout: FeatureLayout, slides: list[str], load, log: RunLog) -> None:
    """Open every slide once (cached verdicts skip unchanged files); report all problems in one error."""
    start = time.perf_counter()
    progress = partial(
        bar, total=len(slides), desc="checking slides", enabled=progress_enabled(config.quiet), leave=False
    )
    verdicts, cached = check_slides(layout, slides, config.feature_dim, progress=progress, load=load)
    bad = [v for v in verdicts if v.problem is not None]
    orphaned = [v for v in verdicts if v.problem is None and (v.orphan_fraction or 0.0) > ORPHAN_WARNING]
    too_many = [v for v in orphaned if v.orphan_fraction > config.max_orphan_frac]
    log.info(
        f"checked {len(slides)} slides in {time.perf_counter() - start:.1f} s ({cached} unchanged since an "
        f"earlier check): {len(bad) + len(too_many)} with problems"
    )
    for v in orphaned:
        if v not in too_many:
            log.warning(
                f"slide {v.slide_id}: {v.orphan_fraction:.0%} of its 20x patches have no 5x parent "
                "(check level0_mag in the dataset CSV)"
            )
    problems = [f"slide {v.slide_id}: {v.problem}" for v in bad] + [
        f"slide {v.slide_id}: {v.orphan_fraction:.0%} of its 20x patches have no 5x parent, above "
        f"--max_orphan_frac {config.max_orphan_frac} (level0_mag wrong in the dataset CSV?)"
        for v in too_many
    ]
    if len(problems) == 1:
        raise InputError(problems[0])
    if problems:
        for line in problems:
            log.error(line)
        raise InputError(
            f"{len(problems)} of {len(slides)} slides are unusable (each listed above); nothing was trained"
        )


def check_writable(run_dir: Path) -> None:
    """The run folder can be created and written, checked without creating anything (one line)."""
    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(
            f"--results_dir: cannot write the run folder {run_dir} ({existing} is not a writable folder)"
        )
