"""Regenerate the README's predict.py pictures (docs/images/predict_*.png) by running predict.py.

    python scripts/make_predict_example.py [--out docs/images] [--work DIR]

1. ``predict_attention_overlay.png``: a synthetic 40x pyramidal slide with a planted region
   (``tests/planted.py``), an ABMIL run whose attention is rigged to that region,
   ``predict.py --heatmaps`` on the raw slide: the 20x attention over the slide thumbnail.
2. ``predict_hivemil_evidence.png``: a short demo HiVE-MIL run (:func:`inference.demo_run.ensure_demo_run`),
   ``predict.py --heatmaps`` on one demo slide from its features: the 5x class evidence on the patch grid.

Work files go to ``--work`` (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from utils.atomic_io import atomic_path  # noqa: E402
from utils.errors import InputError, run_cli  # noqa: E402

MAX_BYTES = 200_000


def _predict(*argv: str) -> None:
    command = [
        sys.executable,
        str(ROOT / "predict.py"),
        *argv,
        "--heatmaps",
        "--top-tiles",
        "2",
        "--threads",
        "1",
    ]
    print("$", " ".join(command[1:]))
    subprocess.run(command, check=True, cwd=ROOT)


def _publish(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` as a 256-colour palette PNG (the slide texture makes full-colour
    overlays large); refuse a result above MAX_BYTES."""
    from PIL import Image

    target.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE)
    with atomic_path(target, suffix=".png") as tmp:
        small.save(tmp, format="PNG", optimize=True)
    size = target.stat().st_size
    if size > MAX_BYTES:
        target.unlink()
        raise InputError(
            f"{source}: {size} bytes as a palette PNG, above the {MAX_BYTES} allowed for docs/images"
        )
    print(f"wrote {target} ({size} bytes)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "images"), help="where the PNGs go")
    parser.add_argument("--work", default=None, help="work folder (default: temporary)")
    args = parser.parse_args(argv)
    from inference.demo_run import ensure_demo_run
    from tests.planted import planted_slide, rigged_abmil_run

    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="predict-example-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        slides = work / "slides"
        slides.mkdir(parents=True, exist_ok=True)
        slide = planted_slide(slides / "planted.svs")
        run = rigged_abmil_run(work / "results", slide)
        _predict("--run", str(run), "--slides", str(slides), "--out", str(work / "abmil"))
        _publish(
            work / "abmil" / "heatmaps" / "planted" / "fold_0" / "heatmap_20x.png",
            out / "predict_attention_overlay.png",
        )

        demo = ensure_demo_run(max_epochs=3, results_dir=work / "demo")
        _predict(
            "--run", str(demo), "--slides", "demo_slide_005", "--folds", "0", "--out", str(work / "hivemil")
        )
        _publish(
            work / "hivemil" / "heatmaps" / "demo_slide_005" / "fold_0" / "heatmap_5x.png",
            out / "predict_hivemil_evidence.png",
        )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
