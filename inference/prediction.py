"""Predicting new slides with a finished run's fold checkpoints (the work of ``predict.py``).

For every slide (:mod:`inference.slide_inputs`) and every selected fold, the fold's model --
rebuilt from the run's ``config.json`` as training built it, its checkpoint loaded with the identity
check -- gives class probabilities exactly as the run's evaluation computes them (text features once
per model, ``--amp`` as trained, softmax of float32 logits; :func:`models.passes.forward_bag`). The
fold ensemble is the mean probability over the folds; its arg-max is the predicted class.

A **survival run** (a model with the registry's ``survival`` fact; docs/survival.md §6.1, §12) gives per
fold the survival curve S_b = prod_{j<=b} (1 - h_j) at the end of every bin; the fold ensemble is the
**mean curve** over the folds and its risk is the training code's risk of that curve
(:func:`models.survival.risk_from_survival`: -sum_b S_b; equal to the mean of the folds' risks). A
``--surv_loss cox`` run's curves only carry the ranking (its loss fixes nothing else), so its rows hold
the risks only. A slide whose model output is not finite fails (one line), as for classification.

Output folder (default ``<run>/predictions/``):

* ``predictions.csv`` (written atomically after every slide): per slide ``label`` (class index when
  known), ``pred`` / ``pred_class`` and ``prob_<class>`` of the ensemble, ``fold_<k>_pred`` and
  ``fold_<k>_prob_<class>`` per fold (survival: ``risk`` and ``survival_<b>`` of the ensemble,
  ``fold_<k>_risk`` and ``fold_<k>_survival_<b>`` per fold), ``folds``, ``kind`` and ``source`` of the
  input, and what the row was computed from: ``input_digest`` (the input files' sizes and modification times; for raw slides
  also the extraction settings and the image tower's files) and ``model_digest`` (the run's settings,
  the checkpoints' contents and the text tower's files). A rerun reuses a row whose digests match and
  recomputes any other; rows of slides not named this time are kept when their model digest matches.
* ``feature_cache/<task>_<extractor>/``: features of raw slides (5x, 20x and hierarchical files, as
  ``extract_features.py`` and ``create_hierarchical_features.py`` write them) and ``sources/<slide>.json``
  recording what they were extracted from (a changed slide file or setting re-extracts it).
* ``heatmaps/<slide>/fold_<k>/`` with ``--heatmaps`` (:func:`interpretability.heatmaps.save_heatmaps`):
  HiVE-MIL class evidence, the attention of the attention baselines (also ``ABMIL_surv``,
  ``TransMIL_surv``), or the HiLa-style model's transport plans per attribute and level.
  With the detailed figure and the top-k patch grid per map (:mod:`interpretability.detail`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from datasets.bag import SlideBag
from datasets.features import FeatureLayout, hier_file_is_complete
from datasets.fingerprint import content_record, json_digest, stat_record
from datasets.hierarchy import patch_px
from datasets.tensor_bag import read_tensor_bag
from inference.slide_inputs import (
    CASE,
    RAW,
    TENSOR,
    SlideInput,
    read_case_bag,
    read_feature_bag,
    run_magnifications,
)
from models.passes import evaluating, forward_bag
from models.registry import model_info
from models.survival import risk_from_survival, survival_from_logits
from preprocess.wsi.options import TileFlags
from training.config import RunConfig
from training.results import CONFIG_FILE, checkpoint_path
from utils.atomic_io import atomic_path, atomic_write_text
from utils.cli_flags import DeviceFlags
from utils.errors import InputError, one_line

PREDICTIONS_FILE = "predictions.csv"
CACHE_DIRNAME = "feature_cache"
HEATMAP_DIRNAME = "heatmaps"
DETAIL_FIGURES = "detail+top_grid"  # which figures a heatmap folder holds (older folders are redrawn)


# ------------------------------------------------------------------------------------------ the run


@dataclass
class RunFolds:
    """A finished run and the folds whose checkpoints are used."""

    run_dir: Path
    config: RunConfig
    task: object  # datasets.tasks.TaskSpec
    folds: list[int]

    def checkpoint(self, fold: int) -> Path:
        return checkpoint_path(self.run_dir, fold)


def open_run(run_dir: str | Path, folds: list[int] | None = None) -> RunFolds:
    """Check the run folder, its config and the fold checkpoints (one-line errors); load nothing heavy.

    ``folds`` None: every fold of the run whose checkpoint exists.
    """
    from inference.runs import read_run_config

    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise InputError(f"--run {run_dir}: no such run folder")
    if not (run_dir / CONFIG_FILE).is_file():
        raise InputError(f"--run {run_dir}: no {CONFIG_FILE} (not a main.py run folder)")
    from inference.runs import run_task

    config = read_run_config(run_dir / CONFIG_FILE)
    task = run_task(config, run_dir / CONFIG_FILE)
    if folds is None:
        folds = [k for k in range(config.k) if checkpoint_path(run_dir, k).is_file()]
        if not folds:
            raise InputError(f"--run {run_dir}: no fold checkpoints (s_<k>_checkpoint.pt, k < {config.k})")
    else:
        folds = list(dict.fromkeys(int(k) for k in folds))
        if not folds:
            raise InputError("--folds: name at least one fold")
        for k in folds:
            if not 0 <= k < config.k:
                raise InputError(f"--folds {k}: the run has folds 0..{config.k - 1}")
            if not checkpoint_path(run_dir, k).is_file():
                raise InputError(
                    f"{checkpoint_path(run_dir, k)}: checkpoint not found (fold {k} of run {run_dir})"
                )
    return RunFolds(run_dir, config, task, folds)


# ------------------------------------------------------------------------------------------ options


@dataclass
class PredictOptions:
    """Settings of one ``predict.py`` call (the slides themselves excepted)."""

    heatmaps: bool = False
    top_tiles: int = 4
    device: str = DeviceFlags.device
    level0_mag: float | None = TileFlags.level0_mag  # raw slides (else the CSV, else the metadata)
    min_tissue: float = TileFlags.min_tissue
    batch_size: int = TileFlags.batch_size
    workers: int = TileFlags.workers


@dataclass
class SlideOutcome:
    """What happened to one slide."""

    slide_id: str
    status: str  # "done", "reused" or "failed"
    row: dict | None = None
    message: str = ""
    seconds: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ raw slides


class RawFeatureCache:
    """Features of raw slides under ``<out>/feature_cache/``, extracted once with the run's image tower.

    ``sources/<slide>.json`` records the slide file (size, mtime), the extraction settings and the
    tower; a slide whose record differs (or that has no finished files) is extracted again.
    """

    def __init__(self, root: Path, config: RunConfig, options: PredictOptions, device: torch.device):
        self.config = config
        self.options = options
        self.device = device
        self.layout = FeatureLayout(root, config.task, config.feature_extractor)
        self._settings: dict | None = None
        self._tower = None

    def settings(self) -> dict:
        """Extraction settings and the image tower's identity (part of each raw slide's input record)."""
        if self._settings is None:
            from models.towers.loading import TowerSource, tower_identity

            source = TowerSource(self.config.feature_extractor, self.config.text_tower)
            self._settings = {
                "extractor": self.config.feature_extractor,
                "weights": self.config.text_tower,
                "min_tissue": float(self.options.min_tissue),
                "level0_mag_flag": self.options.level0_mag,
                "tower": tower_identity(source),
            }
        return self._settings

    def _record_path(self, slide_id: str) -> Path:
        return self.layout.root / "sources" / f"{slide_id}.json"

    def record(self, inp: SlideInput) -> dict:
        return {
            "slide": str(inp.path),
            "stat": stat_record(inp.path),
            "level0_mag": inp.level0_mag,
            **self.settings(),
        }

    def is_current(self, inp: SlideInput) -> bool:
        layout, sid = self.layout, inp.slide_id
        finished = layout.low_file(sid).is_file() and layout.high_file(sid).is_file()
        if not finished or not hier_file_is_complete(layout.hier_file(sid)):
            return False
        try:
            stored = json.loads(self._record_path(inp.slide_id).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return stored == json.loads(json.dumps(self.record(inp)))

    def load_tower(self):
        """The run's image tower (loaded once, on first need)."""
        if self._tower is None:
            from models.towers import load_towers

            towers = load_towers(
                self.config.feature_extractor,
                source=self.config.text_tower,
                sides=("image",),
                device=self.device,
            )
            self._tower = towers.image.eval()
        return self._tower

    def ensure(self, inp: SlideInput, progress: Callable | None = None) -> FeatureLayout:
        """Extract ``inp``'s features and build its hierarchy unless the cache is current."""
        from preprocess.hierarchy import build_slide_hierarchy
        from preprocess.wsi.pipeline import ExtractOptions, extract_slide
        from preprocess.wsi.sources import SlideSource

        if self.is_current(inp):
            return self.layout
        layout, sid = self.layout, inp.slide_id
        for stale in (
            self._record_path(sid),
            layout.hier_file(sid),
            layout.low_file(sid),
            layout.high_file(sid),
        ):
            stale.unlink(missing_ok=True)  # our own cache: an out-of-date entry is rebuilt from scratch
        options = ExtractOptions(
            extractor=self.config.feature_extractor,
            weights=self.config.text_tower,
            level0_mag=self.options.level0_mag,
            min_tissue=self.options.min_tissue,
            batch_size=self.options.batch_size,
            workers=self.options.workers,
            device=str(self.device),
        )
        source = SlideSource(inp.slide_id, inp.path, inp.level0_mag)
        result = extract_slide(source, self.layout, self.load_tower(), options, progress=progress)
        build_slide_hierarchy(self.layout, inp.slide_id, int(result.level0_mag), overwrite=True)
        atomic_write_text(
            self._record_path(inp.slide_id), json.dumps(self.record(inp), sort_keys=True) + "\n"
        )
        return self.layout


