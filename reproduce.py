"""Run a grid of ``main.py`` experiments -- tasks x extractors x shots x models x variants x seeds, every
fold its own Ray task -- and tabulate them.

    python reproduce.py --tasks demo --models HiVE_MIL ABMIL --k 2 --max_epochs 2 --results_dir OUT
    python reproduce.py --grid paper.toml --address auto          # on a running Ray cluster

Grid flags (or a TOML file, :mod:`training.grid`) choose the configurations; every other flag is a
``main.py`` flag given unchanged to every configuration (a flag main.py does not know is one error line
before anything runs). Each (configuration, fold) is one Ray task that runs the same training code as
``main.py`` (:mod:`training.experiment`): the worker parses the configuration's command line, checks its
inputs (cheap: slide checks are cached) and trains the fold (``train_fold``), writing its fold files and
its own log ``fold_<k>/train_log.txt``.

The driver (:mod:`training.grid_run`) first checks every configuration (all problems reported before any
training), then per configuration creates the run folder, holds its lock for the whole grid, writes ``config.json`` and the
run's ``log.txt``, reuses the folds finished earlier with unchanged inputs (main.py's resume rules) and
submits the others. When all folds of a configuration are done it writes ``summary.csv``/``results.csv``
and refreshes ``RESULTS/table.md``, ``table.csv`` (one row per task, extractor, shots, model, variant,
seed: mean ± std of every test metric) and ``table_folds.csv`` (one row per fold). A failed fold is
retried (``--retries``), then reported in one line; the other folds go on; the exit code is then 1. A
fold whose training diverged (a loss or logit that is not finite) is reported after one attempt, never
retried: a rerun diverges the same way.

Resources per fold: ``--threads`` CPUs (1 when not given) and ``--gpus-per-fold`` GPUs (1 when this
machine has CUDA). Without ``--address`` a local Ray instance is started (``--local-cpus``,
``--local-gpus``; ``--dashboard`` to get Ray's dashboard).
"""

from __future__ import annotations

import argparse
import sys

from preprocess.demo_tasks import task_defaults
from training.grid import AXES, GridPoint, expand_grid, merge_grids, read_grid_file, validate_grid
from utils.errors import InputError, run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reproduce.py",
        description="Run a grid of main.py configurations on Ray, one task per (configuration, fold), "
        "and tabulate them. Flags not listed here are main.py flags, given to every configuration.",
        allow_abbrev=False,
    )
    grid = parser.add_argument_group("grid (each overrides the same key of --grid)")
    grid.add_argument("--grid", default=None, metavar="FILE.toml", help="grid file (training/grid.py)")
    helps = {
        "tasks": "tasks (--task)",
        "extractors": "feature extractors (--feature_extractor)",
        "shots": "shots per class (--few_shot_num), e.g. 4 8 16",
        "models": "model types (--model_type)",
        "variants": "HiVE-MIL variants (--variant); other models run once",
        "seeds": "seeds (--seed)",
    }
    for axis in AXES:
        grid.add_argument(f"--{axis.key}", nargs="+", default=None, metavar="V", help=helps[axis.key])
    grid.add_argument(
        "--folds",
        nargs="+",
        default=None,
        metavar="K",
        help="fold indices, a contiguous range (default: all)",
    )
    ray = parser.add_argument_group("Ray")
    ray.add_argument(
        "--address", default=None, help="join a running Ray cluster: auto, ray://host:port, host:port"
    )
    ray.add_argument(
        "--gpus-per-fold",
        type=float,
        default=None,
        help="GPUs per fold task (default: 1 when this machine has CUDA, else 0)",
    )
    ray.add_argument("--retries", type=int, default=1, help="retries of a failed fold (default 1)")
    ray.add_argument(
        "--local-cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all)"
    )
    ray.add_argument(
        "--local-gpus", type=int, default=None, help="GPUs of the local Ray instance (default: all)"
    )
    ray.add_argument("--dashboard", action="store_true", help="start Ray's dashboard with the local instance")
    ray.add_argument("--ray-temp-dir", default=None, help="Ray's temp/log folder (default: Ray's, /tmp/ray)")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check every configuration, list the folds to train; write nothing",
    )
    return parser


def _flag_error(message: str):
    raise InputError(message)


def parse_arguments(argv: list[str] | None) -> tuple[argparse.Namespace, list[GridPoint]]:
    """Own flags, the grid (file, then command line) and the main.py flags; every problem one line."""
    parser = build_parser()
    parser.error = _flag_error  # one line, not argparse's usage and exit
    args, passthrough = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.retries < 0:
        raise InputError(f"--retries must be >= 0, got {args.retries}")
    if args.gpus_per_fold is not None and args.gpus_per_fold < 0:
        raise InputError(f"--gpus-per-fold must be >= 0, got {args.gpus_per_fold}")
    for name in ("local_cpus", "local_gpus"):
        value = getattr(args, name)
        if value is not None and value < (1 if name == "local_cpus" else 0):
            raise InputError(
                f"--{name.replace('_', '-')} must be >= {1 if name == 'local_cpus' else 0}, got {value}"
            )
    file_grid = read_grid_file(args.grid) if args.grid else None
    cli_axes = {axis.key: getattr(args, axis.key) for axis in AXES}
    grid = validate_grid(merge_grids(file_grid, cli_axes, args.folds, passthrough))
    return args, expand_grid(grid)


def main(argv: list[str] | None = None) -> int:
    args, points = parse_arguments(argv)
    if args.address and not args.dry_run:  # an unreachable cluster is one line before any run folder exists
        from utils.ray_cluster import check_reachable

        check_reachable(args.address)
    from training.grid_run import RayOptions, run_grid

    ray_options = RayOptions(
        address=args.address,
        gpus_per_fold=args.gpus_per_fold,
        retries=args.retries,
        local_cpus=args.local_cpus,
        local_gpus=args.local_gpus,
        dashboard=args.dashboard,
        ray_temp_dir=args.ray_temp_dir,
    )
    return run_grid(points, ray_options, task_defaults, dry_run=args.dry_run)


if __name__ == "__main__":
    sys.exit(run_cli(main))
