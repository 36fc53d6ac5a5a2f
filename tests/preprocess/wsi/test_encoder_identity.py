"""Feature files name the encoder that made them, and features of two encoders are never mixed."""

from __future__ import annotations

import shutil

import h5py
import pytest

from datasets.features import FeatureLayout
from models.towers import load_towers
from preprocess.wsi.pipeline import ExtractOptions, encoder_identity, extract_slide, is_finished
from preprocess.wsi.reader import SlideError
from preprocess.wsi.sources import SlideSource
from preprocess.wsi.synthetic import synthetic_image, write_pyramid_tiff


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from models.towers.tiny import save_tiny_hf_clip

    root = tmp_path_factory.mktemp("identity")
    slide = write_pyramid_tiff(root / "s20.tif", synthetic_image(tile_px=256))  # level-0 magnification 20
    towers = {}
    for name, seed in (("a", 0), ("b", 1)):
        path = save_tiny_hf_clip(root / f"tower_{name}", image_size=32, projection=24, seed=seed)
        towers[name] = (str(path), load_towers("plip", source=path, sides=("image",)).image.eval())
    return {"slide": SlideSource("s20", slide, 20), "towers": towers, "root": root}


def _options(setup, name: str, **extra) -> ExtractOptions:
    return ExtractOptions(
        extractor="plip", weights=setup["towers"][name][0], workers=0, batch_size=8, **extra
    )


def _attrs(path) -> dict:
    with h5py.File(path, "r") as f:
        return dict(f.attrs)


def test_outputs_record_the_encoder_and_another_encoder_is_refused(setup, tmp_path):
    layout = FeatureLayout(tmp_path / "R", "toy", "plip")
    tower_a, tower_b = setup["towers"]["a"][1], setup["towers"]["b"][1]
    extract_slide(setup["slide"], layout, tower_a, _options(setup, "a"))
    for path in (layout.low_file("s20"), layout.high_file("s20")):
        attrs = _attrs(path)
        assert attrs["extractor"] == "plip" and attrs["weights"] == setup["towers"]["a"][0]
        assert attrs["encoder_kind"] == "hf_clip" and attrs["encoder_embed_dim"] == 24
        assert attrs["encoder_class"] == type(tower_a).__name__ and len(attrs["encoder_weights"]) == 16
    identity_a = encoder_identity(_options(setup, "a"))
    assert identity_a["encoder_weights"] == _attrs(layout.low_file("s20"))["encoder_weights"]
    assert encoder_identity(_options(setup, "b"))["encoder_weights"] != identity_a["encoder_weights"]

    # resume: finished for the same encoder (also under another path to the same weights), not for another
    copy = shutil.copytree(setup["towers"]["a"][0], tmp_path / "copy_of_a")
    assert is_finished(layout, "s20", _options(setup, "a"))
    assert is_finished(layout, "s20", ExtractOptions(extractor="plip", weights=str(copy)))
    assert not is_finished(layout, "s20", _options(setup, "b"))

    before = {p: p.read_bytes() for p in (layout.low_file("s20"), layout.high_file("s20"))}
    with pytest.raises(SlideError, match=r"was made with another encoder .* use --overwrite to replace it"):
        extract_slide(setup["slide"], layout, tower_b, _options(setup, "b"))
    assert {p: p.read_bytes() for p in before} == before  # nothing replaced

    extract_slide(setup["slide"], layout, tower_b, _options(setup, "b", overwrite=True))
    assert _attrs(layout.low_file("s20"))["weights"] == setup["towers"]["b"][0]
    assert is_finished(layout, "s20", _options(setup, "b")) and not is_finished(
        layout, "s20", _options(setup, "a")
    )


def test_half_finished_slide_of_another_encoder_is_refused(setup, tmp_path):
    """A slide killed between its two writes keeps one file; another encoder must not complete it."""
    layout = FeatureLayout(tmp_path / "R", "toy", "plip")
    extract_slide(setup["slide"], layout, setup["towers"]["a"][1], _options(setup, "a"))
    layout.low_file("s20").unlink()
    assert not is_finished(layout, "s20", _options(setup, "a"))
    with pytest.raises(SlideError, match=str(layout.high_file("s20"))):
        extract_slide(setup["slide"], layout, setup["towers"]["b"][1], _options(setup, "b"))


def test_outputs_without_a_weights_digest_compare_by_name(setup, tmp_path):
    """Files written before the digest was recorded name only the extractor and --weights value."""
    layout = FeatureLayout(tmp_path / "R", "toy", "plip")
    extract_slide(setup["slide"], layout, setup["towers"]["a"][1], _options(setup, "a"))
    for path in (layout.low_file("s20"), layout.high_file("s20")):
        with h5py.File(path, "a") as f:
            for key in ("encoder_kind", "encoder_class", "encoder_embed_dim", "encoder_weights"):
                del f.attrs[key]
    assert is_finished(layout, "s20", _options(setup, "a"))
    assert not is_finished(layout, "s20", _options(setup, "b"))
    for path in (layout.low_file("s20"), layout.high_file("s20")):  # and files naming no encoder at all
        with h5py.File(path, "a") as f:
            del f.attrs["extractor"]
    assert is_finished(layout, "s20", _options(setup, "b"))


def test_cli_rerun_with_another_encoder_is_refused_not_skipped(setup, tmp_path, capsys):
    """The CLI's resume counts only the run's own encoder's outputs as done: a rerun with other weights
    reports the slide (exit 1) instead of skipping it and leaving the old encoder's features."""
    import extract_features
    from utils.errors import run_cli

    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(setup["slide"].path, slides / "s20.tif")
    argv = ["--slides", str(slides), "--data-root", str(tmp_path / "R"), "--task", "toy",
            "--feature-extractor", "plip", "--level0-mag", "20", "--workers", "0", "--batch-size", "8"]  # fmt: skip
    assert run_cli(extract_features.main, [*argv, "--weights", setup["towers"]["a"][0]]) == 0
    capsys.readouterr()
    assert run_cli(extract_features.main, [*argv, "--weights", setup["towers"]["a"][0]]) == 0
    assert "1 already done" in capsys.readouterr().out
    assert run_cli(extract_features.main, [*argv, "--weights", setup["towers"]["b"][0]]) == 1
    captured = capsys.readouterr()
    assert "0 already done" in captured.out and "another encoder" in captured.err
    assert run_cli(extract_features.main, [*argv, "--weights", setup["towers"]["b"][0], "--overwrite"]) == 0
    assert run_cli(extract_features.main, [*argv, "--weights", setup["towers"]["b"][0]]) == 0
    assert "1 already done" in capsys.readouterr().out
