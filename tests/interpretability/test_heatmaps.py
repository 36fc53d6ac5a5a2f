"""Heatmap scores, rasters and figures (interpretability.heatmaps), attention of the baselines, the
tensor forms predict.py accepts, and the slide-input resolver."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from interpretability.heatmaps import (
    PatchScores,
    SlideImage,
    attention_patch_scores,
    heat_layer,
    heatmap_figure,
    hivemil_patch_scores,
    save_heatmaps,
    scale_bar,
)
from tests.mini_run import CHILD_COUNTS, P5, P20, make_bag

# ------------------------------------------------------------------------------------------ rasters


def test_heat_layer_paints_each_patch_where_its_corner_is():
    scores = PatchScores(
        "20x", np.array([[0, 0], [512, 1024]]), np.array([1.0, 3.0]), 512, "v",
        background=np.array([[0, 0], [512, 1024], [1024, 0]]),
    )  # fmt: skip
    layer = heat_layer(scores, SlideImage(np.zeros((128, 96, 3), np.uint8), 16.0))
    assert layer.values.shape == (128, 96) and layer.origin == (0.0, 0.0)
    assert np.all(layer.values[0:32, 0:32] == 1.0) and np.all(layer.values[64:96, 32:64] == 3.0)
    assert np.isnan(layer.values).sum() == 128 * 96 - 2 * 32 * 32
    assert layer.unscored[0:32, 64:96].all() and layer.unscored.sum() == 32 * 32  # the background patch
    grid = heat_layer(scores)  # no slide: a grid around the patches, 8 raster pixels per patch side
    assert grid.downsample == 64.0 and np.nanmax(grid.values) == 3.0 and grid.unscored.sum() == 64
    assert heat_layer(PatchScores("5x", None, np.zeros(0), None, "v")) is None


def test_overlapping_patches_are_averaged():
    scores = PatchScores("5x", np.array([[0, 0], [0, 0]]), np.array([1.0, 2.0]), 16, "v")
    layer = heat_layer(scores, SlideImage(np.zeros((4, 4, 3), np.uint8), 4.0))
    assert np.all(layer.values == 1.5)


def test_scale_bar_in_microns_or_level0_pixels():
    assert scale_bar(8000, 0.25) == (800.0, "200 µm")  # 400 µm asked -> 200 µm = 800 px
    assert scale_bar(80000, 0.5) == (10000.0, "5 mm")  # 8000 µm asked
    assert scale_bar(8000, None) == (1000.0, "1000 px (level 0)")


def test_figures_render_with_and_without_a_slide(tmp_path):
    scores = PatchScores("20x", np.array([[0, 0], [512, 0]]), np.array([0.1, 0.9]), 512, "attention")
    image = SlideImage(np.full((64, 64, 3), 200, np.uint8), 16.0, mpp=0.25)
    for fig in (heatmap_figure(scores, image, title="t"), heatmap_figure(scores, outline=(0, 0, 512))):
        fig.canvas.draw()
        assert len(fig.axes) == 2  # the map and its colour bar
    written = save_heatmaps({"20x": scores}, tmp_path, image=image, meta={"a": 1})
    assert [p.name for p in written] == ["heatmap_20x.png", "scores.npz"]
    data = np.load(tmp_path / "scores.npz")
    assert json.loads(str(data["meta"])) == {"a": 1, "top_tiles": {}}
    np.testing.assert_array_equal(data["values_20x"], [0.1, 0.9])
    assert data["raster_20x"].shape == (64, 64) and float(data["raster_downsample_20x"]) == 16.0


# ------------------------------------------------------------------------------------------ scores


def test_hivemil_scores_are_the_explanations_class_evidence(tiny_text_tower):
    from interpretability.attribution import explain_slide
    from tests.interpretability.test_attribution import make_model, make_prompts

    classes = ("alpha", "beta")
    model = make_model(tiny_text_tower, classes, 2, 2, "reference")
    expl = explain_slide(model, make_bag(seed=3), classes, make_prompts(classes, 2, 2))
    s5 = hivemil_patch_scores(expl, "5x", 1)
    kept = np.isin(expl.patches_5x, expl.kept_5x)
    np.testing.assert_allclose(s5.values, expl.class_similarity("5x", 1)[kept])
    np.testing.assert_array_equal(s5.coords, expl.coords_5x[kept])
    assert (s5.vmin, s5.vmax, s5.patch_px) == (-1.0, 1.0, P5) and len(s5.background) == len(CHILD_COUNTS)
    s20 = hivemil_patch_scores(expl, "20x")
    assert len(s20.values) == int((~expl.nodes_20x_padding).sum()) and s20.patch_px == P20


@pytest.mark.parametrize("name", ["ABMIL", "LiteMIL", "TransMIL", "ABMIL_5x", "TransMIL_5x"])
def test_attention_baselines_give_per_patch_scores(name):
    from datasets.tasks import TaskSpec
    from models.registry import ModelSpec, build_model

    torch.manual_seed(0)
    task = TaskSpec("t", ("a", "b", "c"), csv_path=None)
    model = build_model(name, ModelSpec(task=task, feature_dim=64)).eval()
    bag = make_bag(seed=2)
    with torch.no_grad():
        out = model(bag)
    scores = attention_patch_scores(bag, out.extras, model.mag, name, (P5, P20))
    if model.mag == "5x":
        assert list(scores) == ["5x"] and len(scores["5x"].values) == bag.num_5x
        return
    s20, s5 = scores["20x"], scores["5x"]
    assert len(s20.values) == bag.num_20x
    np.testing.assert_array_equal(s20.coords, bag.coords20[bag.child_mask].numpy())
    parents = [i for i, k in enumerate(CHILD_COUNTS) if k]
    np.testing.assert_array_equal(s5.coords, bag.coords5.numpy()[parents])
    np.testing.assert_allclose(s5.values.sum(), s20.values.sum(), rtol=1e-6)  # the 5x map is the 20x mass
    if name == "ABMIL":
        assert np.isclose(s20.values.sum(), 1.0)


@pytest.mark.parametrize("n", [5, 23, 40])
def test_transmil_attention_is_the_package_matrix_row_of_the_class_token(n):
    """Our class-token row (without the n x n matrix) equals the row of the package's full Nystrom
    attention matrix; square-padding repeats are added back onto the instance they repeat."""
    import math

    from models.baselines.transmil import TransMIL

    torch.manual_seed(n)
    model = TransMIL(16, 3, hidden=32, heads=4, num_landmarks=8).eval()
    x = torch.randn(n, 16)
    with torch.no_grad():
        logits, extras = model.classify(x)
        h = model.embed(x).unsqueeze(0)
        side = math.ceil(math.sqrt(n))
        extra = side * side - n
        h = torch.cat([h, h[:, torch.arange(extra) % n]], dim=1)
        h = torch.cat([model.cls_token, h], dim=1)
        h = model.position(model.layer1(h), side)
        _, matrix = model.layer2.attention(model.layer2.norm(h), return_attn=True)
        tokens = h.shape[1]
        row = matrix[0, :, matrix.shape[-2] - tokens, -tokens:].mean(0)
        reference = row[1 : 1 + n].clone().index_add_(0, torch.arange(extra) % n, row[1 + n :])
        h2 = model.layer2(h)
        assert torch.allclose(logits, model.classifier(model.norm(h2)[:, 0]), atol=1e-6)  # output unchanged
    assert extras["attention"].shape == (n,)
    assert torch.allclose(extras["attention"], reference, atol=1e-6)
