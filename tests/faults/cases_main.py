"""Fault cases of ``main.py``: feature files, dataset CSV, splits, prompts, flags, outputs, resumes.

One entry per case: ``@case(name, tool, expect, ...)`` over a function that builds, damages and runs
(see :class:`tests.faults.harness.Case` for the expected outcome, known defects and slow cases).
"""

from __future__ import annotations

import json
import os
import shutil

from tests.faults.harness import (
    REFUSE,
    SUCCEED,
    WARNED,
    case,
    kill,
    run_inprocess,
    start_subprocess,
    wait_for,
)
from tests.faults.workspace import (
    bump_first_feature,
    copy_demo,
    demo_case,
    demo_csv,
    demo_layout,
    demo_split,
    edit_csv,
    edit_patch_file,
    first_test,
    first_train,
    main_argv,
    prompt_file,
    run_dir_of,
    write_demo_split,
    write_raw_h5,
)


# --- feature files
@case("main: feature folder does not exist", "main", REFUSE)
def _(ctx):
    return demo_case(ctx, lambda d: shutil.rmtree(d / "features"))


@case("main: 5x file of a training slide missing", "main", REFUSE)
def _(ctx):
    return demo_case(ctx, lambda d: demo_layout(d).low_file(first_train(d)).unlink())


@case("main: hierarchical file of a test slide missing", "main", REFUSE)
def _(ctx):
    return demo_case(ctx, lambda d: demo_layout(d).hier_file(first_test(d)).unlink())


@case("main: --skip_missing with a missing test slide", "main", SUCCEED)
def _(ctx):
    missing = {}

    def damage(d):
        missing["slide"] = first_test(d)
        demo_layout(d).hier_file(missing["slide"]).unlink()

    res = demo_case(ctx, damage, "--skip_missing")
    if res.code != 0:
        return res
    preds = (run_dir_of(ctx.dir / "results") / "fold_0" / "predictions_test.csv").read_text()
    return res, ("the skipped slide has a prediction" if missing["slide"] in preds else None)


@case("main: empty (0-byte) 5x file", "main", REFUSE)
def _(ctx):
    return demo_case(ctx, lambda d: demo_layout(d).low_file(first_train(d)).write_bytes(b""))


@case("main: corrupt hierarchical file (random bytes)", "main", REFUSE)
def _(ctx):
    return demo_case(ctx, lambda d: demo_layout(d).hier_file(first_test(d)).write_bytes(os.urandom(4096)))


@case("main: truncated hierarchical file (half of it)", "main", REFUSE)
def _(ctx):
    def damage(d):
        path = demo_layout(d).hier_file(first_train(d))
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return demo_case(ctx, damage)


@case("main: NaN in a 5x file", "main", REFUSE)
def _(ctx):
    def nan(f, c):
        f[0, 0] = float("nan")
        return f, c

    return demo_case(ctx, lambda d: edit_patch_file(demo_layout(d).low_file(first_test(d)), nan))


@case("main: Inf in a hierarchical file", "main", REFUSE)
def _(ctx):
    import h5py

    def damage(d):
        with h5py.File(demo_layout(d).hier_file(first_train(d)), "a") as f:
            f["features"][0, 0, 0] = float("inf")

    return demo_case(ctx, damage)


@case("main: --feature_dim that the features do not have", "main", REFUSE)
def _(ctx):
    return demo_case(ctx, None, "--feature_dim", "32")


@case("main: one slide's 5x features of another dimension", "main", REFUSE)
def _(ctx):
    return demo_case(
        ctx, lambda d: edit_patch_file(demo_layout(d).low_file(first_test(d)), lambda f, c: (f[:, :32], c))
    )


@case("main: 5x features stored 1-D", "main", REFUSE)
def _(ctx):
    return demo_case(
        ctx,
        lambda d: write_raw_h5(demo_layout(d).low_file(first_train(d)), features=[1.0, 2.0], coords=[[0, 0]]),
    )


@case("main: empty bag (0 patches)", "main", REFUSE)
def _(ctx):
    import numpy as np

    return demo_case(
        ctx,
        lambda d: write_raw_h5(
            demo_layout(d).low_file(first_train(d)),
            features=np.zeros((0, 64), np.float32),
            coords=np.zeros((0, 2), np.int64),
        ),
    )


