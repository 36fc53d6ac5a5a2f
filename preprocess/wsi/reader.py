"""Reading whole-slide images through one small interface over the slide libraries.

:func:`open_slide` tries, in order, OpenSlide (PyPI ``openslide-python`` + ``openslide-bin``, required;
SVS, NDPI, MRXS, SCN, generic tiled TIFF, ...) and tiffslide (PyPI ``tiffslide``, optional; TIFF
family), when installed. Both expose the same :class:`SlideReader`: level dimensions and downsamples,
the objective power and microns per pixel when the file records them, and ``read_region`` returning
RGB ``uint8`` with areas outside the slide (and transparent pixels) painted white.

A file that no backend can open raises :class:`SlideError`, a one-line message naming the file.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from utils.errors import InputError

BACKENDS = ("openslide", "tiffslide")
_DOWNSAMPLE_TOLERANCE = 1e-3  # relative slack when matching level downsamples (pyramids round sizes)


class SlideError(InputError):
    """A slide file cannot be opened or read (corrupt, unsupported format or layout)."""


class SlideReader:
    """A pyramidal slide: ``level_dimensions[l] = (width, height)``, ``level_downsamples[l]`` vs level 0.

    Attributes:
        path: the slide file.
        backend: which library reads it (``openslide`` or ``tiffslide``).
        level_dimensions: (width, height) of every pyramid level, level 0 first.
        level_downsamples: level-0 pixels per level pixel, level 0 first (1.0).
        objective_power: scanner objective magnification of level 0 when recorded, else None.
        mpp: microns per level-0 pixel when recorded, else None.
    """

    path: Path
    backend: str
    level_dimensions: list[tuple[int, int]]
    level_downsamples: list[float]
    objective_power: float | None = None
    mpp: float | None = None

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height)."""
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 [h, w, 3] of ``size = (w, h)`` level pixels whose top-left is ``location`` (level 0)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the file."""

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def best_level_for_downsample(downsamples: Sequence[float], target: float) -> int:
    """The level with the largest downsample ``<= target`` (small tolerance); level 0 if none is finer.

    Reading there and shrinking to the target keeps every detail the target needs (never upsamples).
    """
    best = 0
    for level, ds in enumerate(downsamples):
        if ds <= target * (1 + _DOWNSAMPLE_TOLERANCE) and ds > downsamples[best]:
            best = level
    return best


def _white_composite(rgba: np.ndarray) -> np.ndarray:
    """RGBA -> RGB on white (OpenSlide marks areas outside the scanned region transparent)."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3:4]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha.astype(np.float32) / 255.0
    out = rgb.astype(np.float32) * a + 255.0 * (1.0 - a)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _as_rgb(array: np.ndarray) -> np.ndarray:
    """Any [h, w], [h, w, 1|3|4] uint8-compatible array -> RGB uint8 [h, w, 3]."""
    if array.dtype != np.uint8:
        raise SlideError(f"unsupported pixel type {array.dtype} (expected 8-bit RGB)")
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[-1] == 4:
        return _white_composite(array)
    if array.shape[-1] == 1:
        return np.repeat(array, 3, axis=-1)
    return np.ascontiguousarray(array[..., :3])


def _clipped_read(reader_fn, level_dims: tuple[int, int], x: int, y: int, w: int, h: int) -> np.ndarray:
    """Read level-pixel box (x, y, w, h) with ``reader_fn`` over its in-bounds part; pad white outside."""
    out = np.full((h, w, 3), 255, dtype=np.uint8)
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + w, level_dims[0]), min(y + h, level_dims[1])
    if x1 > x0 and y1 > y0:
        out[y0 - y : y1 - y, x0 - x : x1 - x] = reader_fn(x0, y0, x1 - x0, y1 - y0)
    return out


def _float_or_none(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


# ----------------------------------------------------------------------------------------------- openslide


class OpenSlideReader(SlideReader):
    """OpenSlide backend (thread-safe reads; level-0 coordinates passed through unchanged)."""

    backend = "openslide"

    def __init__(self, path: Path):
        import openslide

        self.path = Path(path)
        self._slide = openslide.OpenSlide(str(path))
        self.level_dimensions = [tuple(map(int, d)) for d in self._slide.level_dimensions]
        self.level_downsamples = [float(d) for d in self._slide.level_downsamples]
        props = self._slide.properties
        self.objective_power = _float_or_none(props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER))
        self.mpp = _float_or_none(props.get(openslide.PROPERTY_NAME_MPP_X))

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        image = self._slide.read_region(
            (int(location[0]), int(location[1])), int(level), tuple(map(int, size))
        )
        return _white_composite(np.asarray(image))

    def close(self) -> None:
        self._slide.close()


# ----------------------------------------------------------------------------------------------- tiffslide


