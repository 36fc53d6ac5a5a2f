"""Fault cases of ``explain.py`` and ``python -m models.convert_checkpoint`` (on one finished demo run)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from tests.faults.harness import REFUSE, SUCCEED, Ctx, Result, case, run_inprocess
from tests.faults.workspace import bump_first_feature, demo_layout, demo_split, edit_patch_file


# --- explain.py
def explain_case(ctx: Ctx, prepare: Callable[[Path, Path], list] | None = None) -> Result:
    """explain.py on the trained run; ``prepare(run, data)`` may return other arguments."""
    data, run = ctx.assets.trained_run()
    argv = ["--checkpoint", run, "--slide", demo_split(data)[1].test[0], "--out", ctx.dir / "explained"]
    if prepare is not None:
        argv = prepare(run, data) or argv
    ctx.inputs(data, run)
    return run_inprocess("explain", argv)


def _test_slide(data: Path) -> str:
    return demo_split(data)[1].test[0]


@case("explain: valid run and slide", "explain", SUCCEED)
def _(ctx):
    res = explain_case(ctx)
    out = ctx.dir / "explained"
    made = sorted(p.name for p in out.glob("*")) if out.is_dir() else []
    return res, None if "explanation.json" in made and "heatmap_5x.png" in made else f"outputs: {made}"


@case("explain: run folder does not exist", "explain", REFUSE)
def _(ctx):
    return explain_case(ctx, lambda run, data: ["--checkpoint", ctx.dir / "nope", "--slide", "x"])


@case("explain: slide not in the run's task", "explain", REFUSE)
def _(ctx):
    return explain_case(ctx, lambda run, data: ["--checkpoint", run, "--slide", "no_such_slide"])


def _copied_run(ctx: Ctx, run: Path, data: Path, damage: Callable[[Path], None]) -> list:
    copy = shutil.copytree(run, ctx.dir / "run")
    damage(copy / "s_0_checkpoint.pt")
    return ["--checkpoint", copy, "--slide", _test_slide(data), "--out", ctx.dir / "o"]


@case("explain: corrupt checkpoint file", "explain", REFUSE)
def _(ctx):
    return explain_case(
        ctx, lambda run, data: _copied_run(ctx, run, data, lambda p: p.write_bytes(os.urandom(2048)))
    )


@case("explain: checkpoint with a tensor of the wrong shape", "explain", REFUSE)
def _(ctx):
    import torch

    def widen_context(path):
        obj = torch.load(path, map_location="cpu", weights_only=True)
        state = obj["state_dict"] if isinstance(obj, dict) and "state_dict" in obj else obj
        key = next(k for k in state if k.endswith("ctx"))
        state[key] = torch.zeros(*state[key].shape[:-1], state[key].shape[-1] + 1)
        torch.save(obj, path)

    return explain_case(ctx, lambda run, data: _copied_run(ctx, run, data, widen_context))


@case("explain: --fold without a checkpoint", "explain", REFUSE)
def _(ctx):
    return explain_case(
        ctx, lambda run, data: ["--checkpoint", run, "--slide", _test_slide(data), "--fold", "3"]
    )


@case("explain: --top 0", "explain", REFUSE)
def _(ctx):
    return explain_case(
        ctx, lambda run, data: ["--checkpoint", run, "--slide", _test_slide(data), "--top", "0"]
    )


@case("explain: --out is a file", "explain", REFUSE)
def _(ctx):
    (ctx.dir / "a_file").write_text("x")
    return explain_case(
        ctx,
        lambda run, data: ["--checkpoint", run, "--slide", _test_slide(data), "--out", ctx.dir / "a_file"],
    )


@case("explain: the slide's features changed since training (stale hierarchy)", "explain", REFUSE)
def _(ctx):
    def prepare(run, data):
        slide = _test_slide(data)
        path = demo_layout(data).low_file(slide)
        backup = shutil.copyfile(path, ctx.dir / "backup.h5")
        ctx.cleanup.append(lambda: shutil.copyfile(backup, path))  # the shared run's data stays pristine
        edit_patch_file(path, bump_first_feature)
        return ["--checkpoint", run, "--slide", slide, "--out", ctx.dir / "o"]

    return explain_case(ctx, prepare)


# --- models/convert_checkpoint.py
def convert_case(ctx: Ctx, make_src: Callable[[], Path], dst: Path | None = None) -> Result:
    src = make_src()
    if src.exists():
        ctx.inputs(src)
    return run_inprocess("convert", [src, dst if dst is not None else ctx.dir / "out.pt"])


def _trained_checkpoint(ctx: Ctx) -> Path:
    return ctx.assets.trained_run()[1] / "s_0_checkpoint.pt"


@case("convert: released-format checkpoint", "convert", SUCCEED)
def _(ctx):
    import torch

    from models.checkpoint import ours_to_released, read_checkpoint

    def make():
        state, _ = read_checkpoint(_trained_checkpoint(ctx))
        path = ctx.dir / "released.pt"
        torch.save({**ours_to_released(state), "custom_vlm.logit_scale": torch.tensor(4.6)}, path)
        return path

    res = convert_case(ctx, make)
    if res.code != 0:
        return res
    state, _ = read_checkpoint(ctx.dir / "out.pt")
    original, _ = read_checkpoint(_trained_checkpoint(ctx))
    same = state.keys() == original.keys() and all(torch.equal(state[k], original[k]) for k in state)
    return res, None if same else "converted tensors differ from the originals"


@case("convert: input file missing", "convert", REFUSE)
def _(ctx):
    return convert_case(ctx, lambda: ctx.dir / "missing.pt")


@case("convert: input is garbage", "convert", REFUSE)
def _(ctx):
    def make():
        path = ctx.dir / "garbage.pt"
        path.write_bytes(os.urandom(1000))
        return path

    return convert_case(ctx, make)


@case("convert: input is a checkpoint of another model", "convert", REFUSE)
def _(ctx):
    import torch

    def make():
        path = ctx.dir / "abmil.pt"
        torch.save({"attention.weight": torch.zeros(4, 4), "classifier.bias": torch.zeros(2)}, path)
        return path

    return convert_case(ctx, make)


@case("convert: output is the input", "convert", REFUSE)
def _(ctx):
    src = Path(shutil.copyfile(_trained_checkpoint(ctx), ctx.dir / "in.pt"))
    return convert_case(ctx, lambda: src, dst=src)


@case("convert: output folder is a file", "convert", REFUSE)
def _(ctx):
    (ctx.dir / "a_file").write_text("x")
    src = Path(shutil.copyfile(_trained_checkpoint(ctx), ctx.dir / "in.pt"))
    return convert_case(ctx, lambda: src, dst=ctx.dir / "a_file" / "out.pt")
