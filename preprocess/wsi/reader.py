"""Reading whole-slide images through one small interface, whatever library is installed.

:func:`open_slide` tries, in order, OpenSlide (PyPI ``openslide-python`` + ``openslide-bin``; SVS, NDPI,
MRXS, SCN, generic tiled TIFF, ...), tiffslide (PyPI ``tiffslide``; TIFF family) and a plain tifffile
pyramid reader (always available; tiled or stripped TIFF pyramids, as written by the tests). Every
backend exposes the same :class:`SlideReader`: level dimensions and downsamples, the objective power
and microns per pixel when the file records them, and ``read_region`` returning RGB ``uint8`` with
areas outside the slide (and transparent pixels) painted white.

A file that no backend can open raises :class:`SlideError`, a one-line message naming the file.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from utils.errors import InputError

BACKENDS = ("openslide", "tiffslide", "tifffile")
_DOWNSAMPLE_TOLERANCE = 1e-3  # relative slack when matching level downsamples (pyramids round sizes)
_MAX_STRIPPED_BYTES = 1 << 29  # the tifffile reader decodes a stripped (untiled) level whole: cap it


class SlideError(InputError):
    """A slide file cannot be opened or read (corrupt, unsupported format or layout)."""


class SlideReader:
    """A pyramidal slide: ``level_dimensions[l] = (width, height)``, ``level_downsamples[l]`` vs level 0.

    Attributes:
        path: the slide file.
        backend: which library reads it (``openslide``, ``tiffslide`` or ``tifffile``).
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


# ----------------------------------------------------------------------------------------------- tifffile


class TifffileReader(SlideReader):
    """Plain tifffile pyramid reader: decodes only the TIFF tiles a region touches.

    Levels are the first image series' pyramid levels (SubIFDs, SVS or OME layouts) or, for a file
    of plain top-level pages, every RGB page that is smaller than the previous one. Objective power and
    microns per pixel are parsed from an Aperio description (``AppMag``, ``MPP``), OME-XML
    (``NominalMagnification``, ``PhysicalSizeX``) or the resolution tags.
    """

    backend = "tifffile"

    def __init__(self, path: Path):
        import tifffile

        self.path = Path(path)
        self._tif = tifffile.TiffFile(str(path))
        try:
            self._pages = self._find_levels()
            base_w = self._pages[0].imagewidth
            base_h = self._pages[0].imagelength
            self.level_dimensions = [(int(p.imagewidth), int(p.imagelength)) for p in self._pages]
            self.level_downsamples = [(base_w / w + base_h / h) / 2.0 for (w, h) in self.level_dimensions]
            self.objective_power, self.mpp = self._parse_metadata()
        except BaseException:
            self._tif.close()
            raise
        self._file_lock = threading.Lock()
        self._full_cache: dict[int, np.ndarray] = {}

    def _find_levels(self) -> list:
        if not self._tif.series:
            raise SlideError("no image in the file")
        series = self._tif.series[0]
        pages = [level.keyframe for level in series.levels]
        if len(pages) == 1:  # plain multi-page pyramid: successive smaller pages with the same samples
            first = pages[0]
            for page in self._tif.pages[1:]:
                page = page.keyframe if hasattr(page, "keyframe") else page
                if page.samplesperpixel != first.samplesperpixel or page.imagewidth >= pages[-1].imagewidth:
                    continue
                pages.append(page)
        for page in pages:
            if page.planarconfig == 2 and page.samplesperpixel > 1:
                raise SlideError("unsupported TIFF layout (separate colour planes)")
            if page.dtype != np.uint8 or page.samplesperpixel not in (1, 3, 4):
                raise SlideError(
                    f"unsupported image ({page.samplesperpixel} samples of {page.dtype}; expected 8-bit RGB)"
                )
            if not page.is_tiled and page.imagewidth * page.imagelength * 3 > _MAX_STRIPPED_BYTES:
                raise SlideError(
                    f"a {page.imagewidth}x{page.imagelength} level is stored in strips, not tiles; convert the "
                    "slide to a tiled pyramid (e.g. vips tiffsave --tile --pyramid) or install openslide"
                )
        return pages

    def _parse_metadata(self) -> tuple[float | None, float | None]:
        page = self._pages[0]
        text = page.description or ""
        power = mpp = None
        if match := re.search(r"AppMag\s*=\s*([0-9.]+)", text):
            power = _float_or_none(match.group(1))
        if match := re.search(r"\bMPP\s*=\s*([0-9.]+)", text):
            mpp = _float_or_none(match.group(1))
        if power is None and (match := re.search(r'NominalMagnification="([0-9.]+)"', text)):
            power = _float_or_none(match.group(1))
        if mpp is None and (match := re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', text)):
            mpp = _float_or_none(match.group(1))
        if mpp is None:
            tags = page.tags
            res, unit = tags.get("XResolution"), tags.get("ResolutionUnit")
            if res is not None and unit is not None and int(unit.value) in (2, 3):
                num, den = res.value
                per_unit = _float_or_none(num / den) if den else None
                if per_unit is not None and per_unit > 1:
                    mpp = (25400.0 if int(unit.value) == 2 else 10000.0) / per_unit
        return power, mpp

    def _read_tiles(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        page = self._pages[level]
        if not page.is_tiled:  # stripped page (small levels): decode whole, keep it
            if level not in self._full_cache:
                with self._file_lock:
                    self._full_cache[level] = _as_rgb(page.asarray())
            return self._full_cache[level][y : y + h, x : x + w]
        tw, th = page.tilewidth, page.tilelength
        tiles_across = -(-page.imagewidth // tw)
        out = np.empty((h, w, 3), dtype=np.uint8)
        fh = self._tif.filehandle
        for ty in range(y // th, (y + h - 1) // th + 1):
            for tx in range(x // tw, (x + w - 1) // tw + 1):
                index = ty * tiles_across + tx
                with self._file_lock:
                    fh.seek(page.dataoffsets[index])
                    data = fh.read(page.databytecounts[index])
                segment, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
                if segment is None:  # tile absent from the file (sparse TIFF): background
                    tile = np.full((th, tw, 3), 255, dtype=np.uint8)
                else:
                    tile = _as_rgb(np.asarray(segment).reshape(th, tw, -1))
                # overlap of this tile with the requested box, in level pixels
                ox0, oy0 = max(x, tx * tw), max(y, ty * th)
                ox1, oy1 = min(x + w, (tx + 1) * tw), min(y + h, (ty + 1) * th)
                out[oy0 - y : oy1 - y, ox0 - x : ox1 - x] = tile[
                    oy0 - ty * th : oy1 - ty * th, ox0 - tx * tw : ox1 - tx * tw
                ]
        return out

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        ds = self.level_downsamples[level]
        x, y = int(math.floor(location[0] / ds)), int(math.floor(location[1] / ds))
        reader = lambda x0, y0, w, h: self._read_tiles(level, x0, y0, w, h)  # noqa: E731
        return _clipped_read(reader, self.level_dimensions[level], x, y, int(size[0]), int(size[1]))

    def close(self) -> None:
        self._tif.close()


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

_BACKEND_CLASSES = {"openslide": OpenSlideReader, "tiffslide": TiffSlideReader, "tifffile": TifffileReader}


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
    """Silence tifffile's logged warnings while probing: a failure is reported once, by :class:`SlideError`."""
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
