"""Where one fold's wall time goes: the real fold code (:func:`training.fold.run_fold`), timed by part.

The split (seconds, and share of the fold):

* ``train compute``: training epochs less the time the loop waited for a bag;
* ``val/test compute``: validation and test passes less bag waits and metric computation;
* ``data loading``: time the loops *waited* for a bag (loading is prefetched on a background thread, so
  only what is not hidden behind compute shows);
* ``metrics``: ACC/AUC/F1 of each pass (``classification_metrics``);
* ``checkpointing``: best-state snapshots and restore, the checkpoint, prediction files and the fold row;
* ``other``: the rest of ``run_fold`` (seeding, model and text tower build, optimiser, logging).

Start-up (imports until the run starts) and the run's input checks (``prepare``) are reported apart.
Beside the split: the FLOP floor -- FLOPs of every train step and evaluated slide of the fold
(``torch.utils.flop_counter``; text features once per pass) divided by this machine's fp32 GEMM peak
measured in the same process.

Two shapes:

    python benchmarks/bench_fold_profile.py synthetic --n5 500 --children 16 --train 8 --val 24 \\
        --test 24 --epochs 2 --threads 2          # the issue's shape (random PLIP-sized tower)
    python benchmarks/bench_fold_profile.py demo --threads 2      # fold 0 of ``python main.py --task demo``

``synthetic`` writes random slides (one ``.pt`` file each, read back with ``torch.load`` by the fold's
prefetching loader, behind the run's bag cache as ``main.py`` reads its feature files: ``--cache_mb``), a random CLIP text tower of PLIP's size and a 2-class prompt file into ``--work``,
then runs ``run_fold`` on them with the published defaults (fp32, reference variant) and ``--epochs``
epochs. ``demo`` runs the whole ``main.py --task demo`` path (real feature files) for fold 0.
"""

from __future__ import annotations

import time

PROCESS_START = time.perf_counter()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PLIP_SIZE = dict(width=512, projection=512, layers=12, heads=8)
PARTS = ("train compute", "val/test compute", "data loading", "metrics", "checkpointing", "other")