# ------------------------------------------------------------------------------------------ predictor


TRAILING_COLUMNS = ["folds", "kind", "source", "input_digest", "model_digest", "heatmaps"]


def prediction_columns(class_names, folds: list[int]) -> list[str]:
    """Columns of ``predictions.csv`` (classification runs)."""
    cols = ["slide_id", "label", "pred", "pred_class", *[f"prob_{c}" for c in class_names]]
    for k in folds:
        cols += [f"fold_{k}_pred", *[f"fold_{k}_prob_{c}" for c in class_names]]
    return [*cols, *TRAILING_COLUMNS]


def survival_columns(n_bins: int, folds: list[int], curves: bool = True) -> list[str]:
    """Columns of ``predictions.csv`` of a survival run (``curves`` False: risks only, Cox runs)."""
    bins = [f"survival_{b}" for b in range(n_bins)] if curves else []
    cols = ["slide_id", "risk", *bins]
    for k in folds:
        cols += [f"fold_{k}_risk", *[f"fold_{k}_{c}" for c in bins]]
    return [*cols, *TRAILING_COLUMNS]


def fold_curve(logits: torch.Tensor, fold: int) -> np.ndarray:
    """[n_bins] survival curve of one fold's hazard logits (as the run's evaluation computes it); a
    non-finite output is an :class:`InputError` naming the fold."""
    curve = survival_from_logits(logits.detach().float().reshape(-1)).cpu().numpy().astype(np.float64)
    if not np.isfinite(curve).all():
        raise InputError(f"fold {fold}: the model's survival output is not finite ({curve.tolist()})")
    return curve


