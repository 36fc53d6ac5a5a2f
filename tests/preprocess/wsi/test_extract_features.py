"""extract_features.py end to end on generated pyramidal TIFFs with a tiny random vision tower."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

import extract_features
from datasets.features import FeatureLayout
from preprocess.wsi.encode import tile_image
from preprocess.wsi.reader import open_slide
from preprocess.wsi.synthetic import expected_tiles, synthetic_image, write_pyramid_tiff
from preprocess.wsi.tiling import TileGeometry, choose_level
from utils.errors import run_cli

TASK, EXTRACTOR = "toy", "plip"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Slides: an Aperio-style 40x slide (magnification in its metadata), a generic 20x TIFF without
    metadata (magnification from the CSV), a corrupt file; plus a tiny random HF CLIP tower."""
    from models.towers.tiny import save_tiny_hf_clip

    root = tmp_path_factory.mktemp("extract")
    slides = root / "slides"
    slides.mkdir()
    write_pyramid_tiff(slides / "s40.svs", synthetic_image(tile_px=512), objective_power=40)
    write_pyramid_tiff(slides / "s20.tif", synthetic_image(tile_px=256, seed=1))
    (slides / "broken.svs").write_bytes(b"II*\x00" + bytes(range(256)) * 8)
    (slides / "notes.txt").write_text("not a slide")
    csv = root / "slides.csv"
    csv.write_text("case_id,slide_id,label,level0_mag\np0,s20,A,20\np1,s40,B,\n")
    tower = save_tiny_hf_clip(root / "tower", image_size=32, projection=24)
    return {"root": root, "slides": slides, "csv": csv, "tower": tower}


def _args(ws, data_root, *extra) -> list[str]:
    return [
        "--data-root", str(data_root), "--task", TASK, "--feature-extractor", EXTRACTOR,
        "--weights", str(ws["tower"]), "--batch-size", "8", "--workers", "2", "--device", "cpu", *extra,
    ]  # fmt: skip


def _read(path):
    with h5py.File(path, "r") as f:
        return f["features"][()], f["coords"][()], dict(f.attrs)