class FoldClock:
    """Inclusive seconds per timed function, and the seconds the loops waited for bags."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)  # process CPU seconds (all threads) in the same spans
        self.calls: dict[str, int] = defaultdict(int)
        self._undo: list[tuple[object, str, object]] = []

    def wrap(self, owner, name: str, key: str) -> None:
        """Replace ``owner.name`` by a timed call adding to ``key``."""
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[key] += time.perf_counter() - t0
                self.cpu[key] += time.process_time() - c0
                self.calls[key] += 1

        setattr(owner, name, timed)
        self._undo.append((owner, name, original))

    def wrap_waits(self, owner, name: str, key: str) -> None:
        """Replace the generator function ``owner.name`` by one timing each ``next`` into ``key``."""
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            items = iter(original(*args, **kwargs))
            while True:
                t0, c0 = time.perf_counter(), time.process_time()
                try:
                    item = next(items)
                except StopIteration:
                    item = StopIteration
                self.seconds[key] += time.perf_counter() - t0
                self.cpu[key] += time.process_time() - c0
                if item is StopIteration:
                    return
                yield item

        setattr(owner, name, timed)
        self._undo.append((owner, name, original))

    def install(self) -> None:
        import models.passes
        import training.experiment
        import training.fold
        import training.loop
        import training.tasks.classification as cls

        self.wrap_waits(cls, "prefetch", "wait train")
        self.wrap_waits(models.passes, "prefetch", "wait eval")
        self.wrap(cls, "classification_metrics", "metrics")
        self.wrap(cls.ClassificationTask, "train_epoch", "train")
        self.wrap(cls.ClassificationTask, "evaluate", "eval")
        self.wrap(training.loop, "snapshot_state", "checkpointing")
        self.wrap(training.fold, "restore_state", "checkpointing")
        self.wrap(training.fold, "save_checkpoint", "checkpointing")
        self.wrap(cls.ClassificationTask, "write_predictions", "checkpointing")
        self.wrap(training.fold, "write_fold_inputs", "checkpointing")
        self.wrap(training.fold.res, "write_fold_row", "checkpointing")
        self.wrap(training.fold, "run_fold", "fold")
        self.wrap(training.experiment, "run_fold", "fold")

    def uninstall(self) -> None:
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)
        self._undo.clear()

    def split(self, cpu: bool = False) -> dict[str, float]:
        """Seconds per part of :data:`PARTS` (wall, or process CPU seconds with ``cpu``)."""
        s = self.cpu if cpu else self.seconds
        parts = {
            "train compute": s["train"] - s["wait train"],
            "val/test compute": s["eval"] - s["wait eval"] - s["metrics"],
            "data loading": s["wait train"] + s["wait eval"],
            "metrics": s["metrics"],
            "checkpointing": s["checkpointing"],
        }
        parts["other"] = s["fold"] - sum(parts.values())
        return parts


# ------------------------------------------------------------------------------------ the synthetic task
def pt_bags(folder: Path, slide_ids: list[str], labels: list[int], cache_mb: float):
    """Slides stored one ``.pt`` file each, read with ``torch.load``, behind the run's bag cache
    (:class:`datasets.bag_dataset.BagDataset` with ``--cache_mb``, as ``main.py`` reads its feature files)."""
    import torch

    from datasets.bag import SlideBag
    from datasets.bag_dataset import BagDataset

    class PtBags(BagDataset):
        def _read(self, index: int) -> SlideBag:
            slide = self.slide_ids[index]
            x5, x20, mask = torch.load(folder / f"{slide}.pt", weights_only=True)
            return SlideBag(slide, x5, x20, mask, self.labels[index])

    bags = PtBags(None, slide_ids, labels, cache_mb=cache_mb)
    bags.folder = folder
    return bags


def synthetic_run(args, work: Path):
    """A :class:`training.fold.PreparedRun` over random slides of the requested shape (files in ``work``)."""
    import torch

    from benchmarks.bench_padded import child_counts
    from datasets.tasks import TaskSpec
    from models.towers.tiny import save_tiny_hf_clip
    from training.config import parse_config
    from training.fold import PreparedRun
    from training.tasks.classification import ClassificationTask, FoldIndices, PreparedData

    classes = ("A", "B")
    tower = work / "tower_plip_size"
    if not (tower / "config.json").is_file():
        save_tiny_hf_clip(tower, seed=0, **PLIP_SIZE)
    prompts = {
        c: {f"{c} feature {i}": f"a morphological description number {i} of class {c}" for i in range(16)}
        for c in classes
    }
    task_spec = TaskSpec(
        "bench", classes, work / "bench.csv", work / "text_prompt", {c: i for i, c in enumerate(classes)}
    )
    prompt_file = task_spec.prompt_file("curated")
    prompt_file.parent.mkdir(parents=True, exist_ok=True)
    prompt_file.write_text(json.dumps(prompts), encoding="utf-8")

    n = args.train + args.val + args.test
    ids = [f"slide_{i:03d}" for i in range(n)]
    labels = [i % 2 for i in range(n)]
    share = getattr(args, "padded_share", 0.0)
    bags = work / (f"bags_{args.n5}x{args.children}_{args.dim}" + (f"_padded{share:g}" if share else ""))
    bags.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(1)
    for i, slide in enumerate(ids):
        path = bags / f"{slide}.pt"
        if path.is_file():
            continue
        mask = torch.zeros(args.n5, 16, dtype=torch.bool)
        mask[:, : args.children] = True
        if share:  # the realistic shape: ``share`` of the 5x patches hold 4-12 children, zero padded
            mask = torch.arange(16)[None, :] < child_counts(args.n5, share, seed=i)[:, None]
        x20 = torch.randn(args.n5, 16, args.dim, generator=g) * mask.unsqueeze(-1)
        torch.save((torch.randn(args.n5, args.dim, generator=g), x20, mask), path)

    config = parse_config(
        [
            "--task", "bench", "--LLM", "curated", "--feature_dim", str(args.dim),
            "--text_tower", str(tower), "--max_epochs", str(args.epochs), "--k", "1",
            "--results_dir", str(work / "results"), "--threads", str(args.threads),
        ]
    )  # fmt: skip

    class BenchTask(ClassificationTask):
        def fold_inputs(self, fold, tower_identity):  # no feature files to fingerprint
            return {"synthetic": f"{args.n5}x{args.children}x{args.dim}"}

    data = PreparedData(
        task=task_spec,
        dataset=pt_bags(bags, ids, labels, config.cache_mb),
        folds={0: FoldIndices(list(range(args.train)), list(range(args.train, args.train + args.val)),
                              list(range(args.train + args.val, n)))},
    )  # fmt: skip
    task = BenchTask(config, data)
    run_dir = work / "results" / "run"
    (run_dir / "fold_0").mkdir(parents=True, exist_ok=True)
    return PreparedRun(config, task, config.model_spec(task_spec), run_dir, torch.device("cpu"), None)


# ------------------------------------------------------------------------------------------ FLOP floor
def fold_flops(run, fold: int, epochs_run: int) -> float:
    """FLOPs of the fold's work: ``epochs_run`` x (train steps + val slides) + test slides, the text features
    once per evaluation pass, or once per run when they are constant (released layout)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.bench_fold import register_cpu_attention_flops
    from training.fold import seeded_model
    from training.loop import LoopOptions, build_optimizer
    from training.tasks.classification import evaluate, train_one_epoch

    register_cpu_attention_flops()
    model = seeded_model(run)
    loss_fn = run.task.loss()
    optimizer = build_optimizer("adam", model.trainable_parameters(), 1e-4, 1e-5)
    idx, load = run.data.folds[fold], run.data.dataset.__getitem__
    classes = run.data.task.num_classes

    def count(fn) -> int:
        with FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops()

    def one_step() -> int:
        return count(
            lambda: train_one_epoch(
                model, load, idx.train[:1], optimizer, loss_fn, run.device, LoopOptions(0)
            )
        )

    def eval_slides(n: int) -> int:
        return count(
            lambda: evaluate(model, load, idx.val[:n], loss_fn, run.device, classes, prefetch_depth=0)
        )

    first, step = one_step(), one_step()  # constant text features (released layout) only in the first
    first_eval, one, two = eval_slides(1), eval_slides(1), eval_slides(2)  # likewise for eval mode
    per_slide = two - one
    text = one - per_slide  # text features once per evaluation pass (0 when constant)
    passes = epochs_run + 1
    slides = epochs_run * len(idx.val) + len(idx.test)
    del torch
    once = (first - step) + (first_eval - one)  # constant text features, once per mode
    return once + epochs_run * len(idx.train) * step + passes * text + slides * per_slide


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("shape", choices=("synthetic", "demo"))
    parser.add_argument("--n5", type=int, default=500)
    parser.add_argument("--children", type=int, default=16)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument(
        "--padded-share", type=float, default=0.0,
        help="synthetic: share of 5x patches holding 4-12 zero-padded children (the realistic shape)",
    )  # fmt: skip
    parser.add_argument("--train", type=int, default=8)
    parser.add_argument("--val", type=int, default=24)
    parser.add_argument("--test", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default=str(ROOT / "cache" / "bench_fold_profile"))
    parser.add_argument("--no-floor", action="store_true", help="skip the FLOP count and GEMM peak")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args(argv)

    import torch

    from training.experiment import run_experiment

    torch.set_num_threads(args.threads)
    from utils.allocator import keep_freed_memory

    keep_freed_memory()  # as training.experiment.prepare_run does for a run
    import training.fold  # noqa: F401  (imported before the clock starts: start-up is reported apart)

    clock = FoldClock()
    clock.install()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()  # at the start; the end one is added below
    if args.shape == "synthetic":
        from utils.run_logging import RunLog

        t0 = time.perf_counter()
        run = synthetic_run(args, work)
        startup = t0 - PROCESS_START
        prepare = time.perf_counter() - t0
        with contextlib.redirect_stdout(sys.stderr):
            row = training.fold.run_fold(run, 0, RunLog(None, quiet=True))
    else:
        from preprocess.demo_tasks import task_defaults
        from training.config import parse_config

        results = Path(tempfile.mkdtemp(prefix="demo-", dir=work))
        config = parse_config(
            ["--task", "demo", "--k_start", "0", "--k_end", "1", "--results_dir", str(results),
             "--threads", str(args.threads), "--quiet"],
            task_defaults=task_defaults,
        )  # fmt: skip
        startup = time.perf_counter() - PROCESS_START
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):
            rows = run_experiment(config)
        row = rows[0]
        prepare = time.perf_counter() - t0 - clock.seconds["fold"]
        import training.experiment as te
        from utils.run_logging import RunLog

        run = te.prepare_run(config, RunLog(None, quiet=True)) if not args.no_floor else None
    clock.uninstall()
    fold_s, fold_cpu = clock.seconds["fold"], clock.cpu["fold"]
    parts, cpu_parts = clock.split(), clock.split(cpu=True)
    result = {
        "shape": args.shape,
        "load_average": [round(x, 2) for x in load],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "threads": args.threads,
        "startup_s": startup,
        "prepare_s": prepare,
        "fold_s": fold_s,
        "split_s": parts,
        "fold_cpu_s": fold_cpu,
        "split_cpu_s": cpu_parts,
        "epochs_run": row["epochs_run"],
    }
    if args.shape == "synthetic":
        result["shape_args"] = {
            k: getattr(args, k)
            for k in ("n5", "children", "dim", "padded_share", "train", "val", "test", "epochs")
        }
    if not args.no_floor:
        from benchmarks.bench_fold import gemm_peak_gflops

        flops = fold_flops(run, 0, int(row["epochs_run"]))
        peak = gemm_peak_gflops(torch.float32)
        result.update(fold_gflop=flops / 1e9, gemm_peak_gflops=peak, floor_s=flops / peak / 1e9)
    print(f"{args.shape}: load average {load[0]:.1f}, {args.threads} threads, start-up {startup:.1f} s, "
          f"prepare {prepare:.1f} s, fold {fold_s:.1f} s ({row['epochs_run']} epochs)")  # fmt: skip
    print(f"  {'part':<17} {'wall s':>8} {'share':>6} {'CPU s':>8}   (CPU: process CPU seconds, all threads)")
    for name in PARTS:
        print(f"  {name:<17} {parts[name]:8.2f} {parts[name] / fold_s:6.1%} {cpu_parts[name]:8.2f}")
    print(f"  {'fold':<17} {fold_s:8.2f} {1:6.1%} {fold_cpu:8.2f}")
    if "floor_s" in result:
        print(f"  FLOP floor        {result['floor_s']:8.2f} s  ({result['fold_gflop']:.0f} GFLOP at the "
              f"measured fp32 GEMM peak {result['gemm_peak_gflops']:.0f} GFLOP/s)")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
