"""Peak memory and time of one training epoch, whole slides vs ``--chunk_size`` chunks, on synthetic bags.

For each model, bag size and mode this script starts a fresh Python process (so each peak is its own)
that builds synthetic slides of ``N`` instances of dimension ``--dim`` in memory, builds the model from
the registry (same seed) and trains one epoch through the project's own code: whole slides with
:func:`training.tasks.classification.train_one_epoch`, chunks with
:func:`training.chunks.train_chunked_epoch` (one optimiser step per chunk). Peak memory is the rise of the
process's resident-set high-water mark (``ru_maxrss``) during the epoch, over what the slides, the model
and its optimiser state already held before it (one warm-up step on a 64-instance bag allocates the
optimiser state and pays first-call costs): the memory the forward and backward passes need. Time is the
wall time of one epoch of ``--slides`` slides.

    python benchmarks/bench_chunks.py                                  # 10k and 50k instances, chunks of 1000
    python benchmarks/bench_chunks.py --sizes 2000 --models ABMIL --slides 1 --chunk 500   # a quick look

Prints a Markdown table (the README's). CPU only; ``--threads`` torch threads per process (default 1,
for comparable numbers on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def one_epoch(model_type: str, n: int, chunk: int, slides: int, dim: int, threads: int) -> dict:
    """Child process: one epoch; returns ``{"seconds", "peak_mb", "steps"}``."""
    import resource
    import time

    sys.path.insert(0, str(ROOT))
    import torch

    from datasets.bag import SlideBag
    from datasets.tasks import TaskSpec
    from models.registry import ModelSpec, build_model
    from training.chunks import train_chunked_epoch
    from training.loop import LoopOptions, build_optimizer
    from training.tasks.classification import train_one_epoch, train_step

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    bags = []
    for i in range(slides):
        x = torch.randn(n, dim) + (0.5 if i % 2 else -0.5)
        bags.append(SlideBag(f"s{i}", x, x.unsqueeze(1), torch.ones(n, 1, dtype=torch.bool), label=i % 2))
    task = TaskSpec(name="bench", class_names=("a", "b"), csv_path=Path("unused.csv"), prompt_dir=Path("."))
    model = build_model(model_type, ModelSpec(task=task, feature_dim=dim))
    optimizer = build_optimizer("adam", model.trainable_parameters(), 1e-4, 1e-5)
    loss_fn = torch.nn.CrossEntropyLoss()
    options = LoopOptions(prefetch_depth=0, workers=0)
    device = torch.device("cpu")
    warm = [SlideBag("warm", bags[0].x5[:64], bags[0].x20[:64], bags[0].child_mask[:64], label=0)]
    train_one_epoch(model, warm.__getitem__, [0], optimizer, loss_fn, device, options)  # first-call costs
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    order = list(range(slides))
    if chunk:
        train_chunked_epoch(
            model, bags.__getitem__, order, optimizer, loss_fn, device, options, chunk, train_step
        )
        steps = sum(-(-n // chunk) for _ in bags)
    else:
        train_one_epoch(model, bags.__getitem__, order, optimizer, loss_fn, device, options)
        steps = slides
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"seconds": seconds, "peak_mb": (after - before) / 1024, "steps": steps}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["mean_pool", "ABMIL", "LiteMIL", "TransMIL"])
    p.add_argument("--sizes", nargs="+", type=int, default=[10_000, 50_000], help="instances per slide")
    p.add_argument("--chunk", type=int, default=1000, help="--chunk_size of the chunked mode")
    p.add_argument("--slides", type=int, default=2, help="slides per epoch")
    p.add_argument("--dim", type=int, default=512, help="feature dimension")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(one_epoch(**json.loads(args.child))))
        return 0
    print(
        f"one training epoch of {args.slides} synthetic slides, D={args.dim}, CPU, {args.threads} thread(s); "
        f"peak = rise of the resident-set high-water mark during the epoch\n"
    )
    print("| model | instances | mode | optimiser steps | time / epoch (s) | peak memory (MB) |")
    print("| --- | ---: | --- | ---: | ---: | ---: |")
    for model in args.models:
        for n in args.sizes:
            for chunk in (0, args.chunk):
                child = dict(
                    model_type=model, n=n, chunk=chunk, slides=args.slides, dim=args.dim, threads=args.threads
                )
                out = subprocess.run(
                    [sys.executable, __file__, "--child", json.dumps(child)], capture_output=True, text=True
                )
                if out.returncode != 0:
                    print(
                        f"| {model} | {n} | {'chunks' if chunk else 'whole'} | failed: {out.stderr.strip()[-200:]} |"
                    )
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                mode = f"chunks of {chunk}" if chunk else "whole slide"
                print(
                    f"| {model} | {n:,} | {mode} | {r['steps']} | {r['seconds']:.2f} | {r['peak_mb']:.0f} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