@case("main: 5x file without 'coords'", "main", REFUSE)
def _(ctx):
    import numpy as np

    return demo_case(
        ctx,
        lambda d: write_raw_h5(
            demo_layout(d).low_file(first_train(d)), features=np.ones((3, 64), np.float32)
        ),
    )


@case("main: 5x file changed after the hierarchy was built (stale)", "main", REFUSE)
def _(ctx):
    return demo_case(
        ctx, lambda d: edit_patch_file(demo_layout(d).low_file(first_train(d)), bump_first_feature)
    )


@case("main: hierarchy built with level0_mag 20 for 40x data (forced)", "main", REFUSE)
def _(ctx):
    import pandas as pd

    from preprocess.hierarchy import build_slide_hierarchy

    def damage(d):
        frame = pd.read_csv(demo_csv(d))
        at40 = set(frame.slide_id[frame.level0_mag == 40])
        slide = next(s for s in demo_split(d)[1].train if s in at40)
        build_slide_hierarchy(demo_layout(d), slide, 20, overwrite=True)  # the library call has no threshold

    return demo_case(ctx, damage)


# --- dataset CSV, splits, prompts
@case("main: a slide in both train and test", "main", REFUSE)
def _(ctx):
    return demo_case(ctx, lambda d: write_demo_split(d, lambda tr, va, te: (tr, va, te + [tr[0]])))


@case("main: two slides of one patient in train and test", "main", REFUSE)
def _(ctx):
    def damage(d):
        _, split = demo_split(d)
        a, b = split.train[0], split.test[0]

        def same_patient(f):
            case_of_a = f.loc[f.slide_id == a, "case_id"].iloc[0]
            return f.assign(case_id=f.case_id.where(f.slide_id != b, case_of_a))

        edit_csv(d, same_patient)

    return demo_case(ctx, damage)


@case("main: split names a slide not in the dataset CSV", "main", REFUSE)
def _(ctx):
    return demo_case(ctx, lambda d: write_demo_split(d, lambda tr, va, te: (tr, va, te + ["no_such_slide"])))


@case("main: split file missing", "main", REFUSE)
def _(ctx):
    return demo_case(ctx, lambda d: demo_split(d)[0].unlink())


@case("main: split file empty", "main", REFUSE)
def _(ctx):
    return demo_case(ctx, lambda d: demo_split(d)[0].write_text(""))


@case("main: split file with a wrong header", "main", REFUSE)
def _(ctx):
    def damage(d):
        path = demo_split(d)[0]
        lines = path.read_text().splitlines()
        path.write_text("\n".join([",training,validation,testing", *lines[1:]]) + "\n")

    return demo_case(ctx, damage)


# Known gap (README, Limitations): the fold trains, with a warning naming the class.
@case("main: a class has no training slide", "main", REFUSE, outcome=WARNED)
def _(ctx):
    import pandas as pd

    def damage(d):
        frame = pd.read_csv(demo_csv(d), dtype=str)
        solid = set(frame.slide_id[frame.label == "solid"])
        write_demo_split(d, lambda tr, va, te: ([s for s in tr if s not in solid], va, te))

    return demo_case(ctx, damage)


@case("main: dataset CSV without level0_mag column", "main", REFUSE)
def _(ctx):
    return demo_case(ctx, lambda d: edit_csv(d, lambda f: f.drop(columns=["level0_mag"])))


@case("main: dataset CSV lists a slide twice", "main", REFUSE)
def _(ctx):
    import pandas as pd

    return demo_case(ctx, lambda d: edit_csv(d, lambda f: pd.concat([f, f.iloc[:1]])))


@case("main: dataset CSV with a label not in the task", "main", REFUSE)
def _(ctx):
    return demo_case(
        ctx, lambda d: edit_csv(d, lambda f: f.assign(label=f.label.where(f.index != 0, "squamous")))
    )


@case("main: dataset CSV with an empty label cell", "main", REFUSE)
def _(ctx):
    return demo_case(ctx, lambda d: edit_csv(d, lambda f: f.assign(label=f.label.where(f.index != 3, ""))))


@case("main: level0_mag 30 in the dataset CSV", "main", REFUSE)
def _(ctx):
    return demo_case(
        ctx, lambda d: edit_csv(d, lambda f: f.assign(level0_mag=f.level0_mag.where(f.index != 0, "30")))
    )


