"""Which slides to extract: every slide file under a folder, or the rows of a CSV.

A folder is searched recursively (TCGA downloads put each slide in its own sub-folder) for files
with a slide extension; the slide id is the file name without that extension (TCGA ids contain dots,
so only the extension is removed). A CSV needs a ``slide_id`` column and may have ``path`` (absolute,
or relative to the CSV's folder) and ``level0_mag`` columns; without ``path``, files named
``<slide_id>.<ext>`` are looked up under ``slide_dir`` (default: the CSV's folder). The dataset CSV
``dataset_csv/<task>.csv`` (``case_id,slide_id,label,level0_mag``) works as is with ``slide_dir``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from utils.errors import InputError
from utils.safe_names import check_name, check_names, refuse_nul

SLIDE_EXTENSIONS = (
    ".ome.tiff", ".ome.tif", ".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide",
)  # fmt: skip


@dataclass(frozen=True)
class SlideSource:
    """One slide to extract. ``path`` is None when a CSV row names a slide that was not found."""

    slide_id: str
    path: Path | None
    level0_mag: float | None = None


def slide_extension(path: Path) -> str | None:
    """The slide extension ``path`` ends with (case-insensitive), else None."""
    name = path.name.lower()
    return next((ext for ext in SLIDE_EXTENSIONS if name.endswith(ext)), None)


def slide_id_from_path(path: Path) -> str:
    """File name without its slide extension: ``TCGA-XX.UUID.svs`` -> ``TCGA-XX.UUID``."""
    ext = slide_extension(path)
    return path.name[: -len(ext)] if ext else path.stem


def _index_slide_files(folder: Path) -> dict[str, list[Path]]:
    index: dict[str, list[Path]] = {}
    for path in sorted(folder.rglob("*")):
        if path.name.startswith(".") or not path.is_file() or slide_extension(path) is None:
            continue
        index.setdefault(slide_id_from_path(path), []).append(path)
    return index


def list_slide_folder(folder: Path) -> list[SlideSource]:
    """Every slide file under ``folder`` (recursive), sorted by slide id; duplicate ids are an error."""
    index = _index_slide_files(folder)
    if not index:
        raise InputError(f"--slides {folder}: no slide files ({', '.join(SLIDE_EXTENSIONS)}) in the folder")
    dup = {sid: paths for sid, paths in index.items() if len(paths) > 1}
    if dup:
        sid, paths = next(iter(dup.items()))
        raise InputError(
            f"--slides {folder}: slide id {sid!r} names {len(paths)} files ({paths[0]}, {paths[1]})"
        )
    for sid, paths in index.items():  # a file name with e.g. a control character cannot name an output
        check_name(sid, "slide id", f"--slides {paths[0]}")
    return [SlideSource(sid, paths[0]) for sid, paths in sorted(index.items())]


def _parse_mag(value: str, csv_path: Path, row: int) -> float | None:
    value = str(value).strip()
    if value == "":
        return None
    try:
        mag = float(value)
    except ValueError:
        mag = -1.0
    if not mag > 0:
        raise InputError(
            f"{csv_path}: level0_mag must be a positive number, got {value!r} (data row {row + 1})"
        )
    return mag


def read_slide_csv(csv_path: Path, slide_dir: Path | None = None) -> list[SlideSource]:
    """Slides listed by a CSV (module docstring), in file order."""
    refuse_nul(csv_path)
    try:
        frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except Exception as err:  # pandas raises many exception types for unreadable files
        raise InputError(f"{csv_path}: cannot read CSV ({' '.join(str(err).split())})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    if "slide_id" not in frame.columns:
        raise InputError(f"{csv_path}: missing column 'slide_id' (optional columns: path, level0_mag)")
    ids = frame["slide_id"].str.strip()
    if (ids == "").any():
        raise InputError(f"{csv_path}: empty slide_id in data row {int((ids == '').to_numpy().argmax()) + 1}")
    if ids.duplicated().any():
        raise InputError(f"{csv_path}: duplicate slide id {ids[ids.duplicated()].iloc[0]!r}")
    check_names(ids, "slide id", csv_path)  # an id names the output files <slide>.h5
    mags = (
        [_parse_mag(v, csv_path, i) for i, v in enumerate(frame["level0_mag"])]
        if "level0_mag" in frame
        else None
    )
    path_col = next((c for c in ("path", "slide_path") if c in frame.columns), None)
    if path_col is None:
        search = Path(slide_dir) if slide_dir is not None else csv_path.parent
        if not search.is_dir():
            raise InputError(f"--slide-dir {search}: not a folder")
        index = _index_slide_files(search)
    sources = []
    for i, slide_id in enumerate(ids):
        if path_col is not None:
            raw = frame[path_col].iloc[i].strip()
            path = Path(raw) if Path(raw).is_absolute() else csv_path.parent / raw
            path = path if raw else None
        else:
            found = index.get(slide_id, [])
            path = found[0] if found else None
        sources.append(SlideSource(slide_id, path, mags[i] if mags is not None else None))
    return sources


def find_slides(spec: str | Path, slide_dir: str | Path | None = None) -> list[SlideSource]:
    """Slides named by ``--slides``: a folder or a ``.csv`` file."""
    spec = Path(spec)
    if spec.is_dir():
        return list_slide_folder(spec)
    if spec.is_file() and spec.suffix.lower() == ".csv":
        sources = read_slide_csv(spec, Path(slide_dir) if slide_dir is not None else None)
        if not sources:
            raise InputError(f"{spec}: no rows")
        return sources
    if spec.is_file():
        raise InputError(f"--slides {spec}: expected a folder of slides or a .csv file")
    raise InputError(f"--slides {spec}: no such folder or file")