class TiffSlideReader(SlideReader):
    """tiffslide backend; reads are clipped to the level so outside areas are white (not black)."""

    backend = "tiffslide"

    def __init__(self, path: Path):
        import tiffslide

        self.path = Path(path)
        self._slide = tiffslide.TiffSlide(str(path))
        self.level_dimensions = [tuple(map(int, d)) for d in self._slide.level_dimensions]
        self.level_downsamples = [float(d) for d in self._slide.level_downsamples]
        props = self._slide.properties
        self.objective_power = _float_or_none(props.get("tiffslide.objective-power"))
        self.mpp = _float_or_none(props.get("tiffslide.mpp-x"))
        self._lock = threading.Lock()

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        ds = self.level_downsamples[level]
        x, y = int(math.floor(location[0] / ds)), int(math.floor(location[1] / ds))

        def read(x0: int, y0: int, w: int, h: int) -> np.ndarray:
            loc0 = (int(round(x0 * ds)), int(round(y0 * ds)))
            with self._lock:  # the zarr/fsspec stack underneath is not documented as thread-safe
                array = self._slide.read_region(loc0, level, (w, h), as_array=True)
            return _as_rgb(np.asarray(array))

        return _clipped_read(read, self.level_dimensions[level], x, y, int(size[0]), int(size[1]))

    def close(self) -> None:
        self._slide.close()


# ----------------------------------------------------------------------------------------------- thumbnail


def read_downsampled(reader: SlideReader, downsample: float, chunk: int = 1024) -> np.ndarray:
    """The whole slide at ``downsample`` (level-0 px per output px): RGB uint8 [H // ds, W // ds, 3].

    Reads the level with the largest downsample ``<= downsample`` in chunks of ``chunk`` output pixels
    and shrinks each chunk with area averaging, so memory stays at one chunk beyond the output even
    when the slide lacks a coarse level. Output pixel (i, j) covers level-0 pixels
    ``[j * ds, (j + 1) * ds) x [i * ds, (i + 1) * ds)``.
    """
    from PIL import Image

    width, height = reader.dimensions
    out_w, out_h = int(width // downsample), int(height // downsample)
    out = np.full((out_h, out_w, 3), 255, dtype=np.uint8)
    level = best_level_for_downsample(reader.level_downsamples, downsample)
    factor = downsample / reader.level_downsamples[level]  # level px per output px (>= 1)
    for oy in range(0, out_h, chunk):
        for ox in range(0, out_w, chunk):
            cw, ch = min(chunk, out_w - ox), min(chunk, out_h - oy)
            size = (max(1, int(round(cw * factor))), max(1, int(round(ch * factor))))
            region = reader.read_region((int(ox * downsample), int(oy * downsample)), level, size)
            if size != (cw, ch):
                region = np.asarray(Image.fromarray(region).resize((cw, ch), Image.Resampling.BOX))
            out[oy : oy + ch, ox : ox + cw] = region
    return out


# ----------------------------------------------------------------------------------------------- factory

_BACKEND_CLASSES = {"openslide": OpenSlideReader, "tiffslide": TiffSlideReader}


def available_backends() -> list[str]:
    """Backends whose library imports in this environment, in preference order."""
    names = []
    for name in BACKENDS:
        try:
            __import__(name)
        except Exception:  # missing package or missing native library (OSError)
            continue
        names.append(name)
    return names


@contextlib.contextmanager
def _quiet_tifffile() -> Iterator[None]:
    """Silence the warnings tifffile (under tiffslide) logs while probing: a failure is reported once,
    by :class:`SlideError`."""
    logger = logging.getLogger("tifffile")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def open_slide(path: str | Path, backends: Sequence[str] | None = None) -> SlideReader:
    """Open ``path`` with the first backend (of ``backends``, default :data:`BACKENDS`) that reads it.

    The file is probed by reading one pixel, so a file whose header opens but whose data cannot be
    decoded is rejected here. Raises :class:`SlideError` naming the file and each backend's reason.
    """
    path = Path(path)
    if not path.is_file():
        raise SlideError("slide file not found")
    reasons = []
    for name in backends or BACKENDS:
        if name not in _BACKEND_CLASSES:
            raise ValueError(f"unknown slide backend {name!r} (choose from {', '.join(BACKENDS)})")
        try:
            __import__(name)
        except Exception:
            continue
        try:
            with _quiet_tifffile():
                reader = _BACKEND_CLASSES[name](path)
        except Exception as err:
            reasons.append(f"{name}: {_short(err)}")
            continue
        try:
            if reader.level_count == 0 or min(reader.dimensions) <= 0:
                raise SlideError("empty image")
            reader.read_region((0, 0), reader.level_count - 1, (1, 1))
        except Exception as err:
            reader.close()
            reasons.append(f"{name}: {_short(err)}")
            continue
        return reader
    if not reasons:
        raise SlideError("no slide reader installed (pip install openslide-python openslide-bin)")
    raise SlideError(f"cannot read slide ({'; '.join(reasons)})")


def _short(err: BaseException, limit: int = 160) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
