"""Fault cases of issue 25: hostile inputs and diverging numbers, across the tools.

Diverging training (HiVE-MIL and the HiLa-style survival model at ``--lr 1e3``, overflowing features),
path-escaping ids in every reader, declared-huge HDF5 files, flags out of range, a full disk, an
unreachable Ray address, and ``predict.py`` on hostile tensors (overflow, complex/int/bool features,
repeated coordinates), a hostile ``level0_mag`` and ``--out`` pointing at the run folder. A refusal
must also leave no result that claims a number (the cases check ``results.csv`` and fold rows).
"""

from __future__ import annotations

import errno
import os
import pathlib
import shutil
import socket

from tests.faults.cases_preprocess import extract_argv, slide_folder, splits_case
from tests.faults.harness import LATE, REFUSE, SUCCEED, case, run_inprocess
from tests.faults.workspace import (
    copy_demo,
    demo_case,
    demo_layout,
    demo_split,
    edit_csv,
    first_test,
    first_train,
    main_argv,
    write_demo_split,
)


def _claimed_numbers(results) -> str | None:
    """A problem when a refused run still left a results table or a finished fold row behind."""
    found = [
        p
        for p in pathlib.Path(results).rglob("*")
        if p.name in ("results.csv", "summary.csv", "metrics.json")
    ]
    return f"a refused run left {found[0].name} ({found[0]})" if found else None


def _diverging(ctx, damage=None, *extra):
    res = demo_case(ctx, damage, *extra)
    return res, _claimed_numbers(ctx.dir / "results")


# --- diverging numbers (item 2)
@case("diverge: HiVE-MIL at --lr 1e3", "main", REFUSE, outcome=LATE)
def _(ctx):
    return _diverging(ctx, None, "--lr", "1e3", "--max_epochs", "2")


def _survival_demo(ctx):
    """A copy of the survival demo (HiLa-style) and its main.py flags (1 fold)."""
    from preprocess.demo_survival import run_defaults

    source = ctx.assets.once(
        "demo_survival", lambda: run_defaults(ctx.assets.work / "assets" / "demo_survival")
    )
    root = pathlib.Path(source["data_root_dir"]).parent
    data = ctx.dir / "demo_survival"
    shutil.copytree(root, data)
    flags = {k: str(v).replace(str(root), str(data)) for k, v in source.items()}
    argv = ["--task", "demo_survival"]
    for key in ("data_root_dir", "feature_extractor", "feature_dim", "splits_root", "csv_dir", "prompt_dir",
                "text_tower", "model_type", "threads"):  # fmt: skip
        argv += [f"--{key}", flags[key]]
    argv += [
        "--k",
        "1",
        "--max_epochs",
        "2",
        "--num-context-tokens",
        "4",
        "--results_dir",
        ctx.dir / "results",
    ]
    return data, argv


@case("diverge: HiLa-style survival at --lr 1e3", "main", REFUSE, outcome=LATE)
def _(ctx):
    data, argv = _survival_demo(ctx)
    ctx.inputs(data)
    res = run_inprocess("main", [*argv, "--lr", "1e3"])
    return res, _claimed_numbers(ctx.dir / "results")


def _scale_20x(slide_of):
    """A damage: the 20x features of one slide's hierarchical file x 1e30 (finite in float32)."""

    def damage(d):
        import h5py

        with h5py.File(demo_layout(d).hier_file(slide_of(d)), "a") as f:
            f["features"][...] = f["features"][()] * 1e30

    return damage


@case("diverge: a training slide's 20x features x 1e30", "main", REFUSE, outcome=LATE)
def _(ctx):
    return _diverging(ctx, _scale_20x(first_train))


@case(
    "diverge: a test slide's 20x features x 1e30 (evaluation refuses its logits)",
    "main",
    REFUSE,
    outcome=LATE,
)
def _(ctx):
    return _diverging(ctx, _scale_20x(first_test))


# --- path-escaping ids and names (item 1)
@case("ids: dataset CSV slide_id '../../x'", "main", REFUSE)
def _(ctx):
    def damage(d):
        old = first_train(d)
        edit_csv(d, lambda f: f.replace({"slide_id": {old: "../../x"}}))

    return demo_case(ctx, damage)


@case("ids: split file names '/tmp/x'", "main", REFUSE)
def _(ctx):
    return demo_case(ctx, lambda d: write_demo_split(d, lambda tr, va, te: (["/tmp/x", *tr[1:]], va, te)))


@case("ids: --task '../../x'", "main", REFUSE)
def _(ctx):
    data = copy_demo(ctx.assets, ctx.dir)
    ctx.inputs(data)
    argv = main_argv(ctx.assets, data, ctx.dir / "results")
    argv[argv.index("--task") + 1] = "../../x"
    return run_inprocess("main", argv)


