"""HDF5 feature files: where they live, how to write them, and loading one slide as a :class:`SlideBag`.

Layout under ``DATA_ROOT/<task>_<extractor>/`` (docs/formats.md §2):

- ``<extractor>_5x/<slide>.h5``: ``features`` [N5, D], ``coords`` [N5, 2] (level-0 top-left corners).
- ``<extractor>_20x/<slide>.h5``: ``features`` [N20, D], ``coords`` [N20, 2].
- ``hierarchical_<extractor>_5x_20x/<slide>.h5``: ``features`` [R, M, D], ``coords`` [R, M, 2]; row i
  holds the (zero-padded) 20x children of one 5x patch. Files written here also hold
  ``parent_index`` [R] (the 5x row of each hierarchical row) and ``child_mask`` [R, M]; published
  files without them are aligned by row order, which needs R == N5.

The loaded bag is aligned by 5x row: ``x20[i]`` holds the children of ``x5[i]`` (all padding when the
5x patch has none), as the hierarchical edges of the paper's graph (Sec. 3.2) require.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from datasets.hierarchy import LinkResult, gather_children, hierarchical_rows
from utils.atomic_io import atomic_path
from utils.errors import InputError, one_line
from utils.magnification import magnification_label
from utils.safe_names import check_name, contained, distinct_outputs

if TYPE_CHECKING:  # torch is imported only when a bag is built, so preprocessing CLIs start fast
    from datasets.bag import SlideBag

HIER_FORMAT_VERSION = 1
_BLOCK_ROWS = 1024  # hierarchical rows read/written per block (bounds transient memory)


@dataclass(frozen=True)
class FeatureLayout:
    """Paths of one task's feature files for one extractor.

    ``low_mag``/``high_mag`` may be written ``5x``, ``5`` or ``5.0``; folder names always use the
    ``5x`` form (``plip_5x``, ``hierarchical_plip_5x_20x``).
    """

    data_root_dir: Path
    task_name: str
    extractor: str
    low_mag: str = "5x"
    high_mag: str = "20x"

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_root_dir", Path(self.data_root_dir))
        object.__setattr__(self, "low_mag", magnification_label(self.low_mag, "low magnification"))
        object.__setattr__(self, "high_mag", magnification_label(self.high_mag, "high magnification"))
        check_name(str(self.task_name), "task name", "feature folder <task>_<extractor>")

    @property
    def root(self) -> Path:
        return self.data_root_dir / f"{self.task_name}_{self.extractor}"

    @property
    def low_dir(self) -> Path:
        return self.root / f"{self.extractor}_{self.low_mag}"

    @property
    def high_dir(self) -> Path:
        return self.root / f"{self.extractor}_{self.high_mag}"

    @property
    def hier_dir(self) -> Path:
        return self.root / f"hierarchical_{self.extractor}_{self.low_mag}_{self.high_mag}"

    def low_file(self, slide_id: str) -> Path:
        return self.low_dir / _file_name(slide_id)

    def high_file(self, slide_id: str) -> Path:
        return self.high_dir / _file_name(slide_id)

    def hier_file(self, slide_id: str) -> Path:
        return self.hier_dir / _file_name(slide_id)

    def output_files(self, slide_id: str, kinds: tuple[str, ...] = ("high", "low")) -> dict[str, Path]:
        """``{kind: resolved path}`` of files about to be written for ``slide_id`` (kinds ``low``,
        ``high``, ``hier``): each stays under ``data_root_dir`` and no two are the same file (a symbolic
        link or equal magnification labels cannot make one output overwrite another); else InputError."""
        named = {"low": self.low_file, "high": self.high_file, "hier": self.hier_file}
        paths = {}
        for kind in kinds:
            path = named[kind](slide_id)
            paths[kind] = contained(self.data_root_dir, str(path.relative_to(self.data_root_dir)))
        distinct_outputs({self._kind_label(k): p for k, p in paths.items()})
        return paths

    def _kind_label(self, kind: str) -> str:
        return {"low": self.low_mag, "high": self.high_mag, "hier": "hierarchical"}[kind]


def _file_name(slide_id: str) -> str:
    """``<slide>.h5``; a slide id that cannot be one file name is one InputError line."""
    return f"{check_name(slide_id, 'slide id', 'feature file name')}.h5"


def list_slides(folder: Path) -> list[str]:
    """Sorted slide ids (file stems) of the ``*.h5`` files in ``folder`` (hidden temp files ignored)."""
    return sorted(p.stem for p in Path(folder).glob("*.h5") if not p.name.startswith("."))


def missing_feature_slides(layout: FeatureLayout, slide_ids: list[str]) -> list[str]:
    """Slides (in the given order) lacking the 5x file or the hierarchical file needed for training."""
    return [s for s in slide_ids if not (layout.low_file(s).is_file() and layout.hier_file(s).is_file())]


# ----------------------------------------------------------------------------------------------- writing


def write_patch_file(
    path: Path, features: np.ndarray, coords: np.ndarray, attrs: dict[str, Any] | None = None
) -> None:
    """Atomically write a 5x or 20x file: ``features`` [N, D] and ``coords`` [N, 2] (int64)."""
    features = np.asarray(features)
    coords = np.asarray(coords, dtype=np.int64)
    if features.ndim != 2 or coords.shape != (features.shape[0], 2):
        raise ValueError(f"features {list(features.shape)} / coords {list(coords.shape)} do not match")
    with atomic_path(path, suffix=".h5.tmp") as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("features", data=features)
            f.create_dataset("coords", data=coords)
            for key, value in (attrs or {}).items():
                f.attrs[key] = value


def write_hierarchical_file(
    path: Path,
    features20: np.ndarray,
    coords20: np.ndarray,
    link: LinkResult,
    attrs: dict[str, Any] | None = None,
    block_rows: int = _BLOCK_ROWS,
) -> int:
    """Atomically write the hierarchical file of one slide from its 20x arrays and links.

    Writes ``features`` [R, M, D] (dtype of ``features20``), ``coords`` [R, M, 2], ``parent_index`` [R]
    and ``child_mask`` [R, M], one row per 5x patch with a child, in blocks of ``block_rows`` rows so
    memory stays at one block beyond the inputs. Returns R.
    """
    features20 = np.asarray(features20)
    coords20 = np.asarray(coords20, dtype=np.int64)
    parent_index, child_index = hierarchical_rows(link)
    rows, width = child_index.shape
    dim = features20.shape[1]
    with atomic_path(path, suffix=".h5.tmp") as tmp:
        with h5py.File(tmp, "w") as f:
            feats = f.create_dataset("features", shape=(rows, width, dim), dtype=features20.dtype)
            coords = f.create_dataset("coords", shape=(rows, width, 2), dtype=np.int64)
            for start in range(0, rows, block_rows):
                block = child_index[start : start + block_rows]
                feats[start : start + len(block)] = gather_children(features20, block)
                coords[start : start + len(block)] = gather_children(coords20, block)
            f.create_dataset("parent_index", data=parent_index.astype(np.int64))
            f.create_dataset("child_mask", data=child_index >= 0)
            f.attrs["max_children"] = int(link.max_children)
            f.attrs["format_version"] = HIER_FORMAT_VERSION
            for key, value in (attrs or {}).items():
                f.attrs[key] = value
    return rows


def hier_file_is_complete(path: Path) -> bool:
    """True when ``path`` exists, opens as HDF5 and holds ``features`` and ``coords`` (a finished output)."""
    if not Path(path).is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            return "features" in f and "coords" in f
    except (OSError, ValueError):
        return False


# ----------------------------------------------------------------------------------------------- reading


def open_h5(path: Path, what: str) -> h5py.File:
    """Open an HDF5 input for reading; one-line :class:`InputError` when missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"missing {what} file {path}")
    try:
        return h5py.File(path, "r")
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot open {what} file as HDF5 ({err})") from None


