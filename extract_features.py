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
import socket
import sys
import time
from collections import deque
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from datasets.features import FeatureLayout
from preprocess.wsi.options import TileFlags
from preprocess.wsi.pipeline import ExtractOptions, SlideResult, extract_slide, is_finished
from preprocess.wsi.sources import SlideSource, find_slides
from utils.cli_flags import AmpFlags, DataRootFlags, DeviceFlags, TowerFlags
from utils.device import resolve_device
from utils.errors import InputError, one_line, run_cli
from utils.flags import add_flags, read_flags
from utils.ray_cluster import error_line, import_ray, start_ray

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


def load_image_tower(extractor: str, weights: str | None, device):
    """The image side of ``extractor`` (weights from ``--text_tower`` when given), frozen, on ``device``."""
    from models.towers import load_towers

    return load_towers(extractor, source=weights, sides=("image",), device=device).image.eval()


def extract_one(source: SlideSource, layout: FeatureLayout, tower, options: ExtractOptions) -> SlideResult:
    """Extract one slide with a tile progress bar; any failure becomes a one-line failed result."""
    bars: list[tqdm] = []

    def tile_progress(total: int, name: str):
        bars.append(tqdm(total=total, desc=f"tiles {name[:24]}", unit="tile", leave=False, file=sys.stderr))
        return bars[-1].update

    name = source.path if source.path is not None else source.slide_id
    try:
        return extract_slide(source, layout, tower, options, progress=tile_progress)
    except InputError as err:  # SlideError: unreadable file, unknown magnification, no tissue
        return SlideResult(source.slide_id, "failed", message=f"{name}: {err}")
    except Exception as err:  # e.g. a corrupt tile met while reading: report it, go on with the next slide
        message = one_line(err, limit=1000)
        return SlideResult(source.slide_id, "failed", message=f"{name}: {message}")
    finally:
        for bar in bars:
            bar.close()


def run_slides(
    sources: list[SlideSource], layout: FeatureLayout, tower, options: ExtractOptions | None
) -> list[SlideResult]:
    """Extract the unfinished slides with a progress bar; print one summary line per slide."""
    results = []
    for source in tqdm(sources, desc="slides", unit="slide", file=sys.stderr):
        if options is None or is_finished(layout, source.slide_id, options):
            result = SlideResult(source.slide_id, "skipped")
        else:
            result = extract_one(source, layout, tower, options)
        tqdm.write(result.summary_line(), file=sys.stderr if result.status == "failed" else sys.stdout)
        results.append(result)
    return results


class SlideWorker:
    """A Ray actor: loads the encoder once, then extracts the slides it is handed with :func:`extract_one`."""

    def __init__(self, options: ExtractOptions, threads: int):
        self.error = None
        self.host = socket.gethostname()
        try:
            import torch

            torch.set_num_threads(max(1, threads))
            device = resolve_device(options.device)
            self.tower = load_image_tower(options.extractor, options.weights, device)
            self.options = replace(options, device=str(device))
        except InputError as err:  # reported by ready(), so that the driver stops with one line
            self.error = str(err)

    def ready(self) -> str | None:
        """None when the encoder is loaded, else the one-line problem."""
        return self.error

    def extract(self, source: SlideSource, layout: FeatureLayout) -> SlideResult:
        if is_finished(layout, source.slide_id, self.options):  # done meanwhile by another run
            return SlideResult(source.slide_id, "skipped")
        return extract_one(source, layout, self.tower, self.options)


WORKER_RESTARTS = 2  # a worker process that dies (e.g. killed by a slide) is restarted this often