@case("ids: create_splits.py --task '../../x'", "splits", REFUSE)
def _(ctx):
    rows = [(f"p{i}", f"s{i}", "AB"[i % 2], 40) for i in range(20)]
    res = splits_case(ctx, rows, "--few_shot_num", "2", "--k", "1", task="../../x")
    escaped = (ctx.dir / "splits" / "../../x").resolve()
    return res, f"wrote outside --splits_root: {escaped}" if escaped.exists() else None


@case("ids: extract slide CSV slide_id '../x'", "extract", REFUSE)
def _(ctx):
    folder = slide_folder(ctx, "s40")
    csv = ctx.dir / "slides.csv"
    csv.write_text("case_id,slide_id,label,level0_mag\np,../x,A,40\n")
    ctx.inputs(folder, csv)
    res = run_inprocess("extract", extract_argv(ctx, csv, "--slide-dir", folder))
    return res, "wrote x.h5 outside --data-root" if list(ctx.dir.rglob("x.h5")) else None


@case("ids: predict slide CSV slide_id '../x'", "predict", REFUSE)
def _(ctx):
    data, run_dir = ctx.assets.trained_run()
    pt = _tensor_file(ctx, "good")
    csv = ctx.dir / "slides.csv"
    csv.write_text(f"slide_id,path\n../x,{pt}\n")
    ctx.inputs(csv, pt, run_dir)
    return run_inprocess("predict", _predict_argv(run_dir, ctx, csv))


# --- declared sizes, flag ranges, writes, cluster address (items 3, 4)
@case("sizes: a 1.7 KB 5x file declaring 1e8 rows", "main", REFUSE)
def _(ctx):
    def damage(d):
        import h5py

        path = demo_layout(d).low_file(first_train(d))
        path.unlink()
        with h5py.File(path, "w") as f:
            f.create_dataset("features", shape=(10**8, 64), dtype="float32", chunks=(1024, 64))
            f.create_dataset("coords", shape=(10**8, 2), dtype="int64", chunks=(1024, 2))

    return demo_case(ctx, damage)


@case("flags: --seed -1", "main", REFUSE)
def _(ctx):
    return demo_case(ctx, None, "--seed", "-1")


@case("writes: the disk fills while the checkpoint is written", "main", REFUSE, outcome=LATE)
def _(ctx):
    original = pathlib.Path.write_bytes

    def full_disk(self, data):
        if "checkpoint" in self.name:
            original(self, bytes(data)[:4096])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(self, data)

    pathlib.Path.write_bytes = full_disk
    try:
        res = demo_case(ctx)
    finally:
        pathlib.Path.write_bytes = original
    partial = [p for p in (ctx.dir / "results").rglob(".*checkpoint*")]
    return res, f"partial file left: {partial[0]}" if partial else _claimed_numbers(ctx.dir / "results")


@case("cluster: reproduce.py --address of a closed port", "reproduce", REFUSE)
def _(ctx):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = copy_demo(ctx.assets, ctx.dir)
    ctx.inputs(data)
    results = ctx.dir / "results"
    res = run_inprocess(
        "reproduce",
        ["--tasks", "demo", "--models", "ABMIL", "--k", "1", "--results_dir", results,
         "--data_root_dir", data / "features", "--csv_dir", data / "dataset_csv", "--address", f"127.0.0.1:{port}"],
    )  # fmt: skip
    return res, "a run folder was made" if results.exists() else None


@case("kind: --task_kind classification on a survival CSV", "main", REFUSE)
def _(ctx):
    data, argv = _survival_demo(ctx)
    ctx.inputs(data)
    res = run_inprocess("main", [*argv, "--task_kind", "classification"])
    misleading = "has no survival_months column" in res.err
    return res, "the message says the CSV has no survival_months column" if misleading else None


# --- predict.py on hostile tensors (items 2, 4)
def _tensor_file(ctx, name: str, edit=None):
    """A .pt bag of a demo slide (x5, x20 [N5, M, D], mask, coordinates, level0_mag), edited."""
    import torch

    from datasets.features import read_slide_bag

    data, _ = ctx.assets.trained_run()
    bag = read_slide_bag(demo_layout(data), demo_split(data)[1].test[0])
    obj = {"x5": bag.x5, "x20": bag.x20, "child_mask": bag.child_mask, "coords5": bag.coords5,
           "coords20": bag.coords20, "level0_mag": 40}  # fmt: skip
    if edit is not None:
        obj = edit(obj)
    path = ctx.dir / f"{name}.pt"
    torch.save(obj, path)
    return path


def _predict_argv(run_dir, ctx, *slides, out=None):
    return ["--run", run_dir, "--slides", *slides, "--out", out or ctx.dir / "pred", "--device", "cpu",
            "--threads", "1"]  # fmt: skip


def _predict(ctx, edit=None, out=None):
    _, run_dir = ctx.assets.trained_run()
    path = _tensor_file(ctx, "slide", edit)
    ctx.inputs(path, run_dir)
    res = run_inprocess("predict", _predict_argv(run_dir, ctx, path, out=out))
    return res, _nan_cells(ctx.dir / "pred" / "predictions.csv")


