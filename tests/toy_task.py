"""A toy 2-class task on disk and a tiny registered model, shared by the training and CLI tests.

The model is a mean-pooling linear classifier registered under a test-only name; the data are small
H5 files written in ``tmp_path`` in the published formats.
"""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import torch
from torch import nn

from datasets.bag import SlideBag
from datasets.features import FeatureLayout, write_patch_file
from datasets.splits import Split, split_csv_path, write_split
from models import registry
from models.base import ModelOutput, SlideClassifier
from training.config import RunConfig

TEST_MODEL = "test_meanpool"
DIM = 8
TASK = "toy"
CLASSES = ("A", "B")


# ------------------------------------------------------------------------------------------- helpers
class MeanPoolLinear(SlideClassifier):
    """Mean of 5x features and of real 20x children, scored against per-class "text" vectors.

    ``precompute`` returns the normalised text matrix (slide-independent, like text features).
    """

    def __init__(self, dim: int, num_classes: int, drop_out: bool = False):
        super().__init__()
        self.num_classes = num_classes
        self.proj = nn.Linear(2 * dim, dim)
        self.text = nn.Parameter(torch.randn(num_classes, dim) * 0.1)
        self.frozen = nn.Parameter(torch.ones(1), requires_grad=False)
        self.dropout = nn.Dropout(0.25 if drop_out else 0.0)
        self.precompute_calls = 0
        self.seen_caches: list[object] = []

    def precompute(self):
        self.precompute_calls += 1
        return self.text / self.text.norm(dim=1, keepdim=True)

    def forward(self, bag: SlideBag, cache=None) -> ModelOutput:
        self.seen_caches.append(cache)
        text = cache if cache is not None else self.text / self.text.norm(dim=1, keepdim=True)
        mask = bag.child_mask[..., None].float()
        x20 = (bag.x20 * mask).sum(dim=(0, 1)) / mask.sum().clamp(min=1)
        h = self.proj(self.dropout(torch.cat([bag.x5.mean(0), x20])))
        logits = (h @ text.T)[None] * 5
        return ModelOutput(logits=logits, aux_loss=0.01 * self.text.pow(2).mean())


def _build_test_model(spec):
    return MeanPoolLinear(spec.feature_dim, spec.num_classes, spec.dropout)


if TEST_MODEL not in registry._BUILDERS:
    registry.register_model(TEST_MODEL)(_build_test_model)


def write_slide(
    layout: FeatureLayout, slide_id: str, label: int, rng: np.random.Generator, dim: int = DIM
) -> None:
    """One slide: N5 5x patches (published-format hierarchical file, rows aligned with the 5x file)."""
    n5 = int(rng.integers(2, 5))
    shift = 1.5 if label == 1 else -1.5
    x5 = rng.normal(shift, 1.0, size=(n5, dim)).astype(np.float32)
    coords5 = np.stack([np.arange(n5) * 2048, np.zeros(n5)], axis=1).astype(np.int64)
    x20 = np.zeros((n5, 16, dim), dtype=np.float32)
    coords20 = np.zeros((n5, 16, 2), dtype=np.int64)
    for i in range(n5):
        m = int(rng.integers(1, 17))
        x20[i, :m] = rng.normal(shift, 1.0, size=(m, dim))
        coords20[i, :m] = coords5[i] + np.stack([np.arange(m) % 4 * 512, np.arange(m) // 4 * 512], axis=1)
    write_patch_file(layout.low_file(slide_id), x5, coords5)
    layout.hier_dir.mkdir(parents=True, exist_ok=True)
    with h5py.File(layout.hier_file(slide_id), "w") as f:
        f.create_dataset("features", data=x20)
        f.create_dataset("coords", data=coords20)


def make_toy_data(root, k: int = 3, shots: int = 2, n_slides: int = 12, seed: int = 0) -> dict:
    """Dataset CSV, features and k split files for the 2-class task ``toy``; returns CLI paths."""
    rng = np.random.default_rng(seed)
    slides = [f"slide_{i:02d}" for i in range(n_slides)]
    labels = [i % 2 for i in range(n_slides)]
    csv_dir = root / "dataset_csv"
    csv_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "case_id": [f"case_{i:02d}" for i in range(n_slides)],
            "slide_id": slides,
            "label": [CLASSES[v] for v in labels],
            "level0_mag": 40,
        }
    ).to_csv(csv_dir / f"{TASK}.csv", index=False)
    layout = FeatureLayout(root / "features", TASK, "toyfe")
    for s, y in zip(slides, labels):
        write_slide(layout, s, y, rng)
    for fold in range(k):
        order = rng.permutation(n_slides)
        by_class = {c: [slides[i] for i in order if labels[i] == c] for c in (0, 1)}
        split = Split(
            train=by_class[0][:shots] + by_class[1][:shots],
            val=by_class[0][shots : shots + 2] + by_class[1][shots : shots + 2],
            test=by_class[0][shots + 2 :] + by_class[1][shots + 2 :],
        )
        write_split(split_csv_path(root / "splits", TASK, shots, fold), split)
    return {
        "root": root,
        "slides": slides,
        "labels": labels,
        "layout": layout,
        "k": k,
        "shots": shots,
        "argv": [
            "--task", TASK, "--model_type", TEST_MODEL, "--feature_extractor", "toyfe", "--feature_dim", str(DIM),
            "--data_root_dir", str(root / "features"), "--csv_dir", str(csv_dir), "--prompt_dir", str(root / "prompts"),
            "--splits_root", str(root / "splits"), "--few_shot_num", str(shots), "--k", str(k),
            "--device", "cpu", "--quiet", "--max_epochs", "3", "--lr", "1e-2",
        ],
    }  # fmt: skip


def toy_config(data: dict, results_dir, **overrides) -> RunConfig:
    from training.config import parse_config

    config = parse_config([*data["argv"], "--results_dir", str(results_dir)])
    for name, value in overrides.items():
        setattr(config, name, value)
    return config


def toy_bags(n: int = 6, seed: int = 0) -> list[SlideBag]:
    g = torch.Generator().manual_seed(seed)
    bags = []
    for i in range(n):
        label = i % 2
        x5 = torch.randn(3, DIM, generator=g) + (1.0 if label else -1.0)
        x20 = torch.randn(3, 16, DIM, generator=g) + (1.0 if label else -1.0)
        bags.append(SlideBag(f"s{i}", x5, x20, torch.ones(3, 16, dtype=torch.bool), label=label))
    return bags
