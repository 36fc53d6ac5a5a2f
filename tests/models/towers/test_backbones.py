"""Image-only backbones (resnet50_trunc, uni, phikon_v2): random weights saved in each real format go
through the same loading code as real weights; wrong inputs are one line; UNI's real-size build."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from models.towers import load_towers
from models.towers.backbones import UNI_KWARGS, build_uni, read_state_dict
from models.towers.preprocess import IMAGENET_MEAN, IMAGENET_STD
from models.towers.tiny_backbones import (
    save_random_phikon_v2,
    save_random_resnet50,
    save_random_uni,
    save_state_dict,
)
from utils.errors import InputError

TINY_UNI = {"depth": 2, "embed_dim": 48, "num_heads": 3}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("backbones")
    resnet_pth = save_random_resnet50(root / "resnet" / "resnet50.pth", seed=1)
    resnet_st = save_state_dict(read_state_dict(resnet_pth), root / "resnet" / "resnet50.safetensors")
    uni_bin = save_random_uni(root / "uni_bin" / "pytorch_model.bin", seed=2, **TINY_UNI)
    uni_st = save_random_uni(root / "uni_st" / "model.safetensors", seed=3, **TINY_UNI)
    phikon = save_random_phikon_v2(root / "phikon", seed=4, hidden_size=32, layers=2, heads=2, patch_size=16)
    return {
        "root": root,
        "resnet_pth": resnet_pth,
        "resnet_st": resnet_st,
        "uni_bin": uni_bin,
        "uni_st": uni_st,
        "phikon": phikon,
    }


def _images(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def _image_tower(name, source):
    towers = load_towers(name, source=source, sides=("image",))
    assert towers.kind == name and towers.text is None
    tower = towers.image
    assert not tower.training and not any(p.requires_grad for p in tower.parameters())
    return tower


@pytest.mark.parametrize("key", ["resnet_pth", "resnet_st"])
def test_resnet50_trunc_is_torchvision_layer3_average_pooled(weights, key):
    from torchvision.models import resnet50

    tower = _image_tower("resnet50_trunc", weights[key])
    reference = resnet50(weights=None)
    reference.load_state_dict(read_state_dict(weights["resnet_pth"]))
    captured = {}
    reference.layer3.register_forward_hook(lambda module, args, out: captured.update(layer3=out))
    x = _images()
    with torch.no_grad():
        reference.eval()(x)
        features = tower.encode_image(x)
    assert tower.embed_dim == 1024 and features.shape == (2, 1024)
    torch.testing.assert_close(features, captured["layer3"].mean(dim=(2, 3)))


@pytest.mark.parametrize("key", ["uni_bin", "uni_st"])
def test_uni_loads_both_formats_as_timm_cls_feature(weights, key):
    tower = _image_tower("uni", weights[key])
    reference = build_uni(TINY_UNI).eval()
    reference.load_state_dict(read_state_dict(weights[key]))
    x = _images(1)
    with torch.no_grad():
        features = tower.encode_image(x)
        expected = reference.forward_features(x)[:, 0]  # final norm, then the CLS token
    assert tower.embed_dim == 48 and features.shape == (2, 48)
    torch.testing.assert_close(features, expected)
    other = _image_tower("uni", weights["uni_st" if key == "uni_bin" else "uni_bin"])
    with torch.no_grad():
        assert not torch.allclose(other.encode_image(x), features)  # the file's weights, not a default


def test_uni_folder_finds_its_weights_file(weights):
    tower = _image_tower("uni", weights["uni_bin"].parent)
    assert tower.embed_dim == 48


def test_uni_real_size_build_matches_the_model_card():
    """UNI: ViT-L/16, 224 px, layer scale (init_values), no head, dynamic image size; built on meta."""
    assert UNI_KWARGS == {
        "img_size": 224,
        "patch_size": 16,
        "init_values": 1e-5,
        "num_classes": 0,
        "dynamic_img_size": True,
    }
    with torch.device("meta"):
        model = build_uni()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["patch_embed.proj.weight"] == (1024, 3, 16, 16)
    assert shapes["cls_token"] == (1, 1, 1024) and shapes["pos_embed"] == (1, 197, 1024)
    assert shapes["blocks.23.ls1.gamma"] == (1024,) and "blocks.24.norm1.weight" not in shapes
    assert shapes["blocks.0.mlp.fc1.weight"] == (4096, 1024) and shapes["norm.weight"] == (1024,)
    assert not any(k.startswith("head.") for k in shapes)
    assert sum(p.numel() for p in model.parameters()) == 303_350_784
    assert model.num_features == 1024 and model.dynamic_img_size


def test_phikon_v2_is_the_dinov2_cls_token(weights):
    from transformers import Dinov2Model

    tower = _image_tower("phikon_v2", weights["phikon"])
    reference = Dinov2Model.from_pretrained(str(weights["phikon"]), local_files_only=True).eval()
    x = _images(2)
    with torch.no_grad():
        features = tower.encode_image(x)
        expected = reference(pixel_values=x).last_hidden_state[:, 0]
    assert tower.embed_dim == 32 and features.shape == (2, 32)
    torch.testing.assert_close(features, expected)


@pytest.mark.parametrize(
    "name, mean_is",
    [("resnet50_trunc", "resnet_pth"), ("uni", "uni_bin"), ("phikon_v2", "phikon")],
)
def test_each_backbone_prepares_a_256_tile_at_224_with_imagenet_statistics(weights, name, mean_is):
    tower = _image_tower(name, weights[mean_is])
    tile = Image.new("RGBA", (256, 256), (200, 100, 50, 255))
    x = tower.preprocess(tile)
    assert tower.image_size == 224 and x.shape == (3, 224, 224)
    expected = (np.array([200, 100, 50]) / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(x.mean(dim=(1, 2)).numpy(), expected, rtol=1e-5, atol=1e-5)


def _one_line_error(name, source, sides=("image",)) -> str:
    with pytest.raises(InputError) as err:
        load_towers(name, source=source, sides=sides)
    message = str(err.value)
    assert "\n" not in message and message
    return message


def test_wrong_or_missing_weights_are_one_line(weights, tmp_path):
    root = weights["root"]
    assert "not UNI" in _one_line_error("uni", weights["resnet_pth"])
    message = _one_line_error("resnet50_trunc", weights["uni_bin"])
    assert "not torchvision ResNet50 weights" in message and "missing" in message
    assert "not found" in _one_line_error("uni", root / "absent.bin")
    assert "needs --text_tower PATH" in _one_line_error("resnet50_trunc", None)
    assert "Phikon v2 folder" in _one_line_error("phikon_v2", weights["uni_bin"].parent)
    assert "folder without weights" in _one_line_error("uni", root / "resnet")
    assert "not UNI" in _one_line_error("uni", root / "phikon")  # a Dinov2 model.safetensors
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint at all")
    assert "could not read a state_dict" in _one_line_error("resnet50_trunc", tmp_path / "garbage.pth")
    assert "not a weights file" in _one_line_error("resnet50_trunc", root / "phikon" / "config.json")
    # a ViT of another width under UNI's name: every mismatching shape is named
    other = save_random_uni(tmp_path / "wide" / "pytorch_model.bin", depth=2, embed_dim=64, num_heads=4)
    (tmp_path / "wide" / "uni_config.json").write_text('{"depth": 2, "embed_dim": 48, "num_heads": 3}')
    assert "wrong shape" in _one_line_error("uni", other)
    (tmp_path / "wide" / "uni_config.json").write_text('{"depth": 2, "global_pool": "avg"}')
    assert "only depth, embed_dim" in _one_line_error("uni", other)


def test_phikon_v2_with_missing_or_resized_weights_is_one_line(weights, tmp_path):
    import json
    import shutil

    folder = tmp_path / "phikon"
    shutil.copytree(weights["phikon"], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    assert "missing or of the wrong shape" in _one_line_error("phikon_v2", folder)
    for weights_file in folder.glob("*.safetensors"):
        weights_file.unlink()
    assert "could not load a Dinov2" in _one_line_error("phikon_v2", folder)


def test_backbones_have_no_text_tower(weights):
    message = _one_line_error("uni", weights["uni_bin"], sides=("text",))
    assert "image-only backbone without a text tower" in message
