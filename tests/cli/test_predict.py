"""predict.py end to end: a short demo run predicts its own test slides, feature folders, tensors and a
raw pyramidal TIFF; resumability, bad slides, fold selection, run-folder errors, heatmaps."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import predict
from utils.errors import run_cli

CLASSES = ("solid", "glandular", "papillary")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    """A one-epoch HiVE-MIL demo run, fold 0 only (trained in this process)."""
    from inference.demo_run import demo_run_dir, train_demo

    results = tmp_path_factory.mktemp("predict_demo")
    train_demo(
        [
            "--task",
            "demo",
            "--max_epochs",
            "1",
            "--k_end",
            "1",
            "--results_dir",
            str(results),
            "--quiet",
            "--threads",
            "1",
        ]
    )
    return demo_run_dir(results)


@pytest.fixture(scope="module")
def demo_layout(demo_run):
    from datasets.features import FeatureLayout

    config = json.loads((demo_run / "config.json").read_text())["config"]
    return FeatureLayout(config["data_root_dir"], "demo", "demo")


def _predict(capsys, *argv) -> tuple[int, str, str]:
    code = run_cli(predict.main, [*map(str, argv), "--threads", "1", "--device", "cpu"])
    out, err = capsys.readouterr()
    return code, out, err


def _failed_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("failed ")]


def _error_line(capsys, *argv) -> str:
    code, _, err = _predict(capsys, *argv)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _copy_run(run: Path, target: Path) -> Path:
    shutil.copytree(run, target, ignore=shutil.ignore_patterns("predictions", ".*lock"))
    return target


def _perturbed_checkpoint(source: Path, target: Path, delta: float) -> None:
    from models.checkpoint import read_checkpoint, save_checkpoint

    state, identity = read_checkpoint(source)
    g = torch.Generator().manual_seed(0)  # the GNN weights (the released text path ignores the context)
    state = {
        k: v + delta * torch.randn(v.shape, generator=g) if k.startswith("gnn.") else v
        for k, v in state.items()
    }
    save_checkpoint(target, state, identity)


# ------------------------------------------------------------------------------------------ fidelity


def test_fold_checkpoint_reproduces_the_runs_test_probabilities(demo_run, tmp_path, capsys):
    expected = pd.read_csv(demo_run / "fold_0" / "predictions_test.csv")
    out_dir = tmp_path / "p"
    code, out, err = _predict(
        capsys, "--run", demo_run, "--slides", *expected["slide_id"], "--folds", "0", "--out", out_dir
    )
    assert code == 0, err
    got = pd.read_csv(out_dir / "predictions.csv").set_index("slide_id").loc[expected["slide_id"]]
    for name in CLASSES:
        np.testing.assert_allclose(got[f"fold_0_prob_{name}"], expected[f"prob_{name}"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(got[f"prob_{name}"], expected[f"prob_{name}"], rtol=0, atol=1e-6)
    assert got["pred"].tolist() == expected["pred"].tolist()
    assert got["label"].tolist() == expected["label"].tolist()
    assert got["pred_class"].tolist() == [CLASSES[i] for i in expected["pred"]]
    assert set(got["kind"]) == {"task"} and set(got["folds"].astype(str)) == {"0"}
    assert f"{len(expected)} predicted, 0 reused, 0 failed" in out


def test_tensor_forms_give_the_feature_files_prediction(demo_run, demo_layout, tmp_path, capsys):
    """A dict with x5/x20/child_mask and a dict with flat x20 + coords (linked here as the hierarchy
    builder links) predict exactly what the slide's feature files predict."""
    from datasets.features import read_patch_file, read_slide_bag

    sid = "demo_slide_003"
    bag = read_slide_bag(demo_layout, sid)
    x20, c20 = read_patch_file(demo_layout.high_file(sid), "20x")
    tensors = tmp_path / "tensors"
    tensors.mkdir()
    from datasets.dataset_csv import read_level0_mags

    mag = read_level0_mags(Path(demo_layout.data_root_dir).parent / "dataset_csv" / "demo.csv")[sid]
    torch.save(
        {"x5": bag.x5, "x20": bag.x20, "child_mask": bag.child_mask, "coords5": bag.coords5,
         "coords20": bag.coords20, "level0_mag": mag},
        tensors / "as_rows.pt",
    )  # fmt: skip
    torch.save(
        {"x5": bag.x5, "coords5": bag.coords5, "x20": torch.from_numpy(x20), "coords20": torch.from_numpy(c20),
         "level0_mag": mag},
        tensors / "linked.pth",
    )  # fmt: skip
    code, _, err = _predict(capsys, "--run", demo_run, "--slides", sid, tensors, "--out", tmp_path / "p")
    assert code == 0, err
    got = pd.read_csv(tmp_path / "p" / "predictions.csv").set_index("slide_id")
    assert list(got.index) == [sid, "as_rows", "linked"]
    assert list(got["kind"]) == ["task", "tensor", "tensor"]
    cols = [f"prob_{c}" for c in CLASSES]
    for name in ("as_rows", "linked"):
        np.testing.assert_allclose(
            got.loc[name, cols].to_numpy(float), got.loc[sid, cols].to_numpy(float), atol=1e-6
        )