def _edit_prompts(d, edit) -> None:
    path = prompt_file(d)
    path.write_text(json.dumps(edit(json.loads(path.read_text())), indent=1))


@case("main: prompt file lacks a class", "main", REFUSE)
def _(ctx):
    return demo_case(
        ctx, lambda d: _edit_prompts(d, lambda p: {k: v for k, v in p.items() if k != "papillary"})
    )


@case("main: prompt file with an extra class", "main", REFUSE)
def _(ctx):
    return demo_case(ctx, lambda d: _edit_prompts(d, lambda p: {**p, "mucinous": p["solid"]}))


@case("main: prompt file is not valid JSON", "main", REFUSE)
def _(ctx):
    return demo_case(ctx, lambda d: prompt_file(d).write_text('{"solid": {'))


@case("main: prompt file with 3 coarse entries for a class", "main", REFUSE)
def _(ctx):
    def drop(p):
        p["solid"] = dict(list(p["solid"].items())[1:])
        return p

    return demo_case(ctx, lambda d: _edit_prompts(d, drop))


@case("main: --text_tower folder does not exist", "main", REFUSE)
def _(ctx):
    return demo_case(ctx, None, "--text_tower", ctx.dir / "no_tower")


@case("main: --text_tower folder with a corrupt config.json", "main", REFUSE)
def _(ctx):
    tower = shutil.copytree(ctx.assets.text_tower(), ctx.dir / "tower")
    (tower / "config.json").write_text("{ not json")
    return demo_case(ctx, None, "--text_tower", tower)


# --- flags and outputs
BAD_FLAGS = (
    ("--lr", "-1"),
    ("--max_epochs", "0"),
    ("--k", "0"),
    ("--few_shot_num", "0"),
    ("--max_orphan_frac", "2"),
    ("--label_frac", "0"),
    ("--device", "cuda:7"),
    ("--num_workers", "-1"),
    ("--lr", "abc"),
    ("--k", "3", "--k_start", "2", "--k_end", "1"),
    ("--task", "tcga_unknown"),
    ("--model_type", "HiVE_MILL"),
)
for _flags in BAD_FLAGS:
    case(f"main: bad flag {' '.join(_flags)}", "main", REFUSE)(
        lambda ctx, flags=_flags: demo_case(ctx, None, *flags)
    )


@case("main: --results_dir under a file", "main", REFUSE)
def _(ctx):
    (ctx.dir / "a_file").write_text("x")
    data = copy_demo(ctx.assets, ctx.dir)
    ctx.inputs(data)
    return run_inprocess("main", main_argv(ctx.assets, data, ctx.dir / "a_file" / "results"))


@case("main: second run into a folder a running run holds", "main", REFUSE, slow=True)
def _(ctx):
    data = copy_demo(ctx.assets, ctx.dir)
    argv = main_argv(ctx.assets, data, ctx.dir / "results", "--max_epochs", "50")
    proc = start_subprocess("main", argv, ctx.dir / "first.log")
    try:
        if not wait_for(lambda: "epoch" in (ctx.dir / "first.log").read_text(), proc, 300):
            raise RuntimeError(
                f"set-up: the first run did not start:\n{(ctx.dir / 'first.log').read_text()[-500:]}"
            )
        ctx.inputs(data)
        return run_inprocess("main", argv)
    finally:
        kill(proc)


@case("main: run killed (SIGKILL) after its first fold, then rerun", "main", SUCCEED, slow=True)
def _(ctx):
    data = copy_demo(ctx.assets, ctx.dir)
    ctx.inputs(data)
    argv = main_argv(ctx.assets, data, ctx.dir / "results", "--k", "2", "--max_epochs", "2")
    proc = start_subprocess("main", argv, ctx.dir / "first.log")
    try:
        done = wait_for(lambda: any((ctx.dir / "results").rglob("fold_0/metrics.json")), proc, 600)
    finally:
        kill(proc)
    if not done:
        raise RuntimeError(f"set-up: fold 0 never finished:\n{(ctx.dir / 'first.log').read_text()[-500:]}")
    res = run_inprocess("main", argv)
    if res.code != 0:
        return res
    run = run_dir_of(ctx.dir / "results")
    summary = (run / "summary.csv").read_text().strip().splitlines()
    problem = None
    if len(summary) != 3:
        problem = f"summary.csv has {len(summary) - 1} folds, expected 2"
    elif "fold 0: finished in an earlier run" not in res.out + (run / "log.txt").read_text():
        problem = "fold 0 was not reused"
    return res, problem