def _check_slide(layout: FeatureLayout, slide_id: str, level0_mag: int) -> tuple[np.ndarray, np.ndarray]:
    geometry = TileGeometry(level0_mag)
    f5, c5, a5 = _read(layout.low_file(slide_id))
    f20, c20, a20 = _read(layout.high_file(slide_id))
    low, high = expected_tiles()
    assert {(x // geometry.low_px, y // geometry.low_px) for x, y in c5.tolist()} == low
    assert {(x // geometry.high_px, y // geometry.high_px) for x, y in c20.tolist()} == high
    assert c5.dtype == np.int64 and c20.dtype == np.int64 and f5.dtype == np.float32
    assert f5.shape == (3, 24) and f20.shape == (28, 24)
    assert (c5 % geometry.low_px == 0).all() and (c20 % geometry.high_px == 0).all()
    # nesting: every 20x tile lies inside a kept 5x tile, and every kept 5x tile has a child
    inside = ((c20[:, None, :] >= c5[None]) & (c20[:, None, :] < c5[None] + geometry.low_px)).all(axis=2)
    assert (inside.sum(axis=1) == 1).all() and inside.any(axis=0).all()
    assert a5["level0_mag"] == level0_mag and a5["magnification"] == 5.0 and a20["magnification"] == 20.0
    assert a5["patch_size_level0"] == geometry.low_px and a20["patch_size_level0"] == geometry.high_px
    assert a5["extractor"] == EXTRACTOR
    return c20, f20


def test_cli_extracts_resumes_and_reports_failures(workspace, tmp_path, capsys):
    ws = workspace
    data_root = tmp_path / "R"
    layout = FeatureLayout(data_root, TASK, EXTRACTOR)
    inputs = {p.name: p.read_bytes() for p in ws["slides"].iterdir()}

    # 1. folder input: s40 from metadata, s20 lacks a magnification, broken.svs is corrupt
    code = run_cli(
        extract_features.main, ["--slides", str(ws["slides"]), *_args(ws, data_root, "--thumbnails")]
    )
    out, err = capsys.readouterr()
    assert code == 1
    failed = [line for line in err.splitlines() if line.startswith("failed ")]
    assert len(failed) == 2, err
    assert any("broken.svs" in line and "cannot read slide" in line for line in failed)
    assert any("s20.tif" in line and "--level0-mag" in line for line in failed)
    assert "s40: 3 tiles 5x / 28 tiles 20x" in out and "1 extracted" in out and "2 failed" in out
    c20, f20 = _check_slide(layout, "s40", 40)
    assert not layout.low_file("broken").exists() and not layout.low_file("s20").exists()
    assert (layout.root / "thumbnails" / "s40.png").stat().st_size > 0
    assert {p.name: p.read_bytes() for p in ws["slides"].iterdir()} == inputs  # inputs untouched

    # the stored feature of a 20x tile equals encoding that tile directly
    from models.towers import load_towers

    tower = load_towers(EXTRACTOR, source=ws["tower"], sides=("image",)).image
    with open_slide(ws["slides"] / "s40.svs") as reader:
        level = choose_level(reader.level_downsamples, 512)
        image = tile_image(reader, c20[5], level)
    with torch.no_grad():
        direct = tower.encode_image(tower.preprocess(image)[None])[0].numpy()
    np.testing.assert_allclose(f20[5], direct, rtol=1e-4, atol=1e-5)

    # 2. CSV input (dataset CSV layout; s20 at 20x from the CSV, s40 from metadata): s40 is skipped
    mtime = layout.low_file("s40").stat().st_mtime_ns
    code = run_cli(
        extract_features.main,
        ["--slides", str(ws["csv"]), "--slide-dir", str(ws["slides"]), *_args(ws, data_root)],
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "skipped s40" in out and "1 extracted, 1 skipped" in out
    assert layout.low_file("s40").stat().st_mtime_ns == mtime
    _check_slide(layout, "s20", 20)

    # 3. rerun: everything is done, nothing is rewritten
    code = run_cli(
        extract_features.main,
        ["--slides", str(ws["csv"]), "--slide-dir", str(ws["slides"]), *_args(ws, data_root)],
    )
    out, _ = capsys.readouterr()
    assert code == 0 and "0 extracted, 2 skipped" in out
    assert layout.low_file("s40").stat().st_mtime_ns == mtime

    # 4. the hierarchical linking runs on this output unchanged
    try:
        import create_hierarchical_features
    except ImportError:
        pytest.skip("create_hierarchical_features.py not available")
    mags_csv = tmp_path / "mags.csv"
    mags_csv.write_text("case_id,slide_id,label,level0_mag\np0,s20,A,20\np1,s40,B,40\n")
    code = run_cli(
        create_hierarchical_features.main,
        [
            "--dataset-root-path", str(data_root), "--dataset-name", TASK, "--feature-extractor-name", EXTRACTOR,
            "--csv", str(mags_csv), "--max-patches", "16",
        ],
    )  # fmt: skip
    capsys.readouterr()
    assert code == 0
    for slide_id in ("s40", "s20"):
        with h5py.File(layout.hier_file(slide_id), "r") as f:
            assert f["features"].shape == (3, 16, 24)
            assert sorted(f["child_mask"][()].sum(axis=1).tolist()) == [6, 6, 16]


def test_bad_flags_and_inputs_give_one_line(workspace, tmp_path, capsys):
    ws = workspace
    data_root = tmp_path / "R"
    assert run_cli(extract_features.main, ["--slides", str(tmp_path / "nope"), *_args(ws, data_root)]) == 2
    assert "--slides" in capsys.readouterr().err
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("name,level0_mag\ns40,40\n")
    before = bad_csv.read_bytes()
    assert run_cli(extract_features.main, ["--slides", str(bad_csv), *_args(ws, data_root)]) == 2
    err = capsys.readouterr().err
    assert "slide_id" in err and str(bad_csv) in err and len(err.strip().splitlines()) == 1
    assert bad_csv.read_bytes() == before
    assert (
        run_cli(
            extract_features.main, ["--slides", str(ws["slides"]), *_args(ws, data_root, "--min-tissue", "0")]
        )
        == 2
    )
    assert "--min-tissue" in capsys.readouterr().err
    assert not data_root.exists()


def test_corrupt_tile_data_fails_that_slide_in_one_line(workspace, tmp_path, capsys):
    """A file whose header opens but whose tile data is damaged is reported, not raised."""
    import tifffile

    folder = tmp_path / "in"
    folder.mkdir()
    damaged = folder / "d20.tif"
    damaged.write_bytes((workspace["slides"] / "s20.tif").read_bytes())
    with tifffile.TiffFile(damaged) as tif:  # level-0 TIFF tile (row 4, col 1) lies in tissue B
        offset = tif.pages[0].dataoffsets[4 * 8 + 1]
    with open(damaged, "r+b") as f:
        f.seek(offset + 10)
        f.write(b"\xff" * 200)
    before = damaged.read_bytes()
    data_root = tmp_path / "R"
    code = run_cli(
        extract_features.main, ["--slides", str(folder), *_args(workspace, data_root, "--level0-mag", "20")]
    )
    out, err = capsys.readouterr()
    failed = [line for line in err.splitlines() if line.startswith("failed ")]
    assert code == 1 and len(failed) == 1 and "d20.tif" in failed[0], err
    assert "1 failed" in out
    assert not FeatureLayout(data_root, TASK, EXTRACTOR).high_file("d20").exists()
    assert damaged.read_bytes() == before
