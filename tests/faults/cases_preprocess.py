"""Fault cases of the preprocessing CLIs: ``create_hierarchical_features.py``,
``check_hierarchical_consistency.py``, ``create_splits.py`` and ``extract_features.py``."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from tests.faults.harness import (
    REFUSE,
    SUCCEED,
    Ctx,
    Result,
    case,
    digest_tree,
    kill,
    run_inprocess,
    start_subprocess,
    wait_for,
)
from tests.faults.workspace import (
    bump_first_feature,
    edit_patch_file,
    hier_flags,
    hier_inputs,
    make_hier_root,
)


# --- create_hierarchical_features.py
def hier_case(ctx: Ctx, damage: Callable | None = None, *extra) -> Result:
    layout = make_hier_root(ctx.dir)
    if damage is not None:
        damage(layout)
    ctx.inputs(*hier_inputs(layout))
    return run_inprocess("hier", hier_flags(ctx.dir, *extra))


@case("hierarchy: 5x folder missing", "hier", REFUSE)
def _(ctx):
    return hier_case(ctx, lambda lay: shutil.rmtree(lay.low_dir))


@case("hierarchy: 20x folder missing", "hier", REFUSE)
def _(ctx):
    return hier_case(ctx, lambda lay: shutil.rmtree(lay.high_dir))


@case("hierarchy: no .h5 files in the 5x folder", "hier", REFUSE)
def _(ctx):
    def damage(lay):
        for p in lay.low_dir.glob("*.h5"):
            p.unlink()

    return hier_case(ctx, damage)


@case("hierarchy: corrupt 20x file", "hier", REFUSE)
def _(ctx):
    return hier_case(ctx, lambda lay: lay.high_file("h001").write_bytes(os.urandom(3000)))


@case("hierarchy: NaN in a 20x file", "hier", REFUSE)
def _(ctx):
    def nan(f, c):
        f[3, 1] = float("nan")
        return f, c

    return hier_case(ctx, lambda lay: edit_patch_file(lay.high_file("h002"), nan))


@case("hierarchy: 5x and 20x feature dims differ", "hier", REFUSE)
def _(ctx):
    return hier_case(ctx, lambda lay: edit_patch_file(lay.high_file("h000"), lambda f, c: (f[:, :8], c)))


@case("hierarchy: duplicate coordinate in a 20x file", "hier", REFUSE)
def _(ctx):
    def dup(f, c):
        c[5] = c[4]
        return f, c

    return hier_case(ctx, lambda lay: edit_patch_file(lay.high_file("h003"), dup))


@case("hierarchy: CSV declares 40x slides as 20x", "hier", REFUSE)
def _(ctx):
    import pandas as pd

    def damage(lay):
        frame = pd.read_csv(ctx.dir / "fc.csv")
        frame.loc[frame.slide_id == "h001", "level0_mag"] = 20
        frame.to_csv(ctx.dir / "fc.csv", index=False)

    return hier_case(ctx, damage)


BAD_HIER_FLAGS = (
    ("--max-patches", "0"),
    ("--max-patches", "-2"),
    ("--workers", "0"),
    ("--level0-mag", "30"),
    ("--low-mag", "20", "--high-mag", "5"),
    ("--low-mag", "5y"),
    ("--max-orphan-frac", "1.5"),
    ("--link-rule", "closest"),
)
for _flags in BAD_HIER_FLAGS:
    case(f"hierarchy: bad flag {' '.join(_flags)}", "hier", REFUSE)(
        lambda ctx, flags=_flags: hier_case(ctx, None, *flags)
    )


@case("hierarchy: --csv does not exist", "hier", REFUSE)
def _(ctx):
    return hier_case(ctx, lambda lay: (ctx.dir / "fc.csv").unlink())


@case("hierarchy: --csv with level0_mag 30", "hier", REFUSE)
def _(ctx):
    return hier_case(
        ctx, lambda lay: (ctx.dir / "fc.csv").write_text("case_id,slide_id,label,level0_mag\nc,h000,A,30\n")
    )


@case("hierarchy: output folder is a file", "hier", REFUSE)
def _(ctx):
    def damage(lay):
        lay.hier_dir.parent.mkdir(parents=True, exist_ok=True)
        lay.hier_dir.write_text("not a folder")

    return hier_case(ctx, damage)


@case("hierarchy: rerun with unchanged inputs", "hier", SUCCEED)
def _(ctx):
    layout = make_hier_root(ctx.dir)
    run_inprocess("hier", hier_flags(ctx.dir))
    before = digest_tree([layout.hier_dir])
    ctx.inputs(*hier_inputs(layout))
    res = run_inprocess("hier", hier_flags(ctx.dir))
    same = digest_tree([layout.hier_dir]) == before and "0 done, 4 skipped" in res.out
    return res, None if same else "outputs rewritten"


@case("hierarchy: rerun after a 5x file changed (stale output)", "hier", SUCCEED)
def _(ctx):
    from datasets.slide_check import hierarchy_staleness

    layout = make_hier_root(ctx.dir)
    run_inprocess("hier", hier_flags(ctx.dir))
    edit_patch_file(layout.low_file("h002"), bump_first_feature)
    ctx.inputs(*hier_inputs(layout))
    res = run_inprocess("hier", hier_flags(ctx.dir))
    stale = [s for s in ("h000", "h001", "h002", "h003") if hierarchy_staleness(layout, s)]
    problem = None if not stale and "1 rebuilt (stale: 1)" in res.out else f"stale after the rerun: {stale}"
    return res, problem


@case("hierarchy: killed (SIGKILL) mid-run, then rerun", "hier", SUCCEED, slow=True)
def _(ctx):
    layout = make_hier_root(ctx.dir, n_slides=150, n5=64, dim=32)
    ctx.inputs(*hier_inputs(layout))
    proc = start_subprocess("hier", hier_flags(ctx.dir), ctx.dir / "first.log")
    try:
        wait_for(lambda: len(list(layout.hier_dir.glob("*.h5"))) >= 20, proc, 300)
    finally:
        kill(proc)
    built = len(list(layout.hier_dir.glob("*.h5")))
    res = run_inprocess("hier", hier_flags(ctx.dir))
    if res.code != 0:
        return res
    check = run_inprocess("check", hier_flags(ctx.dir))
    note = f"killed after {built} of 150 slides"
    return res, None if check.code == 0 else f"{note}; checker: {check.out.splitlines()[-3:]}"


# --- check_hierarchical_consistency.py
def built_hier(ctx: Ctx):
    layout = make_hier_root(ctx.dir)
    res = run_inprocess("hier", hier_flags(ctx.dir))
    if res.code != 0:
        raise RuntimeError(f"set-up: building the hierarchy failed: {res.err[-500:]}")
    return layout


def check_case(ctx: Ctx, damage: Callable | None = None, *extra) -> Result:
    layout = built_hier(ctx)
    if damage is not None:
        damage(layout)
    ctx.inputs(*hier_inputs(layout), layout.hier_dir)
    return run_inprocess("check", hier_flags(ctx.dir, *extra))


@case("checker: consistent files", "check", SUCCEED)
def _(ctx):
    return check_case(ctx)


@case("checker: stale hierarchical file", "check", REFUSE)
def _(ctx):
    return check_case(ctx, lambda lay: edit_patch_file(lay.low_file("h000"), bump_first_feature))


@case("checker: a child moved outside its parent", "check", REFUSE)
def _(ctx):
    import h5py

    def damage(lay):
        with h5py.File(lay.hier_file("h001"), "a") as f:
            f["coords"][0, 0] = [900000, 900000]

    return check_case(ctx, damage)


@case("checker: CSV declares 40x slides as 20x", "check", REFUSE)
def _(ctx):
    rows = "".join(f"c{i},h{i:03d},A,20\n" for i in range(4))
    return check_case(
        ctx, lambda lay: (ctx.dir / "fc.csv").write_text("case_id,slide_id,label,level0_mag\n" + rows)
    )


@case("checker: --fix on a damaged file keeps the original", "check", SUCCEED)
def _(ctx):
    import h5py

    layout = built_hier(ctx)
    with h5py.File(layout.hier_file("h002"), "a") as f:
        f["features"][0, 0, 0] += 1.0
    ctx.inputs(*hier_inputs(layout), layout.hier_dir)
    res = run_inprocess("check", hier_flags(ctx.dir, "--fix"))
    fixed = layout.hier_dir.with_name(layout.hier_dir.name + "_fixed") / "h002.h5"
    return res, None if fixed.is_file() else "no fixed copy"


@case("checker: 5x folder missing", "check", REFUSE)
def _(ctx):
    layout = built_hier(ctx)
    shutil.rmtree(layout.low_dir)
    ctx.inputs(layout.high_dir, layout.hier_dir)
    return run_inprocess("check", hier_flags(ctx.dir))


# --- create_splits.py
def splits_case(
    ctx: Ctx, rows: list[tuple], *extra, task: str = "my_task", csv: Path | None = None
) -> Result:
    import pandas as pd

    path = csv or ctx.dir / "table.csv"
    if csv is None:
        pd.DataFrame(rows, columns=["case_id", "slide_id", "label", "level0_mag"]).to_csv(path, index=False)
    if path.exists():
        ctx.inputs(path)
    return run_inprocess(
        "splits", ["--task", task, "--csv", path, "--splits_root", ctx.dir / "splits", *extra]
    )


def _rows(n: int = 20, labels=("A", "B")) -> list[tuple]:
    return [(f"p{i}", f"s{i}", labels[i % len(labels)], 40) for i in range(n)]


@case("splits: task outside the project, --csv", "splits", SUCCEED)
def _(ctx):
    res = splits_case(ctx, _rows(), "--few_shot_num", "2", "--k", "2")
    files = sorted((ctx.dir / "splits").rglob("splits_*.csv"))
    return res, None if len(files) == 2 else f"{len(files)} split files"


@case("splits: --few_shot_num larger than a class", "splits", REFUSE)
def _(ctx):
    return splits_case(ctx, _rows(), "--few_shot_num", "50")


@case("splits: --k 0", "splits", REFUSE)
def _(ctx):
    return splits_case(ctx, _rows(), "--few_shot_num", "2", "--k", "0")


@case("splits: --val_frac + --test_frac > 1", "splits", REFUSE)
def _(ctx):
    return splits_case(ctx, _rows(), "--few_shot_num", "2", "--val_frac", "0.8", "--test_frac", "0.5")


@case("splits: existing splits without --overwrite", "splits", REFUSE)
def _(ctx):
    splits_case(ctx, _rows(), "--few_shot_num", "2", "--k", "2")
    ctx.inputs(ctx.dir / "splits")
    return splits_case(ctx, _rows(), "--few_shot_num", "2", "--k", "2")


@case("splits: --csv missing", "splits", REFUSE)
def _(ctx):
    return splits_case(ctx, [], "--few_shot_num", "2", csv=ctx.dir / "missing.csv")


@case("splits: built-in task, CSV with a foreign label", "splits", REFUSE)
def _(ctx):
    return splits_case(ctx, _rows(labels=("IDC", "LUAD")), "--few_shot_num", "2", task="tcga_brca")


@case("splits: --splits_root is a file", "splits", REFUSE)
def _(ctx):
    (ctx.dir / "splits").write_text("x")
    return splits_case(ctx, _rows(), "--few_shot_num", "2")


# --- extract_features.py (its flag spellings live here only: extract_argv)
def extract_argv(ctx: Ctx, slides, *extra, tower: str = "a", data_root: Path | None = None) -> list:
    return [
        "--slides", slides, "--data-root", data_root or ctx.dir / "R", "--task", "fx",
        "--feature-extractor", "plip", "--weights", ctx.assets.image_tower(tower), "--batch-size", "16",
        "--workers", "0", "--device", "cpu", *extra,
    ]  # fmt: skip


def slide_folder(ctx: Ctx, *names: str) -> Path:
    folder = ctx.dir / "slides"
    folder.mkdir(exist_ok=True)
    for name in names:
        src = ctx.assets.slides()[name]
        shutil.copyfile(src, folder / src.name)
    return folder


def extract_case(ctx: Ctx, names=("s40",), *extra, tower: str = "a") -> Result:
    folder = slide_folder(ctx, *names)
    ctx.inputs(folder)
    return run_inprocess("extract", extract_argv(ctx, folder, *extra, tower=tower))


@case("extract: --slides folder does not exist", "extract", REFUSE)
def _(ctx):
    return run_inprocess("extract", extract_argv(ctx, ctx.dir / "nope"))


@case("extract: a corrupt slide among good ones", "extract", REFUSE)
def _(ctx):
    folder = slide_folder(ctx, "s40")
    (folder / "broken.svs").write_bytes(b"II*\x00" + os.urandom(2000))
    ctx.inputs(folder)
    return run_inprocess("extract", extract_argv(ctx, folder))


@case("extract: slide without magnification, no --level0-mag", "extract", REFUSE)
def _(ctx):
    return extract_case(ctx, ("s20",))


@case("extract: slide without tissue", "extract", REFUSE)
def _(ctx):
    return extract_case(ctx, ("blank",))


@case("extract: --weights folder does not exist", "extract", REFUSE)
def _(ctx):
    folder = slide_folder(ctx, "s40")
    ctx.inputs(folder)
    argv = extract_argv(ctx, folder)
    argv[argv.index("--weights") + 1] = ctx.dir / "no_tower"
    return run_inprocess("extract", argv)


BAD_EXTRACT_FLAGS = (("--batch-size", "0"), ("--min-tissue", "0"), ("--workers", "-1"), ("--limit", "0"))
for _flags in BAD_EXTRACT_FLAGS:
    case(f"extract: bad flag {' '.join(_flags)}", "extract", REFUSE)(
        lambda ctx, flags=_flags: extract_case(ctx, ("s40",), *flags)
    )


@case("extract: --data-root is a file", "extract", REFUSE)
def _(ctx):
    (ctx.dir / "a_file").write_text("x")
    folder = slide_folder(ctx, "s40")
    ctx.inputs(folder)
    return run_inprocess("extract", extract_argv(ctx, folder, data_root=ctx.dir / "a_file"))


@case("extract: CSV names a slide that is not there", "extract", REFUSE)
def _(ctx):
    folder = slide_folder(ctx, "s40")
    csv = ctx.dir / "slides.csv"
    csv.write_text("case_id,slide_id,label,level0_mag\np,s40,A,40\nq,ghost,A,40\n")
    ctx.inputs(folder, csv)
    return run_inprocess("extract", extract_argv(ctx, csv, "--slide-dir", folder))


def _extracted_once(ctx: Ctx) -> Path:
    folder = slide_folder(ctx, "s40")
    first = run_inprocess("extract", extract_argv(ctx, folder))
    if first.code != 0:
        raise RuntimeError(f"set-up: first extraction failed: {first.err[-500:]}")
    return folder


@case("extract: rerun with the same encoder", "extract", SUCCEED)
def _(ctx):
    folder = _extracted_once(ctx)
    before = digest_tree([ctx.dir / "R"])
    ctx.inputs(folder)
    res = run_inprocess("extract", extract_argv(ctx, folder))
    return res, None if digest_tree([ctx.dir / "R"]) == before else "outputs rewritten"


@case("extract: rerun with another encoder over finished slides", "extract", REFUSE)
def _(ctx):
    folder = _extracted_once(ctx)
    ctx.inputs(folder)
    return run_inprocess("extract", extract_argv(ctx, folder, tower="b"))


@case("extract: another encoder adds a slide next to finished ones", "extract", REFUSE, slow=True)
def _(ctx):
    folder = _extracted_once(ctx)
    shutil.copyfile(ctx.assets.slides()["s40"], folder / "s40b.svs")
    ctx.inputs(folder)
    return run_inprocess("extract", extract_argv(ctx, folder, tower="b"))


@case("extract: killed (SIGKILL) mid-run, then rerun", "extract", SUCCEED, slow=True)
def _(ctx):
    import h5py

    from preprocess.wsi.synthetic import synthetic_image, write_pyramid_tiff

    folder = ctx.dir / "slides"
    folder.mkdir()
    for i in range(8):
        write_pyramid_tiff(
            folder / f"k{i}.svs", synthetic_image(tile_px=512, repeat=2, seed=i), objective_power=40
        )
    ctx.inputs(folder)
    argv = extract_argv(ctx, folder)
    layout_root = ctx.dir / "R" / "fx_plip"
    proc = start_subprocess("extract", argv, ctx.dir / "first.log")
    try:
        wait_for(lambda: len(list((layout_root / "plip_5x").glob("*.h5"))) >= 2, proc, 300)
    finally:
        kill(proc)
    killed_after = len(list((layout_root / "plip_5x").glob("*.h5")))
    res = run_inprocess("extract", argv)
    if res.code != 0:
        return res
    counts = []
    for i in range(8):
        with (
            h5py.File(layout_root / "plip_5x" / f"k{i}.h5", "r") as f5,
            h5py.File(layout_root / "plip_20x" / f"k{i}.h5", "r") as f20,
        ):
            counts.append((f5["features"].shape[0], f20["features"].shape[0]))
    ok = len(set(counts)) == 1 and counts[0] == (12, 112)
    return res, None if ok else f"killed after {killed_after}; tile counts {sorted(set(counts))}"