def ensemble_curve(curves: dict[int, np.ndarray]) -> tuple[np.ndarray, float]:
    """The fold ensemble: the mean survival curve over the folds and its risk (the training code's
    :func:`models.survival.risk_from_survival`)."""
    mean = np.mean(np.stack(list(curves.values())), axis=0)
    return mean, float(risk_from_survival(torch.from_numpy(mean)))


class Predictor:
    """Predicts slides with the fold models of one run into one output folder (module docstring)."""

    def __init__(self, run: RunFolds, out_dir: str | Path, options: PredictOptions):
        from utils.device import resolve_device

        self.run = run
        self.config = run.config
        self.task = run.task
        self.out_dir = Path(out_dir)
        self.options = options
        self.device = resolve_device(options.device)
        self.info = model_info(self.config.model_type)
        self.survival = self.info.survival
        # a Cox run's curves only carry the ranking (docs/survival.md §5.2): its rows hold risks only
        self.curves = not (self.survival and self.config.surv_loss == "cox")
        if self.survival:
            self.columns = survival_columns(self.task.num_classes, run.folds, self.curves)
        else:
            self.columns = prediction_columns(self.task.class_names, run.folds)
        self.heatmap_source = self.info.patch_scores
        if options.heatmaps and self.heatmap_source is None:
            raise InputError(
                f"--heatmaps: model_type {self.config.model_type} has no per-patch scores (HiVE_MIL, ABMIL, "
                "LiteMIL and TransMIL have, also as _5x; HiLa its transport plans; ABMIL_surv, TransMIL_surv)"
            )
        if options.top_tiles < 0:
            raise InputError(f"--top-tiles must be >= 0, got {options.top_tiles}")
        self.fold_digests = {k: self._fold_digest(k) for k in run.folds}
        self.model_digest = json_digest(self.fold_digests)
        self.cache = RawFeatureCache(self.out_dir / CACHE_DIRNAME, self.config, options, self.device)
        self.models: dict[int, tuple[torch.nn.Module, object]] = {}
        self._prompts = None

    # ---- records

    def _fold_digest(self, fold: int) -> str:
        from models.towers.loading import TowerSource, tower_identity

        record = {
            "settings": self.config.resume_identity(),
            "fold": fold,
            "checkpoint": content_record(self.run.checkpoint(fold)),
        }
        if model_info(self.config.model_type).text_tower:
            record["tower"] = tower_identity(
                TowerSource(self.config.feature_extractor, self.config.text_tower)
            )
        return json_digest(record)

    def input_digest(self, inp: SlideInput) -> str:
        if inp.kind == RAW:
            inp.extra = {"extraction": self.cache.settings()}
        return json_digest(inp.input_record())

    def heatmap_dir(self, slide_id: str, fold: int) -> Path:
        return self.out_dir / HEATMAP_DIRNAME / slide_id / f"fold_{fold}"

    def heatmaps_current(self, slide_id: str, digest: str) -> bool:
        from interpretability.heatmaps import SCORES_FILE, read_scores_meta

        for k in self.run.folds:
            meta = read_scores_meta(self.heatmap_dir(slide_id, k) / SCORES_FILE)
            if not meta or (
                meta.get("input_digest"),
                meta.get("fold_digest"),
                meta.get("top_k"),
                meta.get("figures"),
            ) != (digest, self.fold_digests[k], self.options.top_tiles, DETAIL_FIGURES):
                return False
        return True

    # ---- previous results

    def read_previous(self) -> dict[str, dict]:
        """Rows of an earlier ``predictions.csv`` in this folder (as text), by slide id."""
        path = self.out_dir / PREDICTIONS_FILE
        if not path.is_file():
            return {}
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        except Exception:  # an unreadable earlier file is recomputed, not fatal
            return {}
        if not {"slide_id", "input_digest", "model_digest"} <= set(frame.columns):
            return {}
        return {str(r["slide_id"]): r for r in frame.to_dict("records")}

    def reusable(self, old: dict | None, inp: SlideInput, digest: str) -> dict | None:
        """The earlier row of ``inp`` when it was computed from the same inputs and models, else None."""
        if old is None or old.get("input_digest") != digest or old.get("model_digest") != self.model_digest:
            return None
        if list(old) != self.columns:
            return None
        if self.options.heatmaps and not self.heatmaps_current(inp.slide_id, digest):
            return None
        row = dict(old)
        if not self.survival:
            row["label"] = "" if inp.label is None else str(inp.label)
        if self.options.heatmaps:
            row["heatmaps"] = f"{HEATMAP_DIRNAME}/{inp.slide_id}"
        return row

    def write(self, rows: list[dict]) -> Path:
        path = self.out_dir / PREDICTIONS_FILE
        frame = pd.DataFrame(rows, columns=self.columns)
        with atomic_path(path, suffix=".csv") as tmp:
            frame.to_csv(tmp, index=False)
        return path

    # ---- models

    def prepare(self, pending: list[SlideInput]) -> None:
        """Load what the pending slides need, before any of them (errors here stop the run)."""
        if not pending:
            return
        if any(inp.kind == RAW for inp in pending):
            low, high = run_magnifications(self.config)
            if (low, high) != (5.0, 20.0):
                raise InputError(
                    f"raw slides: feature extraction tiles 5x and 20x; the run uses {self.config.low_mag}/"
                    f"{self.config.high_mag}"
                )
            if any(inp.kind == RAW and not self.cache.is_current(inp) for inp in pending):
                self.cache.load_tower()
        self.load_models()
        if self.options.heatmaps and self.heatmap_source == "class evidence":
            from inference.runs import load_prompts

            self._prompts = load_prompts(self.config, self.task)

    def load_models(self) -> None:
        from inference.runs import load_fold_model

        for k in self.run.folds:
            if k in self.models:
                continue
            model = load_fold_model(self.config, self.task, self.run.checkpoint(k), self.device)
            with evaluating(model, self.device, self.config.amp):
                cache = model.precompute()
            self.models[k] = (model, cache)

    # ---- one slide

    def load_bag(self, inp: SlideInput, progress: Callable | None = None) -> SlideBag:
        if inp.kind == TENSOR:
            low, high = run_magnifications(self.config)
            return read_tensor_bag(
                inp.path, inp.slide_id, self.config.feature_dim, low, high, inp.level0_mag, inp.label
            )
        if inp.kind == CASE:
            return read_case_bag(inp, self.config.feature_dim)
        layout = self.cache.ensure(inp, progress) if inp.kind == RAW else inp.layout
        return read_feature_bag(inp, layout, self.config.feature_dim)

    def _check_bag(self, bag: SlideBag) -> None:
        if bag.meta.get("flat") and model_info(self.config.model_type).hierarchy:
            raise InputError(
                f"a flat [N, D] bag has no 5x/20x hierarchy; {self.config.model_type} needs 'x5' and 'x20' "
                "(docs/formats.md §8)"
            )

    def predict(self, inp: SlideInput, digest: str, progress: Callable | None = None) -> SlideOutcome:
        """Predict one slide (and draw its heatmaps); a bad slide gives a failed outcome, never raises
        an :class:`InputError`."""
        start = time.perf_counter()
        stages: dict[str, float] = {}
        try:
            if inp.problem:
                raise InputError(inp.problem)
            if inp.kind == CASE and self.options.heatmaps:
                raise InputError(
                    f"case {inp.slide_id}: heatmaps are drawn per slide (the slides' coordinates are separate "
                    f"frames); name its slides ({', '.join(inp.case.slides)}) or leave out --heatmaps"
                )
            bag = self.load_bag(inp, progress)
            self._check_bag(bag)
            stages["load"] = time.perf_counter() - start
            t = time.perf_counter()
            outputs = self._forward(bag)
            if self.survival:
                row = self._survival_row(inp, outputs)
                pred = None
            else:
                row, pred = self._class_row(inp, outputs)
            stages["predict"] = time.perf_counter() - t
            heat = ""
            if self.options.heatmaps:
                t = time.perf_counter()
                self._heatmaps(inp, bag, pred, row, outputs, digest)
                heat = f"{HEATMAP_DIRNAME}/{inp.slide_id}"
                stages["heatmaps"] = time.perf_counter() - t
        except InputError as err:
            return SlideOutcome(inp.slide_id, "failed", message=str(err), seconds=time.perf_counter() - start)
        except Exception as err:  # one bad slide must not stop the others
            return SlideOutcome(
                inp.slide_id, "failed", message=one_line(err, limit=1000), seconds=time.perf_counter() - start
            )
        row.update(
            {
                "folds": " ".join(map(str, self.run.folds)),
                "kind": inp.kind,
                "source": inp.source,
                "input_digest": digest,
                "model_digest": self.model_digest,
                "heatmaps": heat,
            }
        )
        return SlideOutcome(inp.slide_id, "done", row=row, seconds=time.perf_counter() - start, stages=stages)

    def _forward(self, bag: SlideBag) -> dict:
        """Per fold: the model's output (:func:`models.passes.forward_bag`, the evaluation's forward)."""
        on_device = bag.to(self.device)
        return {
            k: forward_bag(model, on_device, cache, self.device, self.config.amp)
            for k, (model, cache) in self.models.items()
            if k in self.run.folds
        }

    def _class_row(self, inp: SlideInput, outputs: dict) -> tuple[dict, int]:
        """Class probabilities per fold and of the ensemble (mean probability); non-finite refused."""
        probs = {}
        for k in self.run.folds:
            logits = outputs[k].logits.float()
            probs[k] = torch.softmax(logits, dim=1).reshape(-1).cpu().numpy().astype(np.float64)
            if not (np.isfinite(probs[k]).all() and bool(torch.isfinite(logits).all())):
                shown = ", ".join(f"{v:g}" for v in logits.reshape(-1)[:4].tolist())
                raise InputError(
                    f"fold {k}: the model's logits are not finite ({shown}); the features are out of the "
                    "range the model was trained on (check how they were extracted)"
                )
        mean = np.mean(np.stack([probs[k] for k in self.run.folds]), axis=0)
        pred = int(np.argmax(mean))
        names = self.task.class_names
        row: dict = {
            "slide_id": inp.slide_id,
            "label": "" if inp.label is None else inp.label,
            "pred": pred,
            "pred_class": names[pred],
            **{f"prob_{c}": float(mean[i]) for i, c in enumerate(names)},
        }
        for k in self.run.folds:
            row[f"fold_{k}_pred"] = int(np.argmax(probs[k]))
            row.update({f"fold_{k}_prob_{c}": float(probs[k][i]) for i, c in enumerate(names)})
        return row, pred

    def _survival_row(self, inp: SlideInput, outputs: dict) -> dict:
        """Risk and per-bin survival per fold and of the ensemble (the mean curve; module docstring)."""
        curves = {k: fold_curve(outputs[k].logits, k) for k in self.run.folds}
        mean, risk = ensemble_curve(curves)
        row: dict = {"slide_id": inp.slide_id, "risk": risk}
        if self.curves:
            row.update({f"survival_{b}": float(v) for b, v in enumerate(mean)})
        for k in self.run.folds:
            row[f"fold_{k}_risk"] = float(risk_from_survival(torch.from_numpy(curves[k])))
            if self.curves:
                row.update({f"fold_{k}_survival_{b}": float(v) for b, v in enumerate(curves[k])})
        return row

    # ---- heatmaps

    def _patch_sides(self, bag: SlideBag, model) -> tuple[int | None, int | None]:
        from interpretability.attribution import grid_step, patch_sizes

        low, high = run_magnifications(self.config)
        if not bag.meta.get("flat"):
            return patch_sizes(bag, low, high)
        mag = high if self.info.magnification == "20x" else low
        level0 = bag.meta.get("level0_mag")
        side = (
            patch_px(level0, mag)
            if level0
            else (grid_step(bag.coords5.numpy()) if bag.coords5 is not None else None)
        )
        return side, side

    def _scores(self, model, cache, bag: SlideBag, output, pred: int | None) -> dict:
        from interpretability.heatmaps import (
            attention_patch_scores,
            hivemil_patch_scores,
            transport_plan_patch_scores,
        )

        if self.heatmap_source == "class evidence":
            from interpretability.attribution import explain_slide

            expl = explain_slide(model, bag, self.task.class_names, self._prompts, top_n=1, cache=cache)
            return {scale: hivemil_patch_scores(expl, scale, pred) for scale in ("5x", "20x")}
        if self.heatmap_source == "transport plan":
            return transport_plan_patch_scores(bag, output, model.attributes, self._patch_sides(bag, model))
        scores = attention_patch_scores(
            bag, output.extras, self.info.magnification, self.config.model_type, self._patch_sides(bag, model)
        )
        if not scores:
            raise RuntimeError(f"{self.config.model_type} reported no per-instance attention")
        return scores

    def _statement(self, row: dict, fold: int):
        """What fold ``fold``'s detailed figure says about the prediction (its own and the ensemble's)."""
        from interpretability.detail import Prediction, RiskPrediction

        several = len(self.run.folds) > 1
        if self.survival:
            return RiskPrediction(row[f"fold_{fold}_risk"], fold, row["risk"] if several else None)
        name = self.task.class_names[int(row[f"fold_{fold}_pred"])]
        return Prediction(
            name, row[f"fold_{fold}_prob_{name}"], fold,
            row["pred_class"] if several else None, row[f"prob_{row['pred_class']}"] if several else None,
        )  # fmt: skip

    def _heatmaps(
        self, inp: SlideInput, bag: SlideBag, pred: int | None, row: dict, outputs: dict, digest: str
    ) -> None:
        from interpretability.detail import save_detail_figures
        from interpretability.heatmaps import read_thumbnail, save_heatmaps
        from preprocess.wsi.reader import open_slide

        reader = image = None
        if inp.slide_file is not None:
            try:
                reader = open_slide(inp.slide_file)
                image = read_thumbnail(reader)
            except InputError:
                if inp.kind == RAW:
                    raise
                reader = image = None  # the heatmaps are drawn on the patch grid instead
        try:
            for k in self.run.folds:
                model, cache = self.models[k]
                scores = self._scores(model, cache, bag, outputs[k], pred)
                meta = {
                    "slide_id": inp.slide_id,
                    "fold": k,
                    "model_type": self.config.model_type,
                    "scores": self.heatmap_source,
                    "input_digest": digest,
                    "fold_digest": self.fold_digests[k],
                    "top_k": self.options.top_tiles,
                    "slide_file": None if inp.slide_file is None else str(inp.slide_file),
                    "thumbnail": image is not None,
                    "figures": DETAIL_FIGURES,
                }
                if self.survival:
                    meta["risk"] = row["risk"]
                    title = f"{inp.slide_id}, fold {k} (ensemble risk {row['risk']:.3f}),"
                else:
                    meta.update(class_index=pred, class_name=self.task.class_names[pred])
                    title = f"{inp.slide_id}, fold {k} (ensemble: {self.task.class_names[pred]}),"
                if self.heatmap_source == "transport plan":
                    meta["attributes"] = list(model.attributes)
                out_dir = self.heatmap_dir(inp.slide_id, k)
                said = self._statement(row, k)

                def figures(name, item, layer, out_dir=out_dir, said=said, fold=k):
                    return save_detail_figures(
                        out_dir, name, item, layer, said, image=image, reader=reader, k=self.options.top_tiles,
                        title=f"{inp.slide_id}, fold {fold}:",
                    )  # fmt: skip

                save_heatmaps(
                    scores, out_dir, image=image, reader=reader,
                    top_k=self.options.top_tiles if reader is not None else 0, title=title, meta=meta,
                    figures=figures,
                )  # fmt: skip
        finally:
            if reader is not None:
                reader.close()


