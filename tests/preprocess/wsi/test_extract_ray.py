"""extract_features.py --ray (preprocess.wsi.batch): slides spread over Ray workers that hold the encoder once; same files as
without Ray, a bad slide is one line, finished slides are skipped."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

import extract_features
from datasets.features import FeatureLayout
from preprocess.wsi.batch import SlideWorker
from preprocess.wsi.pipeline import ExtractOptions
from preprocess.wsi.sources import SlideSource
from preprocess.wsi.synthetic import synthetic_image, write_pyramid_tiff
from utils.errors import run_cli

TASK, EXTRACTOR = "toy", "plip"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from models.towers.tiny import save_tiny_hf_clip

    root = tmp_path_factory.mktemp("extract_ray")
    slides = root / "slides"
    slides.mkdir()
    write_pyramid_tiff(slides / "s20.svs", synthetic_image(tile_px=256), objective_power=20)
    (slides / "broken.svs").write_bytes(b"II*\x00" + bytes(range(256)) * 8)
    tower = save_tiny_hf_clip(root / "tower", image_size=32, projection=24)
    return {"root": root, "slides": slides, "tower": tower}


def _args(ws, data_root, *extra) -> list[str]:
    return [
        "--data-root", str(data_root), "--task", TASK, "--feature-extractor", EXTRACTOR,
        "--weights", str(ws["tower"]), "--batch-size", "8", "--workers", "1", "--device", "cpu", *extra,
    ]  # fmt: skip


def _read(path):
    with h5py.File(path, "r") as f:
        return f["features"][()], f["coords"][()]


def test_slide_worker_without_ray(workspace, tmp_path):
    """The actor class itself: encoder loaded once, a bad --weights reported by ready(), finished slides skipped."""
    ws = workspace
    options = ExtractOptions(
        extractor=EXTRACTOR, weights=str(ws["tower"]), batch_size=8, workers=0, device="cpu"
    )
    worker = SlideWorker(options, threads=1)
    assert worker.ready() is None
    layout = FeatureLayout(tmp_path / "R", TASK, EXTRACTOR)
    done = worker.extract(SlideSource("s20", ws["slides"] / "s20.svs"), layout)
    assert done.status == "done" and (done.num_low, done.num_high) == (3, 28)
    assert worker.extract(SlideSource("s20", ws["slides"] / "s20.svs"), layout).status == "skipped"
    bad = worker.extract(SlideSource("broken", ws["slides"] / "broken.svs"), layout)
    assert bad.status == "failed" and "broken.svs" in bad.summary_line() and "\n" not in bad.message
    missing = SlideWorker(ExtractOptions(extractor=EXTRACTOR, weights=str(tmp_path / "none")), 1)
    assert "--text_tower" in missing.ready() and "\n" not in missing.ready()


def test_ray_extraction_equals_plain_and_reports_bad_slides(workspace, tmp_path, capsys):
    ws = workspace
    plain, on_ray = tmp_path / "plain", tmp_path / "ray"
    assert run_cli(extract_features.main, ["--slides", str(ws["slides"]), *_args(ws, plain)]) == 1
    capsys.readouterr()
    code = run_cli(
        extract_features.main,
        ["--slides", str(ws["slides"]), *_args(ws, on_ray, "--ray", "--ray-workers", "1")],
    )
    out, err = capsys.readouterr()
    assert code == 1
    failed = [line for line in err.splitlines() if line.startswith("failed ")]
    assert len(failed) == 1 and "broken.svs" in failed[0] and "cannot read slide" in failed[0], err
    assert "1 Ray worker(s)" in out and "1 extracted, 0 skipped (already done), 1 failed" in out
    a, b = FeatureLayout(plain, TASK, EXTRACTOR), FeatureLayout(on_ray, TASK, EXTRACTOR)
    for name in ("low_file", "high_file"):
        feats_a, coords_a = _read(getattr(a, name)("s20"))
        feats_b, coords_b = _read(getattr(b, name)("s20"))
        np.testing.assert_array_equal(coords_a, coords_b)
        np.testing.assert_allclose(feats_a, feats_b, rtol=1e-5, atol=1e-6)

    # finished slides are skipped without starting Ray
    only_good = tmp_path / "good"
    only_good.mkdir()
    shutil.copy(ws["slides"] / "s20.svs", only_good / "s20.svs")
    code = run_cli(extract_features.main, ["--slides", str(only_good), *_args(ws, on_ray, "--ray")])
    out, _ = capsys.readouterr()
    assert code == 0 and "0 extracted, 1 skipped" in out and "Ray" not in out


def test_ray_flags_are_checked(workspace, tmp_path, capsys):
    ws = workspace
    argv = ["--slides", str(ws["slides"]), *_args(ws, tmp_path / "R")]
    assert run_cli(extract_features.main, [*argv, "--ray", "--ray-workers", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: --ray-workers must be at least 1")
    assert run_cli(extract_features.main, [*argv, "--address", "auto"]) == 2
    assert capsys.readouterr().err.startswith("error: --address and --ray-workers need --ray")
    assert not (tmp_path / "R").exists()
