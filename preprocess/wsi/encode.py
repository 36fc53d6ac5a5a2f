"""Batched tile encoding with the image side of a tower, reading ahead on background threads.

Tiles are read from the slide, resized to the tile size when the pyramid level is not exact, passed
through the tower's own ``preprocess`` and stacked into batches on ``workers`` background threads
(:func:`utils.prefetch.prefetch`, a bounded window of ``workers + 1`` batches in flight), while the
main thread runs ``encode_image`` under ``torch.inference_mode`` (and autocast with ``amp``). So slide
decoding overlaps encoding and memory stays at a few batches. Per-stage times are accumulated in
:class:`StageTimes` (reader-thread stages are summed over threads).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from PIL import Image

from models.towers.base import ImageTower
from preprocess.wsi.reader import SlideReader
from preprocess.wsi.tiling import LevelChoice
from utils.amp import autocast
from utils.prefetch import prefetch


@dataclass(frozen=True)
class TileGroup:
    """Tiles of one magnification: level-0 corners ``coords`` [N, 2] read at ``level``."""

    coords: np.ndarray
    level: LevelChoice


@dataclass
class StageTimes:
    """Seconds spent per stage (read/resize/preprocess summed over reader threads)."""

    read: float = 0.0
    resize: float = 0.0
    preprocess: float = 0.0
    wait: float = 0.0  # main thread blocked waiting for the next batch
    encode: float = 0.0
    tiles: int = 0

    def add(self, other: StageTimes) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def read_tile(reader: SlideReader, xy: Sequence[int], level: LevelChoice) -> np.ndarray:
    """The level pixels of one tile: RGB uint8 [read_size, read_size, 3]."""
    return reader.read_region((int(xy[0]), int(xy[1])), level.level, (level.read_size, level.read_size))


def to_patch(region: np.ndarray, level: LevelChoice) -> Image.Image:
    """A read region as a ``patch_size`` RGB PIL image (area-averaged when shrinking from a finer level)."""
    image = Image.fromarray(region)
    if not level.exact:
        method = Image.Resampling.BOX if level.read_size > level.patch_size else Image.Resampling.BILINEAR
        image = image.resize((level.patch_size, level.patch_size), method)
    return image


def tile_image(reader: SlideReader, xy: Sequence[int], level: LevelChoice) -> Image.Image:
    """One tile as the ``patch_size`` image the tower's ``preprocess`` receives."""
    return to_patch(read_tile(reader, xy, level), level)


def _batch_loader(
    reader: SlideReader,
    jobs: list[tuple[np.ndarray, LevelChoice]],
    preprocess: Callable,
    batch_size: int,
    pin: bool,
) -> Callable[[int], tuple[torch.Tensor, StageTimes]]:
    def load(batch: int) -> tuple[torch.Tensor, StageTimes]:
        times = StageTimes()
        tensors = []
        for xy, level in jobs[batch * batch_size : (batch + 1) * batch_size]:
            t0 = time.perf_counter()
            region = read_tile(reader, xy, level)
            t1 = time.perf_counter()
            image = to_patch(region, level)
            t2 = time.perf_counter()
            tensors.append(preprocess(image))
            times.read += t1 - t0
            times.resize += t2 - t1
            times.preprocess += time.perf_counter() - t2
        t3 = time.perf_counter()
        stacked = torch.stack(tensors)
        if pin:
            stacked = stacked.pin_memory()
        times.preprocess += time.perf_counter() - t3
        times.tiles = len(tensors)
        return stacked, times

    return load


def encode_tiles(
    reader: SlideReader,
    groups: Sequence[TileGroup],
    tower: ImageTower,
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    amp: str = "off",
    workers: int = 2,
    progress: Callable[[int], object] | None = None,
) -> tuple[list[np.ndarray], StageTimes]:
    """Encode every tile of every group; returns one float32 [N_g, embed_dim] array per group and the times.

    Args:
        reader: the open slide.
        groups: tiles to encode (e.g. the kept 5x tiles, then the kept 20x tiles).
        tower: image tower (``preprocess``, ``encode_image``); used in eval mode, no gradients.
        batch_size: tiles per forward pass.
        device: where the tower runs (it must already be there).
        amp: ``--amp`` mode (``off``, ``bf16``, ``fp16``: :func:`utils.amp.autocast`); features are
            returned as float32.
        workers: background reader threads (0: read in the main thread, no overlap).
        progress: called with the number of tiles finished after each batch.
    """
    device = torch.device(device)
    jobs = [(xy, g.level) for g in groups for xy in np.asarray(g.coords).reshape(-1, 2)]
    counts = [len(np.asarray(g.coords).reshape(-1, 2)) for g in groups]
    dim = int(tower.embed_dim)
    if not jobs:
        return [np.zeros((0, dim), dtype=np.float32) for _ in groups], StageTimes()
    batches = -(-len(jobs) // batch_size)
    load = _batch_loader(reader, jobs, tower.preprocess, batch_size, pin=device.type == "cuda")
    out = np.empty((len(jobs), dim), dtype=np.float32)
    times = StageTimes()
    stream = prefetch(load, range(batches), depth=workers + 1, workers=workers)
    start = 0
    # closing(): on an error the pending reads are cancelled and the reader threads joined at once
    with contextlib.closing(stream), torch.inference_mode():
        while True:
            t0 = time.perf_counter()
            try:
                images, batch_times = next(stream)
            except StopIteration:
                break
            t1 = time.perf_counter()
            with autocast(amp, device):
                feats = tower.encode_image(images.to(device, non_blocking=True))
            out[start : start + len(images)] = feats.float().cpu().numpy()
            times.wait += t1 - t0
            times.encode += time.perf_counter() - t1
            times.add(batch_times)
            start += len(images)
            if progress is not None:
                progress(len(images))
    bounds = np.cumsum([0, *counts])
    return [out[bounds[i] : bounds[i + 1]] for i in range(len(groups))], times