# ------------------------------------------------------------------------------------------ resuming


def test_rerun_reuses_rows_and_changed_inputs_or_checkpoints_are_recomputed(
    demo_run, demo_layout, tmp_path, capsys
):
    run = _copy_run(demo_run, tmp_path / "run")
    features = tmp_path / "features" / "demo_demo"
    slides = ["demo_slide_000", "demo_slide_016", "demo_slide_032"]
    for sid in slides:
        for src, folder in (
            (demo_layout.low_file(sid), "demo_5x"),
            (demo_layout.hier_file(sid), "hierarchical_demo_5x_20x"),
        ):
            (features / folder).mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, features / folder / src.name)
    before = {p: p.read_bytes() for p in sorted(features.rglob("*")) if p.is_file()}
    out_dir = run / "predictions"  # the default --out
    code, out, _ = _predict(capsys, "--run", run, "--slides", features)
    assert code == 0 and "3 predicted, 0 reused" in out
    table = out_dir / "predictions.csv"
    first = table.read_bytes()
    assert list(pd.read_csv(table)["slide_id"]) == slides

    code, out, _ = _predict(capsys, "--run", run, "--slides", features)
    assert code == 0 and "0 predicted, 3 reused" in out
    assert table.read_bytes() == first

    # an interrupted run: the last row never got written
    frame = pd.read_csv(table, dtype=str, keep_default_na=False)
    frame.iloc[:2].to_csv(table, index=False)
    code, out, _ = _predict(capsys, "--run", run, "--slides", features)
    assert "1 predicted, 2 reused" in out and table.read_bytes() == first

    # a changed input file: only that slide again
    changed = features / "demo_5x" / "demo_slide_016.h5"
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    code, out, _ = _predict(capsys, "--run", run, "--slides", features)
    assert "1 predicted, 2 reused" in out and "demo_slide_016: " in out
    assert table.read_bytes() != first  # its input digest changed, its numbers did not
    again = pd.read_csv(table)
    old = pd.read_csv(io.BytesIO(first))
    np.testing.assert_array_equal(again["prob_solid"], old["prob_solid"])

    # a changed checkpoint: every slide again, with other numbers
    _perturbed_checkpoint(run / "s_0_checkpoint.pt", run / "s_0_checkpoint.pt", 0.5)
    code, out, _ = _predict(capsys, "--run", run, "--slides", features)
    assert "3 predicted, 0 reused" in out
    assert not np.allclose(pd.read_csv(table)["prob_solid"], old["prob_solid"])
    assert {
        p: p.read_bytes() for p in sorted(features.rglob("*")) if p.is_file()
    } == before  # inputs untouched


# ------------------------------------------------------------------------------------------ bad input


