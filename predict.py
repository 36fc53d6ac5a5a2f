"""Predict new slides with a finished run: per fold checkpoint and the fold ensemble, optional heatmaps.

    python predict.py --run RESULTS/<task>/<extractor>/<shots>/<run> --slides SLIDES [SLIDES ...] \\
        [--out DIR] [--folds 0 2] [--heatmaps [--top-tiles 4] [--slide-dir RAW_SLIDES]] [--device auto]

``--slides``: slide ids of the run's task, feature folders (``DATA_ROOT/<task>_<extractor>/``), 5x
``.h5`` files, ``.pt``/``.pth`` tensor files, raw slides (``.svs``, ``.tif``, ``.ndpi``, ...: features
extracted with the run's tower into ``DIR/feature_cache/``), folders of tensors or slides, or a CSV
(``slide_id`` and optional ``path``, ``label``, ``level0_mag``, ``slide_path``); docs/formats.md §8.
For a survival run, a case id of its task names the case bag of all its slides (as training built it).
Writes ``DIR/predictions.csv`` (default DIR: ``<run>/predictions/``): per slide each fold's
probabilities and the ensemble (mean probability) with its predicted class; for a survival run each
fold's risk and per-bin survival S(t_b) and the ensemble's (the mean survival curve over the folds and
its risk -sum_b S_b; docs/survival.md §12). A rerun reuses rows whose inputs and checkpoints are
unchanged; a bad slide (also a non-finite model output) is reported in one line and the others go on
(exit code 1). ``--out`` may not be a run folder; the lock is ``DIR/.predict.lock``. ``--heatmaps`` writes ``DIR/heatmaps/<slide>/fold_<k>/``: HiVE-MIL class evidence, the
attention of ABMIL / LiteMIL / TransMIL / ABMIL_surv / TransMIL_surv at 5x and 20x, or the HiLa-style
transport plans per attribute and level, over the slide thumbnail when the raw slide is known, top-k
tiles, a detailed figure (overlay, score histogram, statistics, prediction) and a top-k patch grid per
map, and ``scores.npz``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tqdm import tqdm

from preprocess.wsi.options import TileFlags
from utils.cli_flags import DeviceFlags, ThreadFlags
from utils.errors import InputError, run_cli
from utils.flags import add_flags, read_flags

PREDICT_LOCK = ".predict.lock"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="predict.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="run folder of main.py (config.json + s_<k>_checkpoint.pt)")
    p.add_argument(
        "--slides", required=True, nargs="+", metavar="SLIDES",
        help="slide ids, feature folders or files, .pt/.pth tensors, raw slides, folders or a CSV",
    )  # fmt: skip
    p.add_argument("--out", default=None, help="output folder (default: <run>/predictions)")
    p.add_argument(
        "--folds",
        type=int,
        nargs="+",
        default=None,
        help="fold checkpoints to use (default: every fold present)",
    )
    p.add_argument(
        "--heatmaps",
        action="store_true",
        help="per-patch heatmaps, detailed figures, top tiles and grid, scores.npz",
    )
    p.add_argument(
        "--top-tiles", type=int, default=4, help="top patches cut from the slide per scale (default 4)"
    )
    p.add_argument(
        "--slide-dir",
        default=None,
        help="raw slides <slide_id>.<ext> (searched recursively) for heatmap thumbnails",
    )
    add_flags(p, TileFlags, {"tiling": "raw slides: tiling and encoding"})
    add_flags(p, DeviceFlags)
    add_flags(p, ThreadFlags)
    return p


def validate(args: argparse.Namespace) -> tuple[TileFlags, DeviceFlags, ThreadFlags]:
    """One-line errors for bad flag values, before any work; returns the shared flag groups."""
    if args.top_tiles < 0:
        raise InputError(f"--top-tiles must be >= 0, got {args.top_tiles}")
    threads = read_flags(ThreadFlags, args)
    threads.check()
    return read_flags(TileFlags, args).check(), read_flags(DeviceFlags, args), threads


def _tile_progress(bars: list):
    def make(total: int, name: str):
        bars.append(tqdm(total=total, desc=f"tiles {name[:24]}", unit="tile", leave=False, file=sys.stderr))
        return bars[-1].update

    return make


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tiles, device, threads = validate(args)
    from inference.prediction import PredictOptions, Predictor, open_run, predict_slides
    from inference.slide_inputs import InputResolver
    from utils.locking import FolderLock, LockHeld

    run = open_run(args.run, args.folds)
    inputs = InputResolver(run.config, run.task, args.slide_dir).resolve(args.slides)
    out_dir = Path(args.out).expanduser() if args.out else run.run_dir / "predictions"
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir}: not a folder")
    if (out_dir / "config.json").is_file():  # a run folder: its files and lock are the run's
        raise InputError(
            f"--out {out_dir}: a run folder; predictions go in a folder of their own "
            f"(default: {run.run_dir / 'predictions'})"
        )
    options = PredictOptions(
        heatmaps=args.heatmaps,
        top_tiles=args.top_tiles,
        device=device.device,
        level0_mag=tiles.level0_mag,
        min_tissue=tiles.min_tissue,
        batch_size=tiles.batch_size,
        workers=tiles.workers,
    )
    if threads.threads:
        import torch

        torch.set_num_threads(threads.threads)
    predictor = Predictor(run, out_dir, options)
    try:
        lock = FolderLock(out_dir, PREDICT_LOCK)  # its own lock file: never a run's .lock
        lock.acquire()
    except LockHeld as err:
        raise InputError(f"--out: {err}; wait for it to finish or use another --out") from None
    except OSError as err:
        raise InputError(f"--out {out_dir}: cannot write ({err})") from None
    print(
        f"{len(inputs)} slides, model {run.config.model_type} of {run.run_dir}, folds "
        f"{' '.join(map(str, run.folds))}; output in {out_dir}"
    )
    bars: list = []

    def report(outcome) -> None:
        for bar in bars:
            bar.close()
        bars.clear()
        if outcome.status == "failed":
            tqdm.write(f"failed {outcome.slide_id}: {outcome.message}", file=sys.stderr)
        elif outcome.status == "reused":
            tqdm.write(f"reused {outcome.slide_id} (inputs and checkpoints unchanged)")
        else:
            row = outcome.row
            if "risk" in row:  # a survival run
                what = f"risk {row['risk']:.4f}"
            else:
                p = row[f"prob_{row['pred_class']}"]
                what = f"{row['pred_class']} (p={p:.3f})"
            stages = ", ".join(f"{k} {v:.2f}" for k, v in outcome.stages.items())
            tqdm.write(f"{outcome.slide_id}: {what} in {outcome.seconds:.2f} s ({stages})")

    start = time.perf_counter()
    try:
        result = predict_slides(
            predictor,
            inputs,
            on_outcome=report,
            progress=_tile_progress(bars),
            wrap=lambda items: tqdm(items, desc="slides", unit="slide", file=sys.stderr),
        )
    finally:
        lock.release()
    done = [o for o in result.outcomes if o.status == "done"]
    per_slide = f" ({sum(o.seconds for o in done) / len(done):.2f} s per predicted slide)" if done else ""
    print(
        f"slides: {len(done)} predicted, {result.count('reused')} reused, {result.count('failed')} failed in "
        f"{time.perf_counter() - start:.1f} s{per_slide}; wrote {result.path}"
    )
    return 1 if result.count("failed") else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