def _nan_cells(path) -> str | None:
    import pandas as pd

    if not path.is_file():
        return None
    frame = pd.read_csv(path)
    probs = frame[[c for c in frame.columns if "prob_" in c]]
    return f"{path.name} has empty or NaN probability cells" if probs.isna().any().any() else None


@case("predict: a valid tensor file", "predict", SUCCEED)
def _(ctx):
    res, problem = _predict(ctx)
    if problem is None and not (ctx.dir / "pred" / "predictions.csv").is_file():
        problem = "no predictions.csv"
    return res, problem


def _with(key, fn):
    def edit(obj):
        obj[key] = fn(obj[key])
        return obj

    return edit


@case("predict: features x 1e30 (logits overflow)", "predict", REFUSE)
def _(ctx):
    return _predict(ctx, lambda o: {**o, "x5": o["x5"] * 1e30, "x20": o["x20"] * 1e30})


@case("predict: Inf in x20", "predict", REFUSE)
def _(ctx):
    def edit(obj):
        obj["x20"] = obj["x20"].clone()
        obj["x20"][0, 0, 0] = float("inf")
        return obj

    return _predict(ctx, edit)


@case("predict: complex features", "predict", REFUSE)
def _(ctx):
    return _predict(ctx, _with("x5", lambda t: t.to(__import__("torch").complex64)))


@case("predict: integer features", "predict", REFUSE)
def _(ctx):
    return _predict(ctx, _with("x5", lambda t: (t * 100).round().to(__import__("torch").int32)))


@case("predict: bool features", "predict", REFUSE)
def _(ctx):
    return _predict(ctx, _with("x20", lambda t: t > 0))


@case("predict: a repeated 5x coordinate", "predict", REFUSE)
def _(ctx):
    def repeat(coords):
        coords = coords.clone()
        coords[1] = coords[0]
        return coords

    return _predict(ctx, _with("coords5", repeat))


@case("predict: level0_mag 'abc' in the tensor file", "predict", REFUSE)
def _(ctx):
    return _predict(ctx, _with("level0_mag", lambda _: "abc"))


@case("predict: level0_mag 'abc' in a slide CSV", "predict", REFUSE)
def _(ctx):
    _, run_dir = ctx.assets.trained_run()
    pt = _tensor_file(ctx, "slide")
    csv = ctx.dir / "slides.csv"
    csv.write_text(f"slide_id,path,level0_mag\ns1,{pt},abc\n")
    ctx.inputs(csv, pt, run_dir)
    return run_inprocess("predict", _predict_argv(run_dir, ctx, csv))


@case("predict: --out is the run folder", "predict", REFUSE)
def _(ctx):
    _, run_dir = ctx.assets.trained_run()
    return _predict(ctx, out=run_dir)


# --- cases nobody listed: NaN in other numeric columns, hostile ids in other readers
@case("more: NaN survival_months in the survival CSV", "main", REFUSE)
def _(ctx):
    import pandas as pd

    data, argv = _survival_demo(ctx)
    csv = next((data / "dataset_csv").glob("*.csv"))
    frame = pd.read_csv(csv, dtype=str)
    frame.loc[0, "survival_months"] = "nan"
    frame.to_csv(csv, index=False)
    ctx.inputs(data)
    return run_inprocess("main", argv)


@case("more: case_id '../c' in the survival CSV", "main", REFUSE)
def _(ctx):
    import pandas as pd

    data, argv = _survival_demo(ctx)
    csv = next((data / "dataset_csv").glob("*.csv"))
    frame = pd.read_csv(csv, dtype=str)
    frame.loc[frame["case_id"] == frame.loc[0, "case_id"], "case_id"] = "../c"
    frame.to_csv(csv, index=False)
    ctx.inputs(data)
    return run_inprocess("main", argv)


@case("more: level0_mag 'inf' in the dataset CSV", "main", REFUSE)
def _(ctx):
    return demo_case(ctx, lambda d: edit_csv(d, lambda f: f.assign(level0_mag=["inf", *f["level0_mag"][1:]])))


@case("more: --lr nan", "main", REFUSE)
def _(ctx):
    return demo_case(ctx, None, "--lr", "nan")


@case("more: --lr inf", "main", REFUSE)
def _(ctx):
    return demo_case(ctx, None, "--lr", "inf")


@case("more: --reg nan", "main", REFUSE)
def _(ctx):
    return demo_case(ctx, None, "--reg", "nan")


@case("more: --lr 1e300 (beyond float32)", "main", REFUSE)
def _(ctx):
    return demo_case(ctx, None, "--lr", "1e300")


@case("more: --reg inf", "main", REFUSE)
def _(ctx):
    return demo_case(ctx, None, "--reg", "inf")