def test_bad_slides_are_one_line_each_and_the_rest_continue(demo_run, demo_layout, tmp_path, capsys):
    from datasets.features import read_slide_bag

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "corrupt.pt").write_bytes(b"not a torch file")
    torch.save({"features": torch.randn(5, 7)}, bad / "wrong_dim.pt")
    torch.save({"features": torch.randn(5, 64)}, bad / "flat.pt")  # no hierarchy: not for HiVE-MIL
    bag = read_slide_bag(demo_layout, "demo_slide_001")
    torch.save({"x5": bag.x5, "x20": bag.x20}, tmp_path / "good.pt")
    slides = ["demo_slide_000", "no_such_slide", bad, tmp_path / "missing" / "gone.pt", tmp_path / "good.pt"]
    code, out, err = _predict(capsys, "--run", demo_run, "--slides", *slides, "--out", tmp_path / "p")
    assert code == 1
    failed = _failed_lines(err)
    assert len(failed) == 5, err
    joined = "\n".join(failed)
    for sid in ("no_such_slide", "corrupt", "wrong_dim", "flat", "gone"):
        assert sum(line.startswith(f"failed {sid}: ") for line in failed) == 1, joined
    assert "not a slide of task demo" in joined and "feature dim mismatch" in joined and "x5" in joined
    assert "2 predicted, 0 reused, 5 failed" in out
    assert list(pd.read_csv(tmp_path / "p" / "predictions.csv")["slide_id"]) == ["demo_slide_000", "good"]


def test_folds_selection_and_ensemble(demo_run, tmp_path, capsys):
    run = _copy_run(demo_run, tmp_path / "run")
    _perturbed_checkpoint(run / "s_0_checkpoint.pt", run / "s_1_checkpoint.pt", 0.3)
    slides = ["demo_slide_000", "demo_slide_020"]
    code, _, err = _predict(capsys, "--run", run, "--slides", *slides, "--out", tmp_path / "all")
    assert code == 0, err
    table = pd.read_csv(tmp_path / "all" / "predictions.csv")
    for name in CLASSES:  # default: every fold with a checkpoint, ensemble = mean probability
        mean = (table[f"fold_0_prob_{name}"] + table[f"fold_1_prob_{name}"]) / 2
        np.testing.assert_allclose(table[f"prob_{name}"], mean, rtol=1e-12)
    assert not np.allclose(table["fold_0_prob_solid"], table["fold_1_prob_solid"])
    probs = table[[f"prob_{c}" for c in CLASSES]].to_numpy()
    assert table["pred"].tolist() == probs.argmax(axis=1).tolist()
    assert set(table["folds"]) == {"0 1"}

    code, _, err = _predict(
        capsys, "--run", run, "--slides", *slides, "--folds", "1", "--out", tmp_path / "one"
    )
    assert code == 0, err
    one = pd.read_csv(tmp_path / "one" / "predictions.csv")
    assert not any(c.startswith("fold_0_") for c in one.columns)
    np.testing.assert_allclose(one["prob_solid"], table["fold_1_prob_solid"])

    assert "s_2_checkpoint.pt: checkpoint not found" in _error_line(
        capsys, "--run", run, "--slides", *slides, "--folds", "2"
    )
    assert "folds 0..2" in _error_line(capsys, "--run", run, "--slides", *slides, "--folds", "7")