# ------------------------------------------------------------------------------------------ a whole call


@dataclass
class PredictionReport:
    """Outcome of :func:`predict_slides`."""

    outcomes: list[SlideOutcome]
    path: Path

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)


def predict_slides(
    predictor: Predictor,
    inputs: list[SlideInput],
    *,
    on_outcome: Callable[[SlideOutcome], None] | None = None,
    progress: Callable | None = None,
    wrap: Callable = lambda items: items,
) -> PredictionReport:
    """Predict ``inputs`` into ``predictor.out_dir`` (resumable; ``predictions.csv`` after every slide).

    ``on_outcome`` is called once per slide; ``progress(total, name)`` makes a per-slide tile progress
    callback for raw-slide extraction; ``wrap`` wraps the slide loop (e.g. a tqdm bar).
    """
    previous = predictor.read_previous()
    digests = {inp.slide_id: predictor.input_digest(inp) for inp in inputs if inp.problem is None}
    rows: dict[str, dict] = {}
    for inp in inputs:
        if inp.problem is None:
            row = predictor.reusable(previous.get(inp.slide_id), inp, digests[inp.slide_id])
            if row is not None:
                rows[inp.slide_id] = row
    named = {inp.slide_id for inp in inputs}
    kept = [
        r
        for sid, r in previous.items()
        if sid not in named
        and r.get("model_digest") == predictor.model_digest
        and list(r) == predictor.columns
    ]
    pending = [inp for inp in inputs if inp.slide_id not in rows and inp.problem is None]
    predictor.prepare(pending)

    def ordered() -> list[dict]:
        return [rows[i.slide_id] for i in inputs if i.slide_id in rows] + kept

    path = predictor.write(ordered())
    reused = set(rows)
    outcomes = []
    for inp in wrap(inputs):
        if inp.slide_id in reused:
            outcome = SlideOutcome(inp.slide_id, "reused", row=rows[inp.slide_id])
        else:
            outcome = predictor.predict(inp, digests.get(inp.slide_id, ""), progress)
            if outcome.row is not None:
                rows[inp.slide_id] = outcome.row
                path = predictor.write(ordered())
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
    return PredictionReport(outcomes, path)
