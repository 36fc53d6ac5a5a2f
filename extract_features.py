"""Raw slides -> 5x and 20x patch-feature bags: ``DATA_ROOT/<task>_<extractor>/<extractor>_{5x,20x}/<slide>.h5``.

For every slide: tissue segmentation on a thumbnail, nested 5x/20x tiling (each kept 5x tile holds a
4x4 block of 20x tiles; a 20x tile is kept when it has enough tissue and its 5x parent is kept),
batched encoding with the image side of the chosen tower, atomic HDF5 output (``features`` [N, D]
float32, ``coords`` [N, 2] int64 level-0 top-left corners). Finished slides are skipped, so an
interrupted run resumes; a slide that fails is reported in one line and the others continue (exit
code 1 when any failed).

    python extract_features.py --slides SLIDES_DIR --data_root_dir R --task tcga_brca --feature-extractor plip
    python extract_features.py ... --ray [--address auto] [--ray-workers N]   # slides spread over Ray workers
    python create_hierarchical_features.py --dataset-root-path R --dataset-name tcga_brca \
        --feature-extractor-name plip --low-mag 5 --high-mag 20 --max-patches 16
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from preprocess.wsi.options import TileFlags
from utils.cli_flags import AmpFlags, DataRootFlags, DeviceFlags, TowerFlags
from utils.errors import InputError, run_cli
from utils.flags import add_flags, read_flags

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="extract_features.py", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--slides", required=True, help="folder of slide files (searched recursively) or a CSV"
    )
    parser.add_argument(
        "--slide-dir", default=None, help="where a CSV without a 'path' column finds <slide_id>.<ext>"
    )
    add_flags(parser, DataRootFlags, aliases={"data_root_dir": ("--data-root",)})
    parser.add_argument("--task", required=True, help="task name used in the output folder, e.g. tcga_brca")
    parser.add_argument(
        "--feature-extractor",
        required=True,
        help="plip, quiltnet, conch, an open_clip model name, or an image-only backbone: resnet50_trunc, uni, "
        "phikon_v2 (from local --text_tower weights)",
    )
    add_flags(parser, TowerFlags, aliases={"text_tower": ("--weights",)})
    add_flags(parser, TileFlags, {"tiling": "tiling and encoding"})
    add_flags(parser, DeviceFlags)
    add_flags(parser, AmpFlags)
    parser.add_argument(
        "--thumbnails", action="store_true", help="write thumbnails/<slide>.png (mask and tiles)"
    )
    parser.add_argument("--limit", type=int, default=None, help="process at most N slides (in listing order)")
    parser.add_argument(
        "--overwrite", action="store_true", help="extract again slides whose files another encoder made"
    )
    ray = parser.add_argument_group("Ray (spread the slides over workers, each holding the encoder once)")
    ray.add_argument(
        "--ray", action="store_true", help="extract on Ray workers (a local instance unless --address)"
    )
    ray.add_argument(
        "--address", default=None, help="join a running Ray cluster: auto, ray://host:port, host:port"
    )
    ray.add_argument(
        "--ray-workers",
        type=int,
        default=None,
        help="number of workers (default: one per GPU of the cluster; without GPUs 1)",
    )
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The flags, with the shared groups' defaults filled in for flags not given."""
    args = build_parser().parse_args(argv)
    for group in (DataRootFlags, TowerFlags, TileFlags, DeviceFlags, AmpFlags):
        for key, value in vars(read_flags(group, args)).items():
            setattr(args, key, value)  # the group defaults for flags not given
    return args


def validate_args(args: argparse.Namespace) -> None:
    """One-line :class:`InputError` for a bad flag, before any heavy work."""
    if not _SAFE_NAME.match(args.feature_extractor):
        raise InputError(
            f"--feature-extractor {args.feature_extractor!r}: use letters, digits and . _ + - only"
        )
    if not _SAFE_NAME.match(args.task):
        raise InputError(f"--task {args.task!r}: use letters, digits and . _ + - only")
    DataRootFlags(args.data_root_dir).required()
    read_flags(TileFlags, args).check()
    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit must be at least 1, got {args.limit}")
    if args.slide_dir is not None and not Path(args.slide_dir).is_dir():
        raise InputError(f"--slide-dir {args.slide_dir}: not a folder")
    if args.ray_workers is not None and args.ray_workers < 1:
        raise InputError(f"--ray-workers must be at least 1, got {args.ray_workers}")
    if not args.ray and (args.address or args.ray_workers is not None):
        raise InputError("--address and --ray-workers need --ray")


def extract_options(args: argparse.Namespace, device: str):
    from preprocess.wsi.pipeline import ExtractOptions

    return ExtractOptions(
        extractor=args.feature_extractor,
        weights=args.text_tower,
        level0_mag=args.level0_mag,
        min_tissue=args.min_tissue,
        batch_size=args.batch_size,
        workers=args.workers,
        device=device,
        amp=args.amp,
        thumbnails=args.thumbnails,
        overwrite=args.overwrite,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    validate_args(args)
    # the work's modules only now: --help and a bad flag answer before torch is imported
    from datasets.features import FeatureLayout
    from preprocess.wsi.batch import load_image_tower, run_slides, run_slides_ray, summarize
    from preprocess.wsi.pipeline import is_finished
    from preprocess.wsi.sources import find_slides
    from utils.device import resolve_device

    sources = find_slides(args.slides, args.slide_dir)
    if args.limit is not None:
        sources = sources[: args.limit]
    layout = FeatureLayout(Path(args.data_root_dir), args.task, args.feature_extractor)
    # finished = both files written by this run's encoder; another encoder's files are not skipped
    pending = [s for s in sources if not is_finished(layout, s.slide_id, extract_options(args, args.device))]
    print(f"{len(sources)} slides, {len(sources) - len(pending)} already done; output in {layout.root}")
    tower = options = None
    if pending and args.ray:  # each worker resolves --device and loads the tower itself
        options = extract_options(args, args.device)
        results, start = run_slides_ray(sources, layout, options, args.address, args.ray_workers)
    else:
        if pending:  # load the tower only when there is work
            device = resolve_device(args.device)
            tower = load_image_tower(args.feature_extractor, args.text_tower, device)
            options = extract_options(args, str(device))
        start = time.perf_counter()
        results = run_slides(sources, layout, tower, options)
    print(summarize(results, time.perf_counter() - start))
    return 1 if any(r.status == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
