"""One slide from raw file to its 5x and 20x feature files (the work of ``extract_features.py``).

Steps: open the slide (:mod:`preprocess.wsi.reader`), settle its level-0 magnification, read a thumbnail
at the tissue-mask resolution and segment it (:mod:`preprocess.wsi.tissue`), select the nested 5x/20x
tiles (:mod:`preprocess.wsi.tiling`), encode them (:mod:`preprocess.wsi.encode`) and write
``<extractor>_5x/<slide>.h5`` and ``<extractor>_20x/<slide>.h5`` atomically (20x first, so a slide is
finished exactly when both exist). ``--thumbnails`` adds a PNG with the mask and the kept tiles
(``<task>_<extractor>/thumbnails/<slide>.png``).

Encoder identity: every output records which encoder made it (:func:`encoder_identity`: the
extractor name, the ``--text_tower`` value, the tower kind, the image tower's class and embedding size,
and ``encoder_weights``, a digest of the content of the weight files, computed from the files without
loading them again). Features of two encoders must never share a folder: an existing output of another
encoder is an error for that slide unless ``ExtractOptions.overwrite``, and :func:`is_finished` given
the run's options counts only outputs of the same encoder as finished (same ``encoder_weights``; for
outputs written before it was recorded, the same extractor name and ``--text_tower`` value). Files that
record no extractor at all (e.g. published features) cannot be judged and count as finished.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

from datasets.features import FeatureLayout, write_patch_file
from datasets.fingerprint import content_record, json_digest
from preprocess.wsi.options import TileFlags
from preprocess.wsi.reader import SlideError, open_slide, read_downsampled
from preprocess.wsi.sources import SlideSource
from preprocess.wsi.tiling import TileGeometry, TilePlan, choose_level, plan_tiles, resolve_level0_mag
from preprocess.wsi.tissue import TissueParams, segment_tissue
from utils.atomic_io import atomic_path
from utils.errors import InputError
from utils.safe_names import check_name, contained

if TYPE_CHECKING:  # torch comes with the encoder, when a slide is extracted
    from models.towers.base import ImageTower
    from preprocess.wsi.encode import StageTimes

FORMAT_SOURCE = "extract_features.py"
# Attributes naming the encoder of an output (besides ``extractor`` and ``weights``).
ENCODER_ATTRS = ("encoder_kind", "encoder_class", "encoder_embed_dim", "encoder_weights")


@dataclass(frozen=True)
class ExtractOptions:
    """Settings shared by all slides of a run."""

    extractor: str
    weights: str | None = None
    level0_mag: float | None = TileFlags.level0_mag
    min_tissue: float = TileFlags.min_tissue
    batch_size: int = TileFlags.batch_size
    workers: int = TileFlags.workers
    device: str = "cpu"
    amp: str = "off"  # --amp: off, bf16 or fp16 (utils.amp)
    thumbnails: bool = False
    backends: tuple[str, ...] | None = None
    overwrite: bool = False  # replace existing outputs made with another encoder (else: error for the slide)


@dataclass
class SlideResult:
    """What happened to one slide; ``times`` holds seconds per stage."""

    slide_id: str
    status: str  # "done", "skipped" or "failed"
    num_low: int = 0
    num_high: int = 0
    tissue_fraction: float = 0.0
    seconds: float = 0.0
    level0_mag: int | None = None
    mag_source: str = ""
    backend: str = ""
    message: str = ""
    times: dict[str, float] = field(default_factory=dict)

    def summary_line(self) -> str:
        if self.status == "failed":
            return f"failed {self.slide_id}: {self.message}"
        if self.status == "skipped":
            return f"skipped {self.slide_id} (both feature files exist)"
        return (
            f"{self.slide_id}: {self.num_low} tiles 5x / {self.num_high} tiles 20x, "
            f"tissue {100 * self.tissue_fraction:.1f}%, level0 {self.level0_mag}x ({self.mag_source}), "
            f"{self.backend}, {self.seconds:.1f} s"
        )


_WEIGHTS_DIGESTS: dict[str, str] = {}  # tower_identity (file stats) -> content digest, per process


def weights_fingerprint(extractor: str, weights: str | None) -> tuple[str, str] | None:
    """``(kind, digest)`` of the tower weights ``extractor``/``weights`` resolve to, from the files'
    content (size and BLAKE2b of every file of the weights folder, or of the checkpoint file); None
    when they cannot be resolved. Cached per process by the files' size and modification time."""
    from models.towers.loading import TowerSource, resolve_tower_source, tower_identity

    try:
        identity = tower_identity(TowerSource(extractor, weights))
    except (InputError, OSError):
        return None
    key = json_digest(identity)
    if key not in _WEIGHTS_DIGESTS:
        kind, location = resolve_tower_source(extractor, weights)
        path = Path(location)
        if kind == "open_clip" and not path.exists():  # an ARCH:/path/to/weights spec
            path = Path(location.split(":", 1)[1])
        files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
        try:
            _WEIGHTS_DIGESTS[key] = json_digest([kind, {p.name: content_record(p) for p in files}])
        except OSError:
            return None
    return identity["kind"], _WEIGHTS_DIGESTS[key]


