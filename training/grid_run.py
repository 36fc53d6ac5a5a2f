"""The grid driver of ``reproduce.py``: every (configuration, fold) of a grid a Ray task, run and tabulated.

The driver first checks every configuration (:func:`check_configurations`: all problems reported before
any training), then per configuration locks the run folder for the whole grid and opens it with
:func:`training.experiment.open_run_folder` (the step ``main.py`` uses: ``log.txt``, ``config.json``,
header, finished folds with unchanged inputs reused) and submits the other folds
(:func:`train_one_fold`, the training code of ``main.py``). When all folds of a configuration are done
it writes ``summary.csv``/``results.csv`` and refreshes ``RESULTS/table.md``, ``table.csv`` and
``table_folds.csv`` (:mod:`training.tables`). A failed fold is retried, then reported in one line; the
other folds go on. A fold whose training diverged (a loss or logit that is not finite,
:class:`utils.errors.NonFiniteError`) is deterministic: :func:`train_one_fold` returns it instead of
raising, so Ray does not retry it, and it is reported after one attempt.

The grid itself (axes, TOML file, command lines) is :mod:`training.grid`; the task defaults of the demo
tasks come from the caller (``reproduce.py`` passes :func:`preprocess.demo_tasks.task_defaults`).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm.auto import tqdm

from training.config import RunConfig, parse_config, with_values
from training.experiment import (
    PreparedRun,
    finish_run,
    lock_run_folder,
    open_run_folder,
    prepare_run,
    reusable_fold_row,
    seeded_model,
    train_fold,
)
from training.grid import GridPoint
from training.results import fold_dir
from training.tables import metric_names, read_run, write_tables
from training.tasks import task_for
from utils.errors import InputError, NonFiniteError
from utils.locking import FolderLock
from utils.ray_cluster import error_line, import_ray, start_ray
from utils.run_logging import RunLog, progress_enabled

TRAIN_LOG = "train_log.txt"
TABLE_FILES = ("table.md", "table.csv", "table_folds.csv")
TaskDefaults = Callable  # parse_config's task_defaults (preprocess.demo_tasks.task_defaults)


@dataclass(frozen=True)
class RayOptions:
    """Where and how the folds run (``reproduce.py``'s Ray flags)."""

    address: str | None = None
    gpus_per_fold: float | None = None  # None: 1 when this machine has CUDA, else 0
    retries: int = 1
    local_cpus: int | None = None
    local_gpus: int | None = None
    dashboard: bool = False
    ray_temp_dir: str | None = None


def _default_gpus_per_fold() -> float:
    import torch

    return 1.0 if torch.cuda.is_available() else 0.0


# ---------------------------------------------------------------- worker side


def train_one_fold(argv: list[str], fold: int, cwd: str, task_defaults: TaskDefaults) -> dict:
    """Ray task: train fold ``fold`` of the configuration ``argv`` exactly as main.py would.

    Runs in the driver's working folder (relative paths mean the same), logs to ``fold_<k>/train_log.txt``;
    returns the fold's row, the host and the seconds taken.
    """
    os.chdir(cwd)
    start = time.perf_counter()
    config = parse_config(argv, task_defaults=task_defaults)
    log = RunLog(quiet=True)
    log.attach(fold_dir(task_for(config).run_dir(config), fold) / TRAIN_LOG)
    log.info(
        f"--- fold {fold} on {socket.gethostname()} (pid {os.getpid()}), {time.strftime('%Y-%m-%d %H:%M:%S')}"
    )
    try:
        run = prepare_run(config, log)
        row = train_fold(run, fold, log)
    except NonFiniteError as err:  # deterministic: returned, not raised, so Ray does not retry it
        log.info(f"error: {err}")
        return {"diverged": str(err), "host": socket.gethostname(), "seconds": time.perf_counter() - start}
    except BaseException as err:
        log.info(f"error: {error_line(err, limit=2000)}")
        raise
    finally:
        log.close()
    return {"row": row, "host": socket.gethostname(), "seconds": time.perf_counter() - start}


# ---------------------------------------------------------------- driver side


@dataclass
class Job:
    """One configuration of the grid, checked."""

    point: GridPoint
    run: PreparedRun
    log: RunLog
    lock: FolderLock | None = None
    rows: dict[int, dict] = field(default_factory=dict)
    to_train: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    finished: bool = False

    @property
    def label(self) -> str:
        return self.point.label()

    @property
    def folds(self) -> range:
        return self.run.config.fold_range

    def complete(self) -> bool:
        return len(self.rows) + len(self.failed) == len(self.folds)


def _model_key(config: RunConfig) -> str:
    identity = config.resume_identity()
    for name in ("seed", "few_shot_num", "max_epochs", "lr", "reg"):
        identity.pop(name, None)
    return json.dumps(identity, sort_keys=True, default=str)


def check_configurations(points: list[GridPoint], task_defaults: TaskDefaults) -> list[Job]:
    """``prepare_run`` every configuration and build each distinct model once; all problems are listed
    (``error: <configuration>: ...``) before one final error, so nothing runs until all are fine."""
    jobs, problems, built = [], [], set()
    show = progress_enabled(False) and len(points) > 1
    for point in tqdm(points, desc="checking configurations", unit="config", disable=not show, leave=False):
        log = RunLog(quiet=True)
        try:
            config = parse_config(point.argv, task_defaults=task_defaults)
            # the driver never trains: its datasets keep no bags (cache_mb does not change results)
            run = prepare_run(with_values(config, cache_mb=0), log)
            run = replace(run, config=with_values(run.config, cache_mb=config.cache_mb))
            key = _model_key(run.config)
            if key not in built:  # model errors (type, tower, prompts) now, not in a worker
                seeded_model(run)
                built.add(key)
            jobs.append(Job(point, run, log))
        except InputError as err:
            problems.append(f"{point.label()}: {err}")
    by_dir: dict[Path, Job] = {}
    for job in jobs:
        other = by_dir.setdefault(job.run.run_dir.resolve(), job)
        if other is not job:
            problems.append(f"{job.label}: writes the same run folder as {other.label} ({job.run.run_dir})")
    if len(problems) == 1:
        raise InputError(problems[0])
    if problems:
        for line in problems:
            tqdm.write(f"error: {line}", file=sys.stderr)
        raise InputError(
            f"{len(problems)} of {len(points)} configurations have problems (above); nothing was run"
        )
    return jobs


def open_runs(jobs: list[Job]) -> None:
    """Lock every run folder (held until the grid ends), then open each
    (:func:`training.experiment.open_run_folder`: log, header, folds to reuse and to train). A folder
    locked by another process stops everything before any header is written."""
    for job in jobs:
        job.lock = lock_run_folder(job.run.run_dir, job.label)
    for job in jobs:
        note = f"reproduce.py: configuration {job.label}; folds trained as Ray tasks"
        opened = open_run_folder(job.run, job.log, lock=job.lock, note=note)
        job.rows.update(opened.reused)
        job.to_train.extend(opened.to_train)


def _metrics_text(row: dict) -> str:
    return ", ".join(f"{m} {row[f'test_{m}']:.4f}" for m in metric_names(row))


class Tables:
    """``table.md``/``table.csv``/``table_folds.csv`` of the finished configurations, rewritten as they finish."""

    def __init__(self, folder: Path):
        self.paths = [folder / name for name in TABLE_FILES]
        self.records = {}

    def add(self, job: Job) -> None:
        record = read_run(job.run.run_dir)
        if record is not None:
            self.records[job.run.run_dir] = record
            write_tables(list(self.records.values()), *self.paths)


@dataclass
class Progress:
    total: int
    done: int = 0
    reused: int = 0
    failed: int = 0
    in_flight: int = 0
    slots: int = 0  # folds that can run at once (cluster capacity)

    def postfix(self) -> dict:
        running = min(self.in_flight, self.slots) if self.slots else self.in_flight
        return {
            "done": self.done,
            "running": running,
            "queued": self.in_flight - running,
            "failed": self.failed,
            "reused": self.reused,
        }


def finish_job(job: Job, tables: Tables) -> None:
    """Summaries of a configuration whose folds all succeeded; refresh the tables."""
    job.finished = True
    if job.failed:
        job.log.info(
            f"not summarised: fold(s) {', '.join(map(str, sorted(job.failed)))} failed", console=False
        )
        return
    finish_run(job.run, [job.rows[f] for f in job.folds], job.log)
    tables.add(job)
    rows = list(job.rows.values())
    means = {m: sum(r[f"test_{m}"] for r in rows) / len(rows) for m in metric_names(rows[0])}
    tqdm.write(f"finished {job.label}: mean test " + ", ".join(f"{m} {v:.4f}" for m, v in means.items()))


def fold_resources(job: Job, gpus_per_fold: float) -> tuple[float, float]:
    return float(job.run.config.threads or 1), gpus_per_fold


def _check_capacity(ray, jobs: list[Job], gpus_per_fold: float) -> int:
    """Every fold fits on some node; returns how many folds can run at once."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    max_cpus = max((n.get("CPU", 0) for n in nodes), default=0)
    max_gpus = max((n.get("GPU", 0) for n in nodes), default=0)
    cpus = max(fold_resources(j, gpus_per_fold)[0] for j in jobs if j.to_train)
    if cpus > max_cpus:
        raise InputError(
            f"--threads {cpus:g}: a fold needs {cpus:g} CPUs but the largest Ray node has {max_cpus:g}"
        )
    if gpus_per_fold > max_gpus:
        raise InputError(
            f"--gpus-per-fold {gpus_per_fold:g}: the largest Ray node has {max_gpus:g} GPU(s) "
            "(use --gpus-per-fold 0 to train on CPUs)"
        )
    slots = sum(int(n.get("CPU", 0) // cpus) for n in nodes)
    if gpus_per_fold > 0:
        slots = min(slots, sum(int(n.get("GPU", 0) // gpus_per_fold) for n in nodes))
    return slots


def run_on_ray(
    args: RayOptions, jobs: list[Job], tables: Tables, progress: Progress, task_defaults: TaskDefaults
) -> None:
    """Submit every fold to train, collect the results as they come, retry, report, summarise."""
    ray = import_ray()
    gpus = args.gpus_per_fold if args.gpus_per_fold is not None else _default_gpus_per_fold()
    session = start_ray(args.address, args.local_cpus, args.local_gpus, args.dashboard, args.ray_temp_dir)
    in_flight: dict = {}
    try:
        tqdm.write(session.describe())
        if session.dashboard_url:
            tqdm.write(f"Ray dashboard: {session.dashboard_url}")
        progress.slots = _check_capacity(ray, jobs, gpus)
        remote = ray.remote(train_one_fold)
        cwd = os.getcwd()
        for job in jobs:
            cpus, job_gpus = fold_resources(job, gpus)
            for fold in job.to_train:
                ref = remote.options(
                    num_cpus=cpus,
                    num_gpus=job_gpus,
                    max_retries=args.retries,
                    retry_exceptions=True,
                    name=f"{job.run.run_dir.name} fold {fold}",
                ).remote(job.point.argv, fold, cwd, task_defaults)
                in_flight[ref] = (job, fold)
        progress.in_flight = len(in_flight)
        show = progress_enabled(False)
        with tqdm(
            total=progress.total, initial=progress.reused, desc="folds", unit="fold", disable=not show
        ) as bar:
            bar.set_postfix(progress.postfix())
            while in_flight:
                ready, _ = ray.wait(list(in_flight), num_returns=1)
                ready, _ = ray.wait(list(in_flight), num_returns=len(in_flight), timeout=0)
                for ref in ready:
                    job, fold = in_flight.pop(ref)
                    collect_fold(ray, ref, job, fold, args.retries, progress)
                    if job.complete() and not job.finished:
                        finish_job(job, tables)
                progress.in_flight = len(in_flight)
                bar.n = progress.reused + progress.done + progress.failed
                bar.set_postfix(progress.postfix())
    except BaseException:
        for ref in in_flight:
            ray.cancel(ref, force=True)
        raise
    finally:
        session.close()


def collect_fold(ray, ref, job: Job, fold: int, retries: int, progress: Progress) -> None:
    """Record one finished Ray task: its row, or its failure (one line on the console and in log.txt)."""
    try:
        result = ray.get(ref)
    except Exception as err:  # the task's own error (after its retries) or Ray's (worker died, ...)
        message = error_line(err)
        job.failed[fold] = message
        progress.failed += 1
        attempts = f"{retries + 1} attempt{'s' if retries else ''}"
        job.log.info(f"error: fold {fold} failed after {attempts}: {message}", console=False)
        tqdm.write(f"failed: {job.label} fold {fold} ({attempts}): {message}", file=sys.stderr)
        return
    if "diverged" in result:  # a deterministic divergence (NonFiniteError): one attempt, never retried
        message = f"{result['diverged']} (not retried: a rerun diverges the same way)"
        job.failed[fold] = message
        progress.failed += 1
        job.log.info(f"error: {message}", console=False)
        tqdm.write(f"failed: {job.label} fold {fold}: {message}", file=sys.stderr)
        return
    row = result["row"]
    job.rows[fold] = row
    progress.done += 1
    job.log.info(
        f"fold {fold}: trained by a Ray worker on {result['host']} in {result['seconds']:.1f} s "
        f"(log: {fold_dir(Path('.'), fold) / TRAIN_LOG}); test {_metrics_text(row)}",
        console=False,
    )


def print_plan(jobs: list[Job]) -> None:
    for job in jobs:
        reuse = [f for f in job.folds if f not in job.to_train]
        print(
            f"{job.label}: {job.run.run_dir} -- train fold(s) {' '.join(map(str, job.to_train)) or '-'}, "
            f"reuse {' '.join(map(str, reuse)) or '-'}"
        )


def plan_dry_run(jobs: list[Job]) -> None:
    """The folds a run would train (finished folds with unchanged inputs are reused); writes nothing."""
    for job in jobs:
        folder_ok = (job.run.run_dir / "config.json").is_file() and not job.run.config.overwrite
        for fold in job.folds:
            if not (folder_ok and reusable_fold_row(job.run, fold, job.log) is not None):
                job.to_train.append(fold)


def run_grid(
    points: list[GridPoint], ray_options: RayOptions, task_defaults: TaskDefaults, dry_run: bool = False
) -> int:
    """Check, run (or with ``dry_run`` only plan) and tabulate the grid; returns the exit code (1 when a
    fold failed)."""
    start = time.perf_counter()
    print(f"{len(points)} configuration(s); checking every one before any training")
    jobs = check_configurations(points, task_defaults)
    total = sum(len(job.folds) for job in jobs)
    if dry_run:
        plan_dry_run(jobs)
        print_plan(jobs)
        return 0
    tables = Tables(Path(jobs[0].run.config.results_dir))
    try:
        open_runs(jobs)
        progress = Progress(total=total, reused=sum(len(j.rows) for j in jobs))
        print(
            f"{total} fold(s): {progress.reused} finished earlier (reused), {total - progress.reused} to train"
        )
        for job in jobs:
            if not job.to_train:
                finish_job(job, tables)
        if any(job.to_train for job in jobs):
            run_on_ray(ray_options, jobs, tables, progress, task_defaults)
    finally:
        for job in jobs:
            job.log.close()
            if job.lock is not None:
                job.lock.release()
    failed = [(job, fold) for job in jobs for fold in sorted(job.failed)]
    if tables.records:
        print()
        print(tables.paths[0].read_text(encoding="utf-8"), end="")
        print(f"tables: {', '.join(str(p) for p in tables.paths)}")
    print(
        f"{progress.done} fold(s) trained, {progress.reused} reused, {len(failed)} failed "
        f"in {time.perf_counter() - start:.1f} s"
    )
    for job, fold in failed:
        print(f"failed: {job.label} fold {fold}: {job.failed[fold]}", file=sys.stderr)
    return 1 if failed else 0