def test_wrong_run_folder_or_missing_checkpoint_is_one_line(demo_run, tmp_path, capsys):
    assert "no such run folder" in _error_line(
        capsys, "--run", tmp_path / "nope", "--slides", "demo_slide_000"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no config.json" in _error_line(capsys, "--run", empty, "--slides", "demo_slide_000")
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy2(demo_run / "config.json", bare / "config.json")
    assert "no fold checkpoints" in _error_line(capsys, "--run", bare, "--slides", "demo_slide_000")
    broken = _copy_run(demo_run, tmp_path / "broken")
    (broken / "s_0_checkpoint.pt").write_bytes(b"garbage")
    assert "cannot read checkpoint" in _error_line(capsys, "--run", broken, "--slides", "demo_slide_000")
    assert "no such CSV" in _error_line(capsys, "--run", demo_run, "--slides", tmp_path / "list.csv")
    assert "--top-tiles" in _error_line(capsys, "--run", demo_run, "--slides", "x", "--top-tiles", "-1")
    assert not (demo_run / "predictions").exists()


# ------------------------------------------------------------------------------------------ heatmaps


def test_heatmap_on_a_raw_slide_is_where_the_planted_signal_is(tmp_path, capsys):
    """Raw pyramidal TIFF -> on-the-fly extraction with the run's tower -> ABMIL attention rigged to the
    planted tiles -> overlay on the thumbnail: the heat is in the planted region, the top tile is cut
    from it; a rerun extracts nothing and reuses the row."""
    from preprocess.wsi.synthetic import TISSUE_RGB
    from tests.planted import PLANTED_RGB, planted_rect_px, planted_slide, rigged_abmil_run

    slides = tmp_path / "slides"
    slides.mkdir()
    slide = planted_slide(slides / "planted.svs")
    run = rigged_abmil_run(tmp_path / "results", slide)
    out_dir = tmp_path / "p"
    code, out, err = _predict(
        capsys, "--run", run, "--slides", slides, "--out", out_dir, "--heatmaps", "--top-tiles", "2"
    )
    assert code == 0, err
    folder = out_dir / "heatmaps" / "planted" / "fold_0"
    for name in (
        "heatmap_5x.png", "heatmap_20x.png", "top_20x_1.png", "top_5x_1.png", "scores.npz",
        "detail_5x.png", "detail_20x.png", "top_grid_5x.png", "top_grid_20x.png",
    ):  # fmt: skip
        assert (folder / name).read_bytes()[:4] in (b"\x89PNG", b"PK\x03\x04"), name
    data = np.load(folder / "scores.npz")
    meta = json.loads(str(data["meta"]))
    assert meta["thumbnail"] and meta["model_type"] == "ABMIL"
    x0, x1, y0, y1 = planted_rect_px()
    for scale, ratio in (("20x", 10), ("5x", 2)):  # the planted 5x patch also holds ordinary tiles
        raster = data[f"raster_{scale}"]
        ds = float(data[f"raster_downsample_{scale}"])
        ox, oy = data[f"raster_origin_{scale}"]
        rows = (np.arange(raster.shape[0]) + 0.5) * ds + oy
        cols = (np.arange(raster.shape[1]) + 0.5) * ds + ox
        inside = ((rows >= y0) & (rows < y1))[:, None] & ((cols >= x0) & (cols < x1))[None, :]
        heat_in = np.nanmean(raster[inside])
        heat_out = np.nanmean(np.where(inside, np.nan, raster))
        assert np.isfinite(heat_in) and heat_in > ratio * heat_out, (scale, heat_in, heat_out)
    top = meta["top_tiles"]["20x"][0]
    assert x0 <= top["x"] < x1 and y0 <= top["y"] < y1
    top5, side5 = meta["top_tiles"]["5x"][0], int(data["patch_px_5x"])
    assert top5["x"] <= x0 and x1 <= top5["x"] + side5 and top5["y"] <= y0 and y1 <= top5["y"] + side5
    from PIL import Image

    tile = np.asarray(Image.open(folder / "top_20x_1.png").convert("RGB"), dtype=float).reshape(-1, 3).mean(0)
    assert np.linalg.norm(tile - PLANTED_RGB) < np.linalg.norm(
        tile - TISSUE_RGB
    )  # cut from the planted region
    row = pd.read_csv(out_dir / "predictions.csv").iloc[0]
    assert row["slide_id"] == "planted" and row["kind"] == "raw" and row["heatmaps"] == "heatmaps/planted"
    cache = out_dir / "feature_cache" / "demo_demo"
    assert (cache / "hierarchical_demo_5x_20x" / "planted.h5").is_file()

    mtime = (cache / "demo_5x" / "planted.h5").stat().st_mtime_ns
    code, out, _ = _predict(
        capsys, "--run", run, "--slides", slides, "--out", out_dir, "--heatmaps", "--top-tiles", "2"
    )
    assert code == 0 and "0 predicted, 1 reused" in out
    assert (cache / "demo_5x" / "planted.h5").stat().st_mtime_ns == mtime


def test_hivemil_heatmaps_on_the_patch_grid(demo_run, tmp_path, capsys):
    code, _, err = _predict(
        capsys, "--run", demo_run, "--slides", "demo_slide_005", "--out", tmp_path / "p", "--heatmaps"
    )
    assert code == 0, err
    folder = tmp_path / "p" / "heatmaps" / "demo_slide_005" / "fold_0"
    assert sorted(p.name for p in folder.iterdir()) == [
        "detail_20x.png", "detail_5x.png", "heatmap_20x.png", "heatmap_5x.png", "scores.npz",
        "top_grid_20x.png", "top_grid_5x.png",
    ]  # fmt: skip
    data = np.load(folder / "scores.npz")
    meta = json.loads(str(data["meta"]))
    assert meta["scores"] == "class evidence" and not meta["thumbnail"]
    values = data["values_5x"]
    assert values.size and (values >= -1).all() and (values <= 1).all()
