"""Extracting a list of slides (``extract_features.py``): one after the other in this process
(:func:`run_slides`), or spread over Ray workers that each hold the encoder once (:func:`run_slides_ray`).

Every slide goes through :func:`preprocess.wsi.pipeline.extract_slide`; finished slides are skipped;
a slide that fails is one :class:`~preprocess.wsi.pipeline.SlideResult` line and the others go on.
"""

from __future__ import annotations

import socket
import sys
import time
from collections import deque
from dataclasses import replace

from tqdm import tqdm

from datasets.features import FeatureLayout
from preprocess.wsi.pipeline import ExtractOptions, SlideResult, extract_slide, is_finished
from preprocess.wsi.sources import SlideSource
from utils.device import resolve_device
from utils.errors import InputError, one_line
from utils.ray_cluster import error_line, import_ray, start_ray


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


def _worker_resources(ray, device: str, ray_workers: int | None) -> tuple[int, float, int]:
    """(workers, GPUs each, CPUs each): one worker per GPU (or ``ray_workers``, sharing the GPUs);
    without GPUs (or with ``--device cpu``) the CPUs of the largest node are shared out."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    total_gpus = sum(n.get("GPU", 0) for n in nodes) if device != "cpu" else 0
    if total_gpus >= 1:
        workers = ray_workers or int(total_gpus)
        return workers, min(1.0, total_gpus / workers), 1
    workers = ray_workers or 1
    node_cpus = max((int(n.get("CPU", 1)) for n in nodes), default=1)
    total_cpus = sum(int(n.get("CPU", 0)) for n in nodes)
    return workers, 0.0, max(1, min(node_cpus, total_cpus // workers))


def run_slides_ray(
    sources: list[SlideSource],
    layout: FeatureLayout,
    options: ExtractOptions,
    address: str | None = None,
    ray_workers: int | None = None,
) -> tuple[list[SlideResult], float]:
    """:func:`run_slides` on Ray workers (a local Ray instance unless ``address``; ``ray_workers``
    workers, default one per GPU, else one): finished slides are skipped, each other slide goes to the
    next free worker; a slide that fails (or kills its worker) is reported in one line and the rest go
    on. Each worker resolves ``options.device`` and loads the tower itself. Returns the results and the
    time the workers were ready (throughput is counted from there)."""
    ray = import_ray()
    session = start_ray(address)
    try:
        print(session.describe())
        count, gpus, cpus = _worker_resources(ray, options.device, ray_workers)
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