def encoder_identity(options: ExtractOptions, tower: ImageTower | None = None) -> dict[str, str | int]:
    """The HDF5 attributes naming the encoder of this run (module docstring); the tower's class and
    embedding size only when the loaded ``tower`` is given (it is never loaded for this)."""
    identity: dict[str, str | int] = {"extractor": options.extractor, "weights": options.weights or ""}
    fingerprint = weights_fingerprint(options.extractor, options.weights)
    if fingerprint is not None:
        identity["encoder_kind"], identity["encoder_weights"] = fingerprint
    if tower is not None:
        identity["encoder_class"] = type(tower).__name__
        identity["encoder_embed_dim"] = int(getattr(tower, "embed_dim", -1))
    return identity


def _describe(identity: dict) -> str:
    text = f"{identity.get('extractor')}, weights {identity.get('weights') or 'default'}"
    if identity.get("encoder_class"):
        text += f", {identity['encoder_class']} dim {identity.get('encoder_embed_dim')}"
    if identity.get("encoder_weights"):
        text += f", weights digest {str(identity['encoder_weights'])[:12]}"
    return text


def recorded_encoder(path: Path) -> dict | None:
    """The encoder attributes of an existing output (None when absent or unreadable)."""
    try:
        with h5py.File(path, "r") as f:
            found = {k: f.attrs[k] for k in ("extractor", "weights", *ENCODER_ATTRS) if k in f.attrs}
    except (OSError, ValueError):
        return None
    return {
        k: v.decode() if isinstance(v, bytes) else (v.item() if hasattr(v, "item") else v)
        for k, v in found.items()
    }


def same_encoder(recorded: dict, identity: dict) -> bool:
    """Whether an output with ``recorded`` attributes was made by the encoder ``identity`` names.

    Compared by weight content when both name it, else by extractor name and ``--text_tower`` value;
    an output recording no extractor at all cannot be judged and counts as the same."""
    if "extractor" not in recorded:
        return True
    if recorded.get("encoder_weights") and identity.get("encoder_weights"):
        return (recorded["encoder_weights"], recorded.get("encoder_kind")) == (
            identity["encoder_weights"],
            identity.get("encoder_kind"),
        )
    return (str(recorded["extractor"]), str(recorded.get("weights", ""))) == (
        str(identity["extractor"]),
        str(identity.get("weights", "")),
    )


def encoder_conflict(layout: FeatureLayout, slide_id: str, identity: dict) -> str | None:
    """One line naming an existing output of ``slide_id`` made with another encoder, else None."""
    for path in (layout.high_file(slide_id), layout.low_file(slide_id)):
        recorded = recorded_encoder(path) if path.is_file() else None
        if recorded is not None and not same_encoder(recorded, identity):
            return (
                f"{path} was made with another encoder ({_describe(recorded)}) than this run's "
                f"({_describe(identity)}); features of two encoders must not be mixed: use --overwrite to "
                "replace it, or another --data_root_dir or --task"
            )
    return None


def is_finished(layout: FeatureLayout, slide_id: str, options: ExtractOptions) -> bool:
    """Both output files exist (they are written atomically, so existing means complete) and were made
    with the encoder of the run's ``options`` (module docstring); outputs of another encoder are not
    finished, and :func:`extract_slide` refuses them unless ``options.overwrite``."""
    if not (layout.low_file(slide_id).is_file() and layout.high_file(slide_id).is_file()):
        return False
    return encoder_conflict(layout, slide_id, encoder_identity(options)) is None


def thumbnail_path(layout: FeatureLayout, slide_id: str) -> Path:
    """``<task>_<extractor>/thumbnails/<slide>.png``, resolved inside the data root."""
    path = layout.root / "thumbnails" / f"{check_name(slide_id, 'slide id', 'thumbnail name')}.png"
    return contained(layout.data_root_dir, str(path.relative_to(layout.data_root_dir)))


