"""Which slides ``predict.py`` predicts, and how each becomes a :class:`~datasets.bag.SlideBag`.

``--slides`` takes any mix of (docs/formats.md §8):

* **slide ids** of the run's task: features from the run's ``DATA_ROOT/<task>_<extractor>/``, label and
  ``level0_mag`` from the task's dataset CSV;
* a **feature folder** holding ``<extractor>_5x/`` and ``hierarchical_<extractor>_5x_20x/`` (the run's
  extractor), e.g. ``DATA_ROOT/<task>_<extractor>/``: every slide with a 5x file; a single 5x ``.h5``
  file of such a folder names one slide;
* **tensor files** ``.pt`` / ``.pth`` (:func:`datasets.tensor_bag.read_tensor_bag`);
* **raw slides** (``.svs``, ``.tif``, ``.ndpi``, ... -- see :data:`preprocess.wsi.sources.SLIDE_EXTENSIONS`):
  features are extracted with the run's tower into a cache (:mod:`inference.prediction`);
* a **folder** of tensor files and/or raw slides (searched recursively);
* **case ids** of a survival run's task (docs/survival.md §12): the case's slides concatenated into one
  case bag exactly as training builds it (:func:`datasets.case_bag.concat_case_bag`); a name that is
  a slide id of the task stays that slide;
* a **CSV** with ``slide_id`` and optional ``path`` (any of the above but a CSV, relative to the CSV's
  folder), ``label`` (class name or index), ``level0_mag`` and ``slide_path`` (the raw slide, for
  heatmaps drawn over its thumbnail). A row without ``path`` names a slide of the run's task.

An input that cannot be used (a missing file, an unknown slide id) becomes a :class:`SlideInput` with
a ``problem``: it is reported as one failed slide and the others go on. A bad CSV or folder, or two
inputs with one slide id, is an :class:`InputError` before any work.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import pandas as pd

from datasets.bag import SlideBag
from datasets.features import FeatureLayout, read_slide_bag
from datasets.fingerprint import stat_record
from datasets.tasks import TaskSpec
from preprocess.wsi.sources import SLIDE_EXTENSIONS, slide_extension, slide_id_from_path
from training.config import RunConfig
from utils.errors import InputError, one_line
from utils.magnification import magnification_label, magnification_value

TASK, FEATURES, TENSOR, RAW, CASE = "task", "features", "tensor", "raw", "case"
TENSOR_SUFFIXES = (".pt", ".pth")
_BAD_ID = re.compile(r"[/\\]|^\.\.?$|^$")


@dataclass(frozen=True)
class FolderLayout(FeatureLayout):
    """A :class:`FeatureLayout` rooted at an arbitrary folder (``<folder>/<extractor>_5x/`` ...)."""

    folder: Path | None = None

    @property
    def root(self) -> Path:
        return Path(self.folder) if self.folder is not None else super().root


@dataclass
class SlideInput:
    """One slide to predict.

    Attributes:
        slide_id: the row's id in ``predictions.csv`` (also the heatmap folder name; a case: its id).
        kind: ``task``, ``features``, ``tensor``, ``raw`` or ``case``.
        source: how the slide was named (a path or ``task:<name>``).
        path: the tensor file or raw slide (``tensor``/``raw``).
        layout: where the 5x and hierarchical files are (``task``/``features``).
        label: class index when known.
        level0_mag: level-0 magnification when known (CSV column or dataset CSV).
        slide_file: the raw slide, when at hand (heatmaps over its thumbnail, top tiles).
        problem: why the slide cannot be predicted (reported as a failed slide).
        case: a survival task's case (:class:`datasets.survival.SurvivalCase`; kind ``case``).
    """

    slide_id: str
    kind: str
    source: str
    path: Path | None = None
    layout: FeatureLayout | None = None
    label: int | None = None
    level0_mag: float | None = None
    slide_file: Path | None = None
    problem: str | None = None
    extra: dict = field(default_factory=dict)
    case: object | None = None

    def input_files(self) -> list[Path]:
        """The files the prediction reads (their size and mtime make the row's input record)."""
        if self.kind == CASE and self.layout is not None:
            return [f for s in self.case.slides for f in (self.layout.low_file(s), self.layout.hier_file(s))]
        if self.kind in (TASK, FEATURES) and self.layout is not None:
            return [self.layout.low_file(self.slide_id), self.layout.hier_file(self.slide_id)]
        return [self.path] if self.path is not None else []

    def input_record(self) -> dict:
        """What the prediction of this slide is computed from (files by size and mtime)."""
        return {
            "kind": self.kind,
            "files": {str(p): stat_record(p) for p in self.input_files()},
            "level0_mag": self.level0_mag,
            **self.extra,
        }


class InputResolver:
    """Turns ``--slides`` items into :class:`SlideInput` (see the module docstring)."""

    def __init__(self, config: RunConfig, task: TaskSpec, slide_dir: str | Path | None = None):
        self.config = config
        self.task = task
        self.low = magnification_label(config.low_mag)
        self.high = magnification_label(config.high_mag)
        self.run_layout = FeatureLayout(
            config.resolve_path(config.data_root_dir) if config.data_root_dir else Path("."),
            task.name,
            config.feature_extractor,
            self.low,
            self.high,
        )
        self._task_rows: dict[str, tuple[int, int]] | None = None
        self._cases: dict | None = None
        self._slide_files: dict[str, Path] | None = None
        self.slide_dir = None if slide_dir is None else Path(slide_dir).expanduser()
        if self.slide_dir is not None and not self.slide_dir.is_dir():
            raise InputError(f"--slide-dir {slide_dir}: not a folder")

    # ---- public

    def resolve(self, items: list[str]) -> list[SlideInput]:
        """Every slide the items name, in order; one :class:`InputError` for unusable lists."""
        inputs: list[SlideInput] = []
        for item in items:
            inputs.extend(self._item(str(item)))
        seen: dict[str, str] = {}
        for inp in inputs:
            if inp.slide_id in seen:
                raise InputError(
                    f"--slides: slide id {inp.slide_id!r} is named twice ({seen[inp.slide_id]} and {inp.source})"
                )
            seen[inp.slide_id] = inp.source
        for inp in inputs:
            if inp.slide_file is None and inp.kind != RAW:
                inp.slide_file = self._slide_file(inp.slide_id)
        return inputs

    # ---- items

    def _item(self, item: str) -> list[SlideInput]:
        path = Path(item).expanduser()
        if path.is_dir():
            return self._folder(path)
        if path.is_file():
            if path.suffix.lower() == ".csv":
                return self._csv(path)
            return [self._file(path, source=str(path))]
        lowered = item.lower()
        known = (".csv", ".h5", *TENSOR_SUFFIXES, *SLIDE_EXTENSIONS)
        if "/" in item or "\\" in item or lowered.endswith(known):
            if lowered.endswith((".csv",)):
                raise InputError(f"--slides {item}: no such CSV file")
            slide_id = slide_id_from_path(path) if slide_extension(path) else path.stem
            return [SlideInput(slide_id, RAW, item, problem=f"{item}: no such file or folder")]
        return [self._task_slide(item, source=f"task:{self.task.name}")]

    def _file(self, path: Path, source: str, slide_id: str | None = None, **known) -> SlideInput:
        suffix = path.suffix.lower()
        if suffix in TENSOR_SUFFIXES:
            return self._checked(SlideInput(slide_id or path.stem, TENSOR, source, path=path, **known))
        if suffix == ".h5":
            return self._checked(self._h5_file(path, source, slide_id, **known))
        if slide_extension(path) is not None:
            sid = slide_id or slide_id_from_path(path)
            known["slide_file"] = path  # the slide itself, whatever a CSV's slide_path says
            return self._checked(SlideInput(sid, RAW, source, path=path, **known))
        raise InputError(
            f"--slides {path}: not a CSV, feature file (.h5), tensor file (.pt/.pth), slide file or folder"
        )

    def _checked(self, inp: SlideInput) -> SlideInput:
        if _BAD_ID.search(inp.slide_id):
            inp.problem = f"slide id {inp.slide_id!r} cannot name a file (no slashes, not '.' or '..')"
        return inp

    def _h5_file(self, path: Path, source: str, slide_id: str | None, **known) -> SlideInput:
        """A 5x file ``<root>/<extractor>_5x/<slide>.h5``: its hierarchical file lies in ``<root>``."""
        folder = path.parent
        expected = f"{self.config.feature_extractor}_{self.low}"
        if folder.name != expected:
            raise InputError(
                f"--slides {path}: a feature file must lie in a folder named {expected} (the run's "
                f"extractor and magnification) next to hierarchical_{self.config.feature_extractor}_{self.low}_{self.high}/"
            )
        layout = self._folder_layout(folder.parent)
        sid = slide_id or path.stem
        inp = SlideInput(sid, FEATURES, source, layout=layout, **known)
        if sid != path.stem:
            inp.problem = f"{path}: the file of slide {sid} must be named {sid}.h5"
        elif not layout.hier_file(sid).is_file():
            inp.problem = _missing_hier(layout, sid)
        return inp

    def _folder(self, folder: Path) -> list[SlideInput]:
        extractor = self.config.feature_extractor
        low_dir = folder / f"{extractor}_{self.low}"
        if low_dir.is_dir():
            layout = self._folder_layout(folder)
            ids = sorted(p.stem for p in low_dir.glob("*.h5") if not p.name.startswith("."))
            if not ids:
                raise InputError(f"--slides {folder}: no .h5 files in {low_dir}")
            inputs = []
            for sid in ids:
                inp = self._checked(SlideInput(sid, FEATURES, str(layout.low_file(sid)), layout=layout))
                if inp.problem is None and not layout.hier_file(sid).is_file():
                    inp.problem = _missing_hier(layout, sid)
                inputs.append(inp)
            return inputs
        others = sorted(p.name for p in folder.glob("*_5x") if p.is_dir())
        if others:
            raise InputError(
                f"--slides {folder}: holds {', '.join(others)}, not {low_dir.name}: the run was trained on "
                f"{extractor} features"
            )
        files = sorted(
            p
            for p in folder.rglob("*")
            if p.is_file()
            and not p.name.startswith(".")
            and (p.suffix.lower() in TENSOR_SUFFIXES or slide_extension(p) is not None)
        )
        if not files:
            raise InputError(
                f"--slides {folder}: no feature folder ({low_dir.name}/), tensor files (.pt/.pth) or slide "
                f"files ({', '.join(SLIDE_EXTENSIONS)}) in it"
            )
        return [self._file(p, source=str(p)) for p in files]

    def _csv(self, path: Path) -> list[SlideInput]:
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        except Exception as err:  # pandas raises many exception types for unreadable files
            raise InputError(f"{path}: cannot read CSV ({one_line(err, with_type=False)})") from None
        frame.columns = [str(c).strip() for c in frame.columns]
        if "slide_id" not in frame.columns and "path" not in frame.columns:
            raise InputError(
                f"{path}: needs a 'slide_id' or a 'path' column (optional: label, level0_mag, slide_path)"
            )
        if frame.empty:
            raise InputError(f"{path}: no rows")
        inputs = []
        for i, row in enumerate(frame.to_dict("records")):
            where = f"{path} data row {i + 1}"
            sid = str(row.get("slide_id", "")).strip() or None
            raw_path = str(row.get("path", "")).strip()
            if sid is None and not raw_path:
                raise InputError(f"{where}: neither slide_id nor path")
            known = {
                "label": self._label(row.get("label", ""), where),
                "level0_mag": _level0_mag(row.get("level0_mag", ""), where),
            }
            slide_path = str(row.get("slide_path", "")).strip()
            if slide_path:
                known["slide_file"] = _relative(path, slide_path)
            if raw_path:
                target = _relative(path, raw_path)
                if target.is_dir():
                    if sid is None:
                        raise InputError(f"{where}: a folder path needs a slide_id")
                    layout = self._folder_layout(target)
                    inp = SlideInput(sid, FEATURES, str(target), layout=layout, **known)
                    if not layout.low_file(sid).is_file():
                        inp.problem = f"{layout.low_file(sid)}: no such feature file"
                    elif not layout.hier_file(sid).is_file():
                        inp.problem = _missing_hier(layout, sid)
                    inputs.append(self._checked(inp))
                elif target.is_file():
                    inputs.append(self._file(target, str(target), sid, **known))
                else:
                    name = sid or slide_id_from_path(target)
                    inputs.append(SlideInput(name, RAW, str(target), problem=f"{target}: no such file"))
            else:
                inputs.append(self._task_slide(sid, source=f"task:{self.task.name}", **known))
        return inputs

    # ---- helpers

    def _task_slide(self, slide_id: str, source: str, **known) -> SlideInput:
        layout = self.run_layout
        if slide_id not in self.task_rows() and slide_id in self.task_cases():
            return self._task_case(self.task_cases()[slide_id], source)
        csv_label, csv_mag = self.task_rows().get(slide_id, (None, None))
        label = known.pop("label", None)
        mag = known.pop("level0_mag", None)
        inp = SlideInput(
            slide_id,
            TASK,
            source,
            layout=layout,
            label=csv_label if label is None else label,
            level0_mag=csv_mag if mag is None else mag,
            **known,
        )
        inp = self._checked(inp)
        low, hier = layout.low_file(slide_id), layout.hier_file(slide_id)
        if inp.problem is not None or (low.is_file() and hier.is_file()):
            return inp
        if slide_id in self.task_rows() or low.is_file():
            inp.problem = f"features of task {self.task.name} missing ({low} / {hier})"
        else:
            inp.problem = f"no such file or folder, and not a slide of task {self.task.name} (no {low})"
        return inp

    def task_cases(self) -> dict:
        """``{case_id: SurvivalCase}`` of a survival task's dataset CSV (empty for other tasks)."""
        if self._cases is None:
            from datasets.survival import SurvivalTaskSpec, read_survival_csv

            self._cases = {}
            if isinstance(self.task, SurvivalTaskSpec) and Path(self.task.csv_path).is_file():
                self._cases = read_survival_csv(self.task.csv_path).by_id()
        return self._cases

    def _task_case(self, case, source: str) -> SlideInput:
        """A survival task's case: all its slides as one case bag (the run's feature folder)."""
        layout = self.run_layout
        inp = self._checked(SlideInput(case.case_id, CASE, f"{source} case", layout=layout, case=case))
        missing = [
            s for s in case.slides if not (layout.low_file(s).is_file() and layout.hier_file(s).is_file())
        ]
        if inp.problem is None and missing:
            inp.problem = (
                f"case {case.case_id}: features of slide(s) {', '.join(missing)} missing ({layout.low_dir} / "
                f"{layout.hier_dir})"
            )
        return inp

    def task_rows(self) -> dict[str, tuple[int | None, int]]:
        """``{slide_id: (label index, level0_mag)}`` of the task's dataset CSV (empty when it is absent;
        a survival task's slides have no label: the outcome belongs to the case)."""
        if self._task_rows is None:
            from datasets.dataset_csv import read_dataset_csv
            from datasets.survival import SurvivalTaskSpec, read_survival_csv

            rows = {}
            if isinstance(self.task, SurvivalTaskSpec) and Path(self.task.csv_path).is_file():
                rows = {s: (None, int(r[3])) for s, r in read_survival_csv(self.task.csv_path).rows.items()}
            elif Path(self.task.csv_path).is_file():
                frame = read_dataset_csv(self.task.csv_path, self.task)
                rows = {
                    str(s): (int(label), int(mag))
                    for s, label, mag in zip(frame["slide_id"], frame["label_idx"], frame["level0_mag"])
                }
            self._task_rows = rows
        return self._task_rows

    def _label(self, value, where: str) -> int | None:
        text = str(value).strip()
        if text in ("", "-1"):
            return None
        if text in self.task.label_dict:
            return int(self.task.label_dict[text])
        if text.isdigit() and int(text) < self.task.num_classes:
            return int(text)
        raise InputError(
            f"{where}: label {text!r} is not a class of the run ({', '.join(self.task.class_names)}) "
            "nor a class index"
        )

    def _folder_layout(self, folder: Path) -> FeatureLayout:
        return FolderLayout(
            folder.parent, folder.name, self.config.feature_extractor, self.low, self.high, folder
        )

    def _slide_file(self, slide_id: str) -> Path | None:
        if self.slide_dir is None:
            return None
        if self._slide_files is None:
            index: dict[str, Path] = {}
            for p in sorted(self.slide_dir.rglob("*")):
                if p.is_file() and not p.name.startswith(".") and slide_extension(p) is not None:
                    index.setdefault(slide_id_from_path(p), p)
            self._slide_files = index
        return self._slide_files.get(slide_id)


def _missing_hier(layout: FeatureLayout, slide_id: str) -> str:
    return (
        f"{layout.hier_file(slide_id)}: hierarchical file missing (build it with "
        "create_hierarchical_features.py)"
    )


def _relative(csv_path: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else csv_path.parent / path


def _level0_mag(value, where: str) -> float | None:
    text = str(value).strip()
    if not text:
        return None
    try:
        mag = float(text)
    except ValueError:
        mag = -1.0
    if not mag > 0 or mag != int(mag):
        raise InputError(f"{where}: level0_mag must be a positive whole number, got {text!r}")
    return mag


# ------------------------------------------------------------------------------------------ bags


def feature_level0_mag(layout: FeatureLayout, slide_id: str) -> float | None:
    """``level0_mag`` recorded in the slide's hierarchical or 5x file (our writers record it), else None."""
    for path in (layout.hier_file(slide_id), layout.low_file(slide_id)):
        try:
            with h5py.File(path, "r") as f:
                value = f.attrs.get("level0_mag")
        except (OSError, ValueError):
            continue
        if value is not None and float(value) > 0:
            return float(value)
    return None


def read_feature_bag(inp: SlideInput, layout: FeatureLayout, feature_dim: int) -> SlideBag:
    """The bag of a slide with 5x and hierarchical files, read exactly as training reads it."""
    bag = read_slide_bag(
        layout, inp.slide_id, -1 if inp.label is None else inp.label, expected_dim=feature_dim
    )
    mag = inp.level0_mag or feature_level0_mag(layout, inp.slide_id)
    if mag:
        bag.meta["level0_mag"] = int(mag)
    return bag


def read_case_bag(inp: SlideInput, feature_dim: int) -> SlideBag:
    """The case bag of a ``case`` input: its slides read as training reads them and concatenated in the
    case's slide order (:func:`datasets.case_bag.concat_case_bag`; label -1, the outcome is not used)."""
    from datasets.case_bag import concat_case_bag

    bags = [read_slide_bag(inp.layout, s, -1, expected_dim=feature_dim) for s in inp.case.slides]
    return concat_case_bag(inp.case, bags, -1)


def run_magnifications(config: RunConfig) -> tuple[float, float]:
    """(low, high) magnifications of the run as numbers (5.0, 20.0)."""
    return magnification_value(config.low_mag), magnification_value(config.high_mag)
