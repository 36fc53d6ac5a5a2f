"""Baselines on the demo task: CPU training time per epoch and test accuracy after the real training loop.

For each model type this script

1. times ``--timed_epochs`` training epochs (one slide per Adam step, no validation) on fold 0's
   training slides with the project's own step (:func:`training.tasks.classification.train_one_epoch`) and reports
   the median (the first epoch reads H5 files; later ones hit the bag cache);
2. runs the real k-fold experiment of ``main.py`` (:func:`training.experiment.run_experiment`: seed reset
   per fold, validation every epoch, early stopping if asked, best state restored, test) on the demo
   data and reports mean ± std test ACC over the folds.

Models without trainable parameters (``zero_shot``) are not trained: they are evaluated on every
fold's test slides with :func:`training.tasks.classification.evaluate`. The demo data (dimension 64) and the demo
text tower (a tiny random HF CLIP, so zero-shot is at chance there) are generated on first use.

    python benchmarks/bench_baselines.py                          # every baseline, 20 epochs max
    python benchmarks/bench_baselines.py --models ABMIL TransMIL --max_epochs 50 --early_stopping
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BASELINES = ("mean_pool", "max_pool", "MIL_fc", "ABMIL", "TransMIL", "LiteMIL", "zero_shot", "ViLa_MIL")


def run_config(model: str, results_dir: Path, args: argparse.Namespace):
    """The ``main.py`` configuration of one demo run (published flags where they apply)."""
    from preprocess.demo import task_defaults
    from training.config import parse_config

    argv = [
        "--task", "demo", "--model_type", model, "--results_dir", str(results_dir),
        "--seed", "1", "--lr", str(args.lr), "--max_epochs", str(args.max_epochs), "--bag_loss", "ce",
        "--device", args.device, "--quiet", "--drop_out",
    ]  # fmt: skip
    if args.early_stopping:
        argv.append("--early_stopping")
    return parse_config(argv, task_defaults=task_defaults)


def _seeded_model(config, task):
    """The model of a fold as :func:`training.fold.seeded_model` builds it: every seed reset first."""
    from models.registry import build_model
    from utils.seed import seed_everything

    seed_everything(config.seed, config.deterministic)
    return build_model(config.model_type, config.model_spec(task))


def time_training_epochs(config, epochs: int) -> tuple[float, int]:
    """(median seconds per training epoch on fold 0, number of training slides); nan if nothing trains."""
    import torch

    from training.bag_losses import build_bag_loss
    from training.loop import LoopOptions, build_optimizer
    from training.tasks.classification import prepare_data, train_one_epoch
    from utils.device import resolve_device
    from utils.run_logging import RunLog

    device = resolve_device(config.device)
    data = prepare_data(config, RunLog(quiet=True))
    fold = next(iter(data.folds))
    train = data.folds[fold].train
    model = _seeded_model(config, data.task).to(device)
    params = model.trainable_parameters()
    if not params:
        return float("nan"), len(train)
    optimizer = build_optimizer(config.opt, params, config.lr, config.reg)
    loss_fn = build_bag_loss(config.bag_loss, data.task.num_classes).to(device)
    options = LoopOptions(config.prefetch_depth, config.num_workers, progress=False)
    generator = torch.Generator().manual_seed(config.seed)
    times = []
    for _ in range(epochs):
        order = [train[i] for i in torch.randperm(len(train), generator=generator).tolist()]
        start = time.perf_counter()
        train_one_epoch(model, data.dataset.__getitem__, order, optimizer, loss_fn, device, options)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:] if len(times) > 1 else times), len(train)


def evaluate_untrained(config) -> list[float]:
    """Test ACC of every fold for a model with nothing to train."""
    from training.bag_losses import build_bag_loss
    from training.tasks.classification import evaluate, prepare_data
    from utils.device import resolve_device
    from utils.run_logging import RunLog

    device = resolve_device(config.device)
    data = prepare_data(config, RunLog(quiet=True))
    loss_fn = build_bag_loss(config.bag_loss, data.task.num_classes).to(device)
    accs = []
    for idx in data.folds.values():
        model = _seeded_model(config, data.task).to(device)
        result = evaluate(model, data.dataset.__getitem__, idx.test, loss_fn, device, data.task.num_classes)
        accs.append(result.metrics["acc"])
    return accs


def bench_model(model: str, args: argparse.Namespace, work: Path) -> dict:
    from training.experiment import run_experiment

    config = run_config(model, work / model, args)
    epoch_s, n_train = time_training_epochs(config, args.timed_epochs)
    start = time.perf_counter()
    if epoch_s != epoch_s:  # nan: nothing to train
        accs, epochs_run, how = evaluate_untrained(config), [0], "evaluated, no training"
    else:
        rows = run_experiment(config)
        accs = [row["test_acc"] for row in rows]
        epochs_run, how = [int(row["epochs_run"]) for row in rows], "training.experiment.run_experiment"
    total_s = time.perf_counter() - start
    return {
        "model": model,
        "epoch_s": epoch_s,
        "n_train": n_train,
        "acc_mean": statistics.fmean(accs),
        "acc_std": statistics.pstdev(accs),
        "epochs": epochs_run,
        "total_s": total_s,
        "how": how,
    }


def format_table(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"demo task, device {args.device}, lr {args.lr}, max_epochs {args.max_epochs}, "
        f"early stopping {'on' if args.early_stopping else 'off'}",
        "",
        "| Model | train s/epoch (fold 0) | demo test ACC (mean ± std over folds) | epochs run | total s | how |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        epoch = "n/a" if r["epoch_s"] != r["epoch_s"] else f"{r['epoch_s']:.2f} ({r['n_train']} slides)"
        lines.append(
            f"| {r['model']} | {epoch} | {100 * r['acc_mean']:.1f} ± {100 * r['acc_std']:.1f} | "
            f"{','.join(map(str, r['epochs']))} | {r['total_s']:.0f} | {r['how']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--models", nargs="+", default=list(BASELINES), help="model types (default: every baseline)"
    )
    p.add_argument("--max_epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--early_stopping", action="store_true")
    p.add_argument(
        "--timed_epochs", type=int, default=3, help="training epochs timed on fold 0 (median of 2nd+)"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="also write the table to this markdown file")
    args = p.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_baselines_") as tmp:
        for model in args.models:
            row = bench_model(model, args, Path(tmp))
            rows.append(row)
            print(
                f"{model}: {row['epoch_s']:.2f} s/epoch, test ACC {100 * row['acc_mean']:.1f} "
                f"± {100 * row['acc_std']:.1f} ({row['how']})",
                flush=True,
            )
    table = format_table(rows, args)
    print()
    print(table)
    if args.out:
        from utils.atomic_io import atomic_write_text

        atomic_write_text(args.out, table + "\n")
    return 0


if __name__ == "__main__":
    from utils.errors import run_cli

    sys.exit(run_cli(main))