def extract_slide(
    source: SlideSource,
    layout: FeatureLayout,
    tower: ImageTower,
    options: ExtractOptions,
    progress: Callable[[int, str], Callable[[int], object]] | None = None,
) -> SlideResult:
    """Extract one slide; any :class:`SlideError` (unreadable file, unknown magnification, no tissue)
    propagates with a one-line message. ``progress(total, description)`` returns a per-batch callback."""
    from preprocess.wsi.encode import TileGroup, encode_tiles

    start = time.perf_counter()
    if source.path is None:
        raise SlideError("no slide file with this id was found (check --slides / --slide-dir)")
    outputs = layout.output_files(source.slide_id)  # inside --data-root, 5x and 20x never one file
    identity = encoder_identity(options, tower)
    if not options.overwrite:
        conflict = encoder_conflict(layout, source.slide_id, identity)
        if conflict is not None:
            raise SlideError(conflict)
    times: dict[str, float] = {}
    t = time.perf_counter()
    reader = open_slide(source.path, options.backends)
    times["open"] = time.perf_counter() - t
    with reader:
        mag, mag_source = resolve_level0_mag(
            options.level0_mag, source.level0_mag, reader.objective_power, reader.mpp
        )
        geometry = TileGeometry(mag)
        t = time.perf_counter()
        thumb = read_downsampled(reader, geometry.mask_downsample)
        times["thumbnail"] = time.perf_counter() - t
        t = time.perf_counter()
        tissue = segment_tissue(thumb, TissueParams.for_tile(geometry.mask_px_per_child))
        plan = plan_tiles(tissue.mask, geometry, reader.dimensions, options.min_tissue)
        times["tissue"] = time.perf_counter() - t
        if options.thumbnails:  # before encoding, so a slide that fails later still has its preview
            write_preview(thumbnail_path(layout, source.slide_id), thumb, tissue.mask, plan)
        if len(plan.coords_low) == 0:
            rows, cols = plan.grid_low
            raise SlideError(
                f"no 5x tile (of {rows}x{cols}) with >= {options.min_tissue:g} tissue "
                f"(slide tissue {100 * tissue.tissue_fraction:.1f}%); check --thumbnails or lower --min-tissue"
            )
        low_level = choose_level(reader.level_downsamples, geometry.low_px, geometry.patch_size)
        high_level = choose_level(reader.level_downsamples, geometry.high_px, geometry.patch_size)
        total = len(plan.coords_low) + len(plan.coords_high)
        callback = progress(total, source.slide_id) if progress is not None else None
        (feats_low, feats_high), stage = encode_tiles(
            reader,
            [TileGroup(plan.coords_low, low_level), TileGroup(plan.coords_high, high_level)],
            tower,
            batch_size=options.batch_size,
            device=options.device,
            amp=options.amp,
            workers=options.workers,
            progress=callback,
        )
        times.update(_stage_dict(stage))
        t = time.perf_counter()
        common = {
            **identity,
            "level0_mag": int(mag),
            "level0_mag_source": mag_source,
            "patch_size": int(geometry.patch_size),
            "min_tissue": float(options.min_tissue),
            "slide_file": source.path.name,
            "slide_id": source.slide_id,
            "backend": reader.backend,
            "tissue_fraction": float(tissue.tissue_fraction),
            "source": FORMAT_SOURCE,
        }
        for feats, coords, mag_here, tile_px, level, path in (
            (
                feats_high,
                plan.coords_high,
                geometry.high_mag,
                geometry.high_px,
                high_level,
                outputs["high"],
            ),
            (
                feats_low,
                plan.coords_low,
                geometry.low_mag,
                geometry.low_px,
                low_level,
                outputs["low"],
            ),
        ):
            attrs = {
                **common,
                "magnification": float(mag_here),
                "patch_size_level0": int(tile_px),
                "patch_level": int(level.level),
                "level_downsample": float(level.downsample),
                "read_size": int(level.read_size),
            }
            write_patch_file(path, feats, coords, attrs)
        times["write"] = time.perf_counter() - t
    return SlideResult(
        slide_id=source.slide_id,
        status="done",
        num_low=len(plan.coords_low),
        num_high=len(plan.coords_high),
        tissue_fraction=tissue.tissue_fraction,
        seconds=time.perf_counter() - start,
        level0_mag=mag,
        mag_source=mag_source,
        backend=reader.backend,
        times=times,
    )


def _stage_dict(stage: StageTimes) -> dict[str, float]:
    return {
        "read": stage.read,
        "resize": stage.resize,
        "preprocess": stage.preprocess,
        "wait": stage.wait,
        "encode": stage.encode,
    }


def write_preview(
    path: Path, thumb: np.ndarray, mask: np.ndarray, plan: TilePlan, max_side: int = 1600
) -> None:
    """PNG of the thumbnail with tissue tinted green, kept 20x tiles outlined thin, kept 5x tiles blue."""
    from PIL import Image, ImageDraw

    rgb = thumb.astype(np.float32)
    tint = np.array([40, 200, 40], dtype=np.float32)
    rgb[mask] = 0.65 * rgb[mask] + 0.35 * tint
    image = Image.fromarray(rgb.astype(np.uint8))
    scale = min(4.0, max_side / max(1, max(image.size)))  # shrink big thumbnails, enlarge tiny ones
    if scale != 1.0:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BOX if scale < 1 else Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(image)
    px = scale / plan.geometry.mask_downsample  # preview pixels per level-0 pixel
    for coords, side, colour, width in (
        (plan.coords_high, plan.geometry.high_px, (255, 160, 0), 1),
        (plan.coords_low, plan.geometry.low_px, (0, 60, 255), 2),
    ):
        for x, y in coords:
            box = (x * px, y * px, (x + side) * px - 1, (y + side) * px - 1)
            draw.rectangle(box, outline=colour, width=width)
    with atomic_path(path, suffix=".png.tmp") as tmp:
        image.save(tmp, format="PNG")
