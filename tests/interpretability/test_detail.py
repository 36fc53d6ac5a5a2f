"""The detailed figure and the top-k patch grid of predict.py --heatmaps (interpretability.detail)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from interpretability.detail import (
    Prediction,
    detailed_figure,
    save_detail_figures,
    score_statistics,
    top_patch_grid,
)
from interpretability.heatmaps import PatchScores, heat_layer


def test_statistics_of_uniform_and_peaked_attention():
    uniform = score_statistics(np.full(50, 0.02), k=5)
    assert uniform["entropy_norm"] == pytest.approx(1.0)
    assert uniform["effective_patches"] == pytest.approx(50.0)
    assert uniform["top5_share"] == pytest.approx(0.1) and uniform["top1pct_share"] == pytest.approx(0.02)
    peaked = score_statistics(np.array([0.0] * 9 + [3.0]), k=2)
    assert peaked["entropy_norm"] == 0.0 and peaked["effective_patches"] == pytest.approx(1.0)
    assert peaked["top2_share"] == pytest.approx(1.0) and peaked["max"] == 3.0
    mixed = score_statistics(np.array([0.1, 0.3, 0.6]))
    p = np.array([0.1, 0.3, 0.6])
    assert mixed["entropy_norm"] == pytest.approx(-(p * np.log(p)).sum() / math.log(3))
    assert mixed["median"] == pytest.approx(0.3) and mixed["std"] == pytest.approx(p.std())


def test_signed_scores_get_no_attention_statistics():
    stats = score_statistics(np.array([-0.5, 0.2, 1.0, np.nan]))
    assert stats["patches"] == 3 and stats["min"] == -0.5
    assert "entropy_norm" not in stats and "effective_patches" not in stats
    assert score_statistics(np.array([])) == {"patches": 0.0}


def _scores(n=30):
    rng = np.random.default_rng(0)
    coords = np.stack([np.arange(n) % 6 * 512, np.arange(n) // 6 * 512], axis=1)
    values = rng.random(n)
    return PatchScores("20x", coords, values / values.sum(), 512, "attention (LiteMIL), 20x patches")


def test_detailed_figure_holds_overlay_histogram_and_statement():
    scores = _scores()
    said = Prediction("solid", 0.91, fold=0, ensemble_class="solid", ensemble_probability=0.88)
    fig = detailed_figure(scores, said, layer=heat_layer(scores), title="s", k=3)
    fig.canvas.draw()
    texts = " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
    assert "predicted (fold 0): solid, p = 0.910" in texts and "ensemble of folds: solid, p = 0.880" in texts
    assert "entropy / log n" in texts and "share of top 3 patches" in texts
    hist = next(ax for ax in fig.axes if ax.get_title().startswith("histogram"))
    assert sum(p.get_height() for p in hist.patches) == 30  # every patch counted once
    assert {line.get_label().split()[0] for line in hist.get_lines()} >= {"mean", "median", "top-3"}


def test_top_grid_without_a_slide_says_what_it_draws(tmp_path):
    scores = _scores()
    grid = top_patch_grid(scores, 5, layer=heat_layer(scores), title="s")
    assert len(grid.axes) == 5 and "not tissue" in grid._suptitle.get_text()
    best = int(np.argmax(scores.values))
    assert f"({scores.coords[best][0]}, {scores.coords[best][1]})" in grid.axes[0].get_title()
    assert top_patch_grid(scores, 0, layer=heat_layer(scores)) is None
    written = save_detail_figures(tmp_path, "20x", scores, heat_layer(scores), Prediction("a", 0.5), k=2)
    assert [p.name for p in written] == ["detail_20x.png", "top_grid_20x.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in written)
