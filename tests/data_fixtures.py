"""Small helpers shared by the data-layer tests: tiny slides on disk and byte snapshots."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from datasets.features import FeatureLayout, write_patch_file


def grid_children(corner: tuple[int, int], picks: list[int], step: int = 512) -> np.ndarray:
    """Coordinates of 20x children at positions ``picks`` (0..15, row-major by x then y) of a 4x4 sub-grid."""
    return np.array(
        [[corner[0] + (p % 4) * step, corner[1] + (p // 4) * step] for p in picks], dtype=np.int64
    )


def write_slide(
    layout: FeatureLayout,
    slide_id: str,
    coords5: np.ndarray,
    coords20: np.ndarray,
    dim: int = 8,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Write 5x and 20x files with distinct random features; return ``(x5, x20)``."""
    rng = np.random.default_rng(seed)
    x5 = rng.standard_normal((len(coords5), dim)).astype(np.float32)
    x20 = rng.standard_normal((len(coords20), dim)).astype(np.float32)
    write_patch_file(layout.low_file(slide_id), x5, np.asarray(coords5))
    write_patch_file(layout.high_file(slide_id), x20, np.asarray(coords20))
    return x5, x20


def standard_slide(layout: FeatureLayout, slide_id: str = "s1", dim: int = 8, seed: int = 0):
    """Three 5x patches at level0_mag 40: #0 with 3 children, #1 with none, #2 with 16; plus one orphan."""
    coords5 = np.array([[0, 0], [2048, 0], [0, 2048]], dtype=np.int64)
    coords20 = np.concatenate(
        [
            grid_children((0, 0), [0, 5, 15]),
            grid_children((0, 2048), list(range(16))),
            np.array([[8192, 8192]], dtype=np.int64),  # no parent
        ]
    )
    x5, x20 = write_slide(layout, slide_id, coords5, coords20, dim=dim, seed=seed)
    return coords5, coords20, x5, x20


def write_published_hier(path: Path, features: np.ndarray, coords: np.ndarray) -> None:
    """A hierarchical file in the published layout (no parent_index / child_mask)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=features)
        f.create_dataset("coords", data=coords)


def snapshot(root: Path) -> dict[str, bytes]:
    """Bytes of every file under ``root`` (to prove inputs were not modified)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def edit_h5(path: Path, key: str, value) -> None:
    """Replace dataset ``key`` of an HDF5 file (test set-up only)."""
    with h5py.File(path, "a") as f:
        if key in f:
            del f[key]
        if value is not None:
            f.create_dataset(key, data=value)