def require_dataset(f: h5py.File, key: str, ndim: int, path: Path) -> h5py.Dataset:
    """Dataset ``key`` of ``f`` with ``ndim`` dimensions whose declared size the file can hold
    (:func:`check_declared_size`), else a one-line :class:`InputError`."""
    if key not in f or not isinstance(f[key], h5py.Dataset):
        raise InputError(f"{path}: missing dataset '{key}' (found: {', '.join(sorted(f.keys())) or 'none'})")
    ds = f[key]
    if ds.ndim != ndim:
        raise InputError(f"{path}: '{key}' should have {ndim} dimensions, has shape {list(ds.shape)}")
    check_declared_size(ds, path)
    return ds


# Largest expansion of a deflate (gzip) stream: a zlib block cannot expand more than ~1032:1; the margin
# covers the per-chunk headers. A chunk holding more than this many times its stored bytes is not genuine.
_MAX_DEFLATE_RATIO = 1100
_SIZE_NEUTRAL_FILTERS = {h5py.h5z.FILTER_SHUFFLE, h5py.h5z.FILTER_FLETCHER32}


def check_declared_size(ds: h5py.Dataset, path: Path) -> None:
    """Refuse a dataset whose declared shape and dtype cannot be stored in its file, reading no data.

    HDF5 lets a tiny file declare any shape: unwritten storage reads as the fill value, so a 2 KB file can
    claim 10^8 rows and cost gigabytes when read. Checked from the file's metadata only:

    * contiguous (or compact) storage: the allocated bytes equal the declared bytes and lie inside the file;
    * chunked storage: every chunk the shape needs is allocated; the allocated bytes fit in the file; without
      a compression filter they cover the declared bytes, with deflate (gzip) they are at least 1/1100 of
      them (deflate cannot expand more). Other compressors are only held to the allocated-chunk rule, so a
      genuinely compressed file is never refused.
    """
    declared = int(ds.size) * ds.dtype.itemsize
    if declared == 0:
        return
    shape = "x".join(str(n) for n in ds.shape)
    claim = f"'{ds.name.lstrip('/')}' declares shape [{shape}] {ds.dtype} ({declared:,} bytes)"
    file_size = os.path.getsize(ds.file.filename)
    stored = int(ds.id.get_storage_size())
    if stored > file_size:
        raise InputError(f"{path}: {claim} stored in {stored:,} bytes, more than the file's {file_size:,}")
    if ds.chunks is None:
        offset = ds.id.get_offset()
        if stored < declared or (offset is not None and offset + declared > file_size):
            raise InputError(
                f"{path}: {claim}, but the file holds only {min(stored, file_size):,} bytes of it "
                "(truncated or forged file)"
            )
        return
    needed = math.prod(-(-n // c) for n, c in zip(ds.shape, ds.chunks))
    allocated = int(ds.id.get_num_chunks())
    if allocated < needed:
        raise InputError(
            f"{path}: {claim}, but only {allocated:,} of its {needed:,} chunks are stored (truncated or forged file)"
        )
    plist = ds.id.get_create_plist()
    filters = {plist.get_filter(i)[0] for i in range(plist.get_nfilters())} - _SIZE_NEUTRAL_FILTERS
    if not filters and stored < declared:
        raise InputError(f"{path}: {claim}, but its uncompressed chunks hold only {stored:,} bytes")
    if filters == {h5py.h5z.FILTER_DEFLATE} and declared > stored * _MAX_DEFLATE_RATIO:
        raise InputError(
            f"{path}: {claim} in {stored:,} compressed bytes, more than deflate can expand (forged file)"
        )


def read_array(ds: h5py.Dataset, mmap: bool = False, rows: slice | None = None) -> np.ndarray:
    """Read ``ds[rows]``; with ``mmap`` a contiguous uncompressed dataset is read through numpy.memmap."""
    sel = rows if rows is not None else slice(None)
    if mmap and ds.chunks is None and ds.compression is None and ds.size > 0:
        offset = ds.id.get_offset()
        if offset is not None:
            return np.array(
                np.memmap(ds.file.filename, dtype=ds.dtype, mode="r", offset=offset, shape=ds.shape)[sel]
            )
    return ds[sel]


def read_patch_file(
    path: Path, what: str, expected_dim: int | None = None, check_finite: bool = True, mmap: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate a 5x/20x file: ``(features float32 [N, D], coords int64 [N, 2])``."""
    with open_h5(path, what) as f:
        feats_ds = require_dataset(f, "features", 2, path)
        coords_ds = require_dataset(f, "coords", 2, path)
        n, dim = feats_ds.shape
        if coords_ds.shape != (n, 2):
            raise InputError(f"{path}: 'coords' has shape {list(coords_ds.shape)}, expected [{n}, 2]")
        if expected_dim is not None and dim != expected_dim:
            raise InputError(f"{path}: feature dim mismatch: expected {expected_dim}, found {dim}")
        if n == 0:
            raise InputError(f"{path}: empty bag (0 patches)")
        with _reading(path, what):
            features = np.empty((n, dim), dtype=np.float32)
            bad = 0
            for start in range(0, n, _BLOCK_ROWS):  # block by block: no whole-array temporaries
                block = slice(start, min(start + _BLOCK_ROWS, n))
                features[block] = read_array(feats_ds, mmap, block)
                if check_finite:
                    bad += int((~np.isfinite(features[block])).any(axis=1).sum())
            coords = np.asarray(read_array(coords_ds, mmap)).astype(np.int64)
    if bad:
        raise InputError(f"{path}: {bad} feature rows contain NaN or Inf")
    return features, coords


@contextlib.contextmanager
def _reading(path: Path, what: str):
    """Turn a low-level read failure (a corrupt block, a failing filter) into one line naming ``path``."""
    try:
        yield
    except InputError:
        raise
    except (OSError, ValueError, TypeError, RuntimeError) as err:
        raise InputError(f"{path}: cannot read {what} file ({one_line(err)})") from None


def read_slide_bag(
    layout: FeatureLayout,
    slide_id: str,
    label: int = -1,
    expected_dim: int | None = None,
    mmap: bool = False,
    parent_size_px: int | None = None,
) -> SlideBag:
    """Load one slide: 5x features plus its hierarchical 20x children scattered to their 5x rows.

    Args:
        layout: where the feature files are.
        slide_id: file stem.
        label: class index stored in the bag.
        expected_dim: feature dimension the model expects (checked against both files).
        mmap: read contiguous datasets through numpy.memmap (same result, pages loaded on demand).
        parent_size_px: 5x patch side in level-0 px, to check that children lie inside their parent;
            taken from the file's ``parent_size_px`` attribute when not given (published files: only
            ``child >= parent corner`` is checked).

    Returns:
        SlideBag with x5 [N5, D], x20 [N5, M, D] (row i = children of 5x patch i), child_mask [N5, M],
        coords5 [N5, 2] and coords20 [N5, M, 2].
    """
    low_path, hier_path = layout.low_file(slide_id), layout.hier_file(slide_id)
    x5, coords5 = read_patch_file(low_path, f"{layout.low_mag} feature", expected_dim, mmap=mmap)
    n5, dim = x5.shape
    with open_h5(hier_path, "hierarchical feature") as f:
        feats_ds = require_dataset(f, "features", 3, hier_path)
        coords_ds = require_dataset(f, "coords", 3, hier_path)
        rows, width, hier_dim = feats_ds.shape
        if coords_ds.shape != (rows, width, 2):
            raise InputError(
                f"{hier_path}: 'coords' has shape {list(coords_ds.shape)}, expected [{rows}, {width}, 2]"
            )
        if expected_dim is not None and hier_dim != expected_dim:
            raise InputError(f"{hier_path}: feature dim mismatch: expected {expected_dim}, found {hier_dim}")
        if hier_dim != dim:
            raise InputError(f"{hier_path}: feature dim {hier_dim} disagrees with {dim} in {low_path}")
        if rows == 0 or width == 0:
            raise InputError(f"{hier_path}: empty bag (no 20x children)")
        published = "parent_index" not in f
        if not published and rows > n5:  # at most one row per 5x patch: checked before any row is read
            raise InputError(f"{hier_path}: {rows} hierarchical rows but {low_path} has only {n5} 5x patches")
        with _reading(hier_path, "hierarchical feature"):
            x20, coords20, child_mask, parent_size_px = _scatter_rows(
                f, feats_ds, coords_ds, n5, low_path, hier_path, mmap, parent_size_px
            )
    if not child_mask.any():
        raise InputError(f"{hier_path}: empty bag (no 20x children)")
    _check_children_inside(coords5, coords20, child_mask, parent_size_px, hier_path, low_path)
    import torch

    from datasets.bag import SlideBag

    meta = {"format": "published" if published else "ours", "hier_file": str(hier_path)}
    return SlideBag(
        slide_id=slide_id,
        x5=torch.from_numpy(x5),
        x20=torch.from_numpy(x20),
        child_mask=torch.from_numpy(child_mask),
        label=int(label),
        coords5=torch.from_numpy(coords5),
        coords20=torch.from_numpy(coords20),
        meta=meta,
    )


def _scatter_rows(
    f: h5py.File,
    feats_ds: h5py.Dataset,
    coords_ds: h5py.Dataset,
    n5: int,
    low_path: Path,
    hier_path: Path,
    mmap: bool,
    parent_size_px: int | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int | None]:
    """The hierarchical rows scattered to their 5x rows, read block by block:
    ``(x20, coords20, child_mask, parent_size_px)`` (the last from the file's attribute when not given)."""
    rows, width, dim = feats_ds.shape
    published = "parent_index" not in f
    parent_index = _parent_index(f, rows, n5, hier_path, low_path)
    stored_mask = None if published else _child_mask(f, rows, width, hier_path)
    if parent_size_px is None and "parent_size_px" in f.attrs:
        parent_size_px = int(f.attrs["parent_size_px"])
    x20 = np.zeros((n5, width, dim), dtype=np.float32)
    coords20 = np.zeros((n5, width, 2), dtype=np.int64)
    child_mask = np.zeros((n5, width), dtype=bool)
    for start in range(0, rows, _BLOCK_ROWS):
        block = slice(start, min(start + _BLOCK_ROWS, rows))
        feats = np.asarray(read_array(feats_ds, mmap, block), dtype=np.float32)
        if not np.isfinite(feats).all():
            raise InputError(f"{hier_path}: features contain NaN or Inf")
        mask = (feats != 0).any(axis=2) if stored_mask is None else stored_mask[block]
        targets = parent_index[block]
        x20[targets] = feats * mask[..., None]
        coords20[targets] = np.asarray(read_array(coords_ds, mmap, block)).astype(np.int64) * mask[..., None]
        child_mask[targets] = mask
    return x20, coords20, child_mask, parent_size_px


def _parent_index(f: h5py.File, rows: int, n5: int, hier_path: Path, low_path: Path) -> np.ndarray:
    """Row -> 5x index: stored ``parent_index`` (validated), else row order (needs rows == N5)."""
    if "parent_index" not in f:
        if rows != n5:
            raise InputError(
                f"{hier_path}: published-format file has {rows} rows but {low_path} has {n5} 5x patches, so "
                "rows cannot be aligned; rebuild it with create_hierarchical_features.py or run "
                "check_hierarchical_consistency.py --fix"
            )
        return np.arange(n5, dtype=np.int64)
    ds = require_dataset(f, "parent_index", 1, hier_path)
    if ds.shape != (rows,):
        raise InputError(f"{hier_path}: 'parent_index' has shape {list(ds.shape)}, expected [{rows}]")
    index = np.asarray(ds[()]).astype(np.int64)
    if index.size and (index.min() < 0 or index.max() >= n5):
        raise InputError(f"{hier_path}: 'parent_index' out of range for the {n5} 5x patches of {low_path}")
    if np.unique(index).size != index.size:
        raise InputError(f"{hier_path}: 'parent_index' lists a 5x patch twice")
    return index


def _child_mask(f: h5py.File, rows: int, width: int, hier_path: Path) -> np.ndarray:
    ds = require_dataset(f, "child_mask", 2, hier_path)
    if ds.shape != (rows, width):
        raise InputError(f"{hier_path}: 'child_mask' has shape {list(ds.shape)}, expected [{rows}, {width}]")
    return np.asarray(ds[()]).astype(bool)


def _check_children_inside(
    coords5: np.ndarray,
    coords20: np.ndarray,
    child_mask: np.ndarray,
    parent_size_px: int | None,
    hier_path: Path,
    low_path: Path,
) -> None:
    """5x/hierarchical agreement: every real child corner lies in its parent's square."""
    delta = coords20 - coords5[:, None, :]
    outside = (delta < 0).any(axis=2)
    if parent_size_px is not None:
        outside |= (delta >= parent_size_px).any(axis=2)
    outside &= child_mask
    if outside.any():
        row = int(np.flatnonzero(outside.any(axis=1))[0])
        raise InputError(
            f"{hier_path}: {int(outside.sum())} children lie outside their 5x patch in {low_path} "
            f"(first at 5x row {row}); the files disagree"
        )
