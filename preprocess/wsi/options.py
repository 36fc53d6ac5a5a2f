"""The tiling and encoding flags of every CLI that extracts features from raw slides, declared once.

A light module (no torch, no h5py), so that a CLI can build its parser before importing the pipeline.
:class:`preprocess.wsi.pipeline.ExtractOptions` takes its tile defaults from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from utils.errors import InputError
from utils.flags import flag


@dataclass(frozen=True)
class TileFlags:
    """How raw slides are tiled and encoded (``--level0-mag``, ``--min-tissue``, ``--batch-size``,
    ``--workers``)."""

    level0_mag: float | None = flag(
        "--level0-mag", default=None, type=float, group="tiling", help="level-0 magnification of every slide",
        default_text="the CSV's level0_mag, else the slide's metadata",
    )  # fmt: skip
    min_tissue: float = flag(
        "--min-tissue", default=0.25, group="tiling", help="minimum tissue fraction of a kept tile"
    )
    batch_size: int = flag("--batch-size", default=64, group="tiling", help="tiles per forward pass")
    workers: int = flag(
        "--workers", default=2, group="tiling", help="background tile-reader threads (0: inline)"
    )

    def check(self) -> TileFlags:
        """``self``, or one :class:`InputError` line for a bad value."""
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.workers < 0:
            raise InputError(f"--workers must be 0 or more, got {self.workers}")
        if not 0 < self.min_tissue <= 1:
            raise InputError(f"--min-tissue must be in (0, 1], got {self.min_tissue}")
        if self.level0_mag is not None and not self.level0_mag > 0:
            raise InputError(f"--level0-mag must be positive, got {self.level0_mag}")
        return self