def _worker_resources(ray, args: argparse.Namespace) -> tuple[int, float, int]:
    """(workers, GPUs each, CPUs each): one worker per GPU (or ``--ray-workers``, sharing the GPUs);
    without GPUs (or with ``--device cpu``) the CPUs of the largest node are shared out."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    total_gpus = sum(n.get("GPU", 0) for n in nodes) if args.device != "cpu" else 0
    if total_gpus >= 1:
        workers = args.ray_workers or int(total_gpus)
        return workers, min(1.0, total_gpus / workers), 1
    workers = args.ray_workers or 1
    node_cpus = max((int(n.get("CPU", 1)) for n in nodes), default=1)
    total_cpus = sum(int(n.get("CPU", 0)) for n in nodes)
    return workers, 0.0, max(1, min(node_cpus, total_cpus // workers))


def run_slides_ray(
    sources: list[SlideSource], layout: FeatureLayout, args: argparse.Namespace, options: ExtractOptions
) -> tuple[list[SlideResult], float]:
    """:func:`run_slides` on Ray workers: finished slides are skipped, each other slide goes to the next
    free worker; a slide that fails (or kills its worker) is reported in one line and the rest go on.
    Returns the results and the time the workers were ready (throughput is counted from there)."""
    ray = import_ray()
    session = start_ray(args.address)
    try:
        print(session.describe())
        count, gpus, cpus = _worker_resources(ray, args)
        actor = ray.remote(SlideWorker).options(
            num_cpus=cpus, num_gpus=gpus, max_restarts=WORKER_RESTARTS, max_task_retries=0
        )
        t0 = time.perf_counter()
        workers = [actor.remote(options, cpus) for _ in range(count)]
        problems = [p for p in ray.get([w.ready.remote() for w in workers]) if p]
        if problems:
            raise InputError(problems[0])
        print(
            f"{count} Ray worker(s) ({cpus} CPU, {gpus:g} GPU each) ready in {time.perf_counter() - t0:.1f} s"
        )
        start = time.perf_counter()
        results = []
        todo = deque()
        bar = tqdm(total=len(sources), desc="slides", unit="slide", file=sys.stderr)

        def report(result: SlideResult) -> None:
            tqdm.write(result.summary_line(), file=sys.stderr if result.status == "failed" else sys.stdout)
            results.append(result)
            bar.update(1)

        for source in sources:
            if is_finished(layout, source.slide_id, options):
                report(SlideResult(source.slide_id, "skipped"))
            else:
                todo.append(source)
        deaths = {i: 0 for i in range(count)}
        running = {}
        idle = list(range(count))
        while todo or running:
            while todo and idle:
                i = idle.pop()
                source = todo.popleft()
                running[workers[i].extract.remote(source, layout)] = (i, source)
            if not running:  # every worker is gone
                for source in todo:
                    report(SlideResult(source.slide_id, "failed", message="no Ray worker left"))
                break
            (ref,), _ = ray.wait(list(running), num_returns=1)
            i, source = running.pop(ref)
            try:
                report(ray.get(ref))
            except Exception as err:  # the worker process died (the slide's own errors are results)
                deaths[i] += 1
                name = source.path if source.path is not None else source.slide_id
                report(
                    SlideResult(source.slide_id, "failed", message=f"{name}: worker died ({error_line(err)})")
                )
                if deaths[i] > WORKER_RESTARTS:
                    continue  # not restarted any more: leave it out
            idle.append(i)
        bar.close()
        return results, start
    finally:
        session.close()


def summarize(results: list[SlideResult], seconds: float) -> str:
    """Final summary: slide counts, tiles, throughput and where the time went."""
    done = [r for r in results if r.status == "done"]
    count = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    tiles = sum(r.num_low + r.num_high for r in done)
    stages: dict[str, float] = {}
    for r in done:
        for key, value in r.times.items():
            stages[key] = stages.get(key, 0.0) + value
    lines = [
        f"slides: {count['done']} extracted, {count['skipped']} skipped (already done), {count['failed']} failed",
        f"tiles: {sum(r.num_low for r in done)} 5x + {sum(r.num_high for r in done)} 20x in {seconds:.1f} s"
        + (f" ({tiles / seconds:.1f} tiles/s)" if tiles and seconds > 0 else ""),
    ]
    if stages:
        lines.append("time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
    return "\n".join(lines)


def extract_options(args: argparse.Namespace, device: str) -> ExtractOptions:
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
    sources = find_slides(args.slides, args.slide_dir)
    if args.limit is not None:
        sources = sources[: args.limit]
    layout = FeatureLayout(Path(args.data_root_dir), args.task, args.feature_extractor)
    # finished = both files written by this run's encoder; another encoder's files are not skipped
    pending = [s for s in sources if not is_finished(layout, s.slide_id, extract_options(args, args.device))]
    print(f"{len(sources)} slides, {len(sources) - len(pending)} already done; output in {layout.root}")
    tower = options = None
    if pending and args.ray:  # each worker resolves --device and loads the tower itself
        results, start = run_slides_ray(sources, layout, args, extract_options(args, args.device))
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