# --- resumes: each case starts from the same finished run (Assets.resume_chain) and changes one thing
def _log_since(path, offset: int) -> str:
    return path.read_text()[offset:]


@case("resume: same command, unchanged inputs", "main", SUCCEED)
def _(ctx):
    ch = ctx.assets.resume_chain()
    ckpt = ch.run_dir / "s_0_checkpoint.pt"
    stamp, log_at = ckpt.stat().st_mtime_ns, len((ch.run_dir / "log.txt").read_text())
    ctx.inputs(ch.data)
    res = run_inprocess("main", ch.argv())
    reused = "finished in an earlier run with the same inputs" in _log_since(ch.run_dir / "log.txt", log_at)
    return res, None if reused and ckpt.stat().st_mtime_ns == stamp else "fold 0 was trained again"


@case("resume: another --lr without --overwrite", "main", REFUSE)
def _(ctx):
    ch = ctx.assets.resume_chain()
    ctx.inputs(ch.data)
    return run_inprocess("main", ch.argv("--lr", "0.5"))


@case("resume: a split file changed", "main", SUCCEED)
def _(ctx):
    ch = ctx.assets.resume_chain()
    write_demo_split(ch.data, lambda tr, va, te: (tr, va, te[:-1]))
    log_at = len((ch.run_dir / "log.txt").read_text())
    ctx.inputs(ch.data)
    res = run_inprocess("main", ch.argv())
    redone = "inputs changed since it finished" in _log_since(ch.run_dir / "log.txt", log_at)
    return res, None if redone else "fold 0 was reused although its split changed"


@case("resume: a 5x file changed (hierarchy now stale)", "main", REFUSE)
def _(ctx):
    ch = ctx.assets.resume_chain()
    edit_patch_file(demo_layout(ch.data).low_file(demo_split(ch.data)[1].train[1]), bump_first_feature)
    ctx.inputs(ch.data)
    return run_inprocess("main", ch.argv())


@case("resume: stale hierarchy rebuilt, then resumed", "main", SUCCEED)
def _(ctx):
    from preprocess.demo import EXTRACTOR, TASK_NAME

    ch = ctx.assets.resume_chain()
    edit_patch_file(demo_layout(ch.data).low_file(demo_split(ch.data)[1].train[1]), bump_first_feature)
    rebuild = run_inprocess(
        "hier",
        [
            "--dataset-root-path", ch.data / "features", "--dataset-name", TASK_NAME,
            "--feature-extractor-name", EXTRACTOR, "--csv", demo_csv(ch.data),
        ],
    )  # fmt: skip
    if rebuild.code != 0 or "1 rebuilt" not in rebuild.out:
        raise RuntimeError(f"set-up: the rebuild did not rebuild exactly one slide ({rebuild.out[-200:]})")
    log_at = len((ch.run_dir / "log.txt").read_text())
    ctx.inputs(ch.data)
    res = run_inprocess("main", ch.argv())
    redone = "feature files of 1 slide(s)" in _log_since(ch.run_dir / "log.txt", log_at)
    return res, None if redone else "fold 0 was reused although a slide's features changed"


@case("resume: a fold's checkpoint deleted", "main", SUCCEED)
def _(ctx):
    ch = ctx.assets.resume_chain()
    (ch.run_dir / "s_0_checkpoint.pt").unlink()
    ctx.inputs(ch.data)
    res = run_inprocess("main", ch.argv())
    return res, None if (ch.run_dir / "s_0_checkpoint.pt").is_file() else "checkpoint not written again"


@case("resume: a fold's metrics.json corrupt", "main", SUCCEED)
def _(ctx):
    ch = ctx.assets.resume_chain()
    (ch.run_dir / "fold_0" / "metrics.json").write_text("{ truncated")
    ctx.inputs(ch.data)
    res = run_inprocess("main", ch.argv())
    try:
        json.loads((ch.run_dir / "fold_0" / "metrics.json").read_text())
        return res, None
    except ValueError:
        return res, "metrics.json still corrupt"
