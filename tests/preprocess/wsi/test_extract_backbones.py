"""extract_features.py with the image-only backbones: random weights in their real formats, a
synthetic 40x slide; the stored features are the backbone's encoding of the tiles."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

import extract_features
from datasets.features import FeatureLayout
from models.towers import load_towers
from preprocess.wsi.encode import tile_image
from preprocess.wsi.reader import open_slide
from preprocess.wsi.synthetic import synthetic_image, write_pyramid_tiff
from preprocess.wsi.tiling import choose_level
from utils.errors import run_cli

TASK = "toy"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from models.towers.tiny_backbones import save_random_phikon_v2, save_random_resnet50, save_random_uni

    root = tmp_path_factory.mktemp("extract_backbones")
    slides = root / "slides"
    slides.mkdir()
    write_pyramid_tiff(slides / "s40.svs", synthetic_image(tile_px=512), objective_power=40)
    return {
        "slides": slides,
        "resnet50_trunc": (save_random_resnet50(root / "resnet50.pth"), 1024),
        "uni": (save_random_uni(root / "uni" / "pytorch_model.bin", depth=1, embed_dim=32, num_heads=2), 32),
        "phikon_v2": (save_random_phikon_v2(root / "phikon", hidden_size=24, layers=1, heads=2), 24),
        "uni_other": save_random_uni(
            root / "uni2" / "model.safetensors", seed=5, depth=1, embed_dim=32, num_heads=2
        ),
    }


def _run(ws, data_root, extractor, weights) -> tuple[int, str]:
    argv = [
        "--slides", str(ws["slides"]), "--data-root", str(data_root), "--task", TASK,
        "--feature-extractor", extractor, "--weights", str(weights), "--batch-size", "8",
        "--workers", "1", "--device", "cpu",
    ]  # fmt: skip
    code = run_cli(extract_features.main, argv)
    return code, argv


@pytest.mark.parametrize("extractor", ["resnet50_trunc", "uni", "phikon_v2"])
def test_backbone_features_are_its_encoding_of_the_tiles(workspace, tmp_path, capsys, extractor):
    weights, dim = workspace[extractor]
    data_root = tmp_path / "R"
    code, _ = _run(workspace, data_root, extractor, weights)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "s40: 3 tiles 5x / 28 tiles 20x" in out
    layout = FeatureLayout(data_root, TASK, extractor)
    with h5py.File(layout.high_file("s40"), "r") as f:
        features, coords, attrs = f["features"][()], f["coords"][()], dict(f.attrs)
    assert features.shape == (28, dim) and features.dtype == np.float32
    assert attrs["extractor"] == extractor and attrs["encoder_kind"] == extractor
    assert attrs["encoder_embed_dim"] == dim
    tower = load_towers(extractor, source=weights, sides=("image",)).image
    with open_slide(workspace["slides"] / "s40.svs") as reader:
        image = tile_image(reader, coords[7], choose_level(reader.level_downsamples, 512))
    with torch.no_grad():
        direct = tower.encode_image(tower.preprocess(image)[None])[0].numpy()
    np.testing.assert_allclose(features[7], direct, rtol=1e-4, atol=1e-5)


def test_other_backbone_weights_are_not_taken_as_finished(workspace, tmp_path, capsys):
    data_root = tmp_path / "R"
    weights, _ = workspace["uni"]
    assert _run(workspace, data_root, "uni", weights)[0] == 0
    capsys.readouterr()
    assert _run(workspace, data_root, "uni", weights)[0] == 0
    assert "0 extracted, 1 skipped" in capsys.readouterr().out
    # same name, other weights file: the outputs are another encoder's, refused without --overwrite
    code, argv = _run(workspace, data_root, "uni", workspace["uni_other"])
    out, err = capsys.readouterr()
    assert code == 1 and "1 failed" in out and "--overwrite" in err
    assert run_cli(extract_features.main, [*argv, "--overwrite"]) == 0
    assert "1 extracted" in capsys.readouterr().out


def test_missing_backbone_weights_is_one_line(workspace, tmp_path, capsys):
    code, _ = _run(workspace, tmp_path / "R", "uni", tmp_path / "absent.bin")
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--text_tower" in err and "absent.bin" in err and "not found" in err
