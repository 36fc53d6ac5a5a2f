"""Interpretability API, explain.py and the loading helpers, on tiny models and hand-made slides."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets.bag import SlideBag
from datasets.prompt_file import parse_prompt_text
from interpretability.attribution import (
    _drilldown,
    explain_slide,
    normalise_rows,
    text_contributions,
    topk_text_scores,
)
from models.hivemil.graph import X5_IMAGE, X5_TEXT, X20_IMAGE, X20_TEXT
from models.hivemil.model import HiveMIL
from models.hivemil.options import HiveMILOptions, VariantSwitches
from models.hivemil.slide_logits import topk_class_logits
from tests.mini_run import CHILD_COUNTS, P5, P20, make_bag, make_mini_run, prompt_dict


def make_prompts(classes, n_coarse, n_fine):
    text = json.dumps(prompt_dict(classes, n_coarse, n_fine))
    return parse_prompt_text(text, "test prompts", classes, n_coarse, n_fine)


def make_model(tower, classes, n_coarse, n_fine, variant, seed=0) -> HiveMIL:
    prompts = make_prompts(classes, n_coarse, n_fine)
    descriptions = [[f"{t} : {e}" for t, e in prompts.entries(c)] for c in classes]
    options = HiveMILOptions(
        n_ctx=4,
        num_low_mag_texts=n_coarse,
        num_high_mag_subtexts=n_fine,
        switches=VariantSwitches.for_variant(variant),
    )
    torch.manual_seed(seed)
    return HiveMIL(tower, descriptions, options).eval()


CASES = {
    # 3 classes, 2 coarse x 2 fine, corrected variant (padded children masked out)
    "3cls-2x2-corrected": (("alpha", "beta", "gamma"), 2, 2, "corrected"),
    # 2 classes, published 4 coarse x 3 fine, released behaviour (padded children kept as nodes)
    "2cls-4x3-reference": (("idc", "ilc"), 4, 3, "reference"),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tiny_text_tower):
    classes, n_coarse, n_fine, variant = CASES[request.param]
    model = make_model(tiny_text_tower, classes, n_coarse, n_fine, variant)
    prompts = make_prompts(classes, n_coarse, n_fine)
    bag = make_bag(seed=1)
    expl = explain_slide(model, bag, classes, prompts, top_n=3)
    with torch.no_grad():
        out = model(bag)
    return {"model": model, "prompts": prompts, "bag": bag, "expl": expl, "out": out, "variant": variant,
            "classes": classes, "n_coarse": n_coarse, "n_fine": n_fine}  # fmt: skip


# ------------------------------------------------------------------------------------------ numerics by hand


def test_normalise_rows_by_hand():
    sim = np.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0], [-1.0, 0.0, 3.0], [0.2, -0.2, 0.0]])
    expected = np.array([[-1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -0.5, 1.0], [1.0, -1.0, 0.0]])
    np.testing.assert_allclose(normalise_rows(sim), expected, atol=1e-12)
    assert normalise_rows(np.zeros((0, 4))).shape == (0, 4)


def test_text_contributions_by_hand():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # one class, two texts
    scale = torch.tensor(2.0)
    # column 0: sims (1, 0, .6) -> top-2 mean .8 -> x2 = 1.6; column 1: (0, 1, .8) -> .9 -> 1.8
    np.testing.assert_allclose(topk_text_scores(image, text, 2, scale).numpy(), [1.6, 1.8], rtol=1e-6)
    contrib = text_contributions(image, text, 1, 2, scale)
    np.testing.assert_allclose(contrib.numpy(), [0.8, 0.9], rtol=1e-6)
    np.testing.assert_allclose(
        contrib.sum().item(), topk_class_logits(image, text, 1, 2, scale).item(), rtol=1e-6
    )
    # k larger than the number of images: mean over all of them (k = min(k_max, N))
    np.testing.assert_allclose(
        topk_text_scores(image, text, 100, scale).numpy(), [2 * 1.6 / 3, 2 * 1.8 / 3], rtol=1e-6
    )


def test_drilldown_choice_by_hand():
    # 4 5x patches; patch 1 was not a graph node (no children, released pipeline) -> rows map 0,2,3
    # 2 classes x 2 coarse texts; class 1 coarse columns are 2 and 3.
    sim5_norm = np.array(
        [
            [0.0, 0.0, 0.9, 0.9],  # patch 0: best for class 1, but NOT kept
            [0.0, 0.0, 0.1, 0.5],  # patch 2: mean 0.3
            [0.0, 0.0, 0.6, 0.2],  # patch 3: mean 0.4 -> chosen
        ]
    )
    # 20x: 2 classes x 4 fine texts (2 per coarse); nodes: 2 children of patch 3 (one padded), 1 of patch 2
    sim20 = np.arange(3 * 8, dtype=float).reshape(3, 8) / 10
    parts = {
        "sim5": sim5_norm / 2,
        "sim5_norm": sim5_norm,
        "sim20": sim20,
        "sim20_norm": normalise_rows(sim20),
        "patches_5x": np.array([0, 2, 3]),
        "kept_5x": np.array([2, 3]),
        "coords_5x": np.array([[0, 0], [10, 0], [20, 0]]),
        "coords_20x": np.array([[20, 0], [21, 0], [10, 0]]),
        "nodes_20x_parent": np.array([3, 3, 2]),
        "nodes_20x_slot": np.array([0, 1, 0]),
        "nodes_20x_padding": np.array([False, True, False]),
    }
    dd = _drilldown(parts, class_index=1, class_name="b", n_coarse=2, n_fine_per_coarse=2)
    assert (dd.patch, dd.patch_row, dd.patch_coords) == (3, 2, [20, 0])
    assert dd.coarse_columns == [2, 3] and dd.fine_columns == [4, 5, 6, 7]
    assert dd.fine_of_coarse == [[4, 5], [6, 7]]
    assert dd.coarse_similarity_norm == pytest.approx([0.6, 0.2])
    assert dd.mean_coarse_similarity_norm == pytest.approx(0.4)
    assert [c["row"] for c in dd.children] == [0]  # the padded slot is not a child
    assert dd.children[0]["coords"] == [20, 0]
    assert dd.children[0]["similarity"] == pytest.approx([0.4, 0.5, 0.6, 0.7])


# ------------------------------------------------------------------------------------------ on a model


def test_contributions_sum_to_the_model_logits(case):
    expl, out, n_classes = case["expl"], case["out"], len(case["classes"])
    c5 = expl.contributions_5x.reshape(n_classes, -1)
    c20 = expl.contributions_20x.reshape(n_classes, -1)
    assert c5.shape[1] == case["n_coarse"] and c20.shape[1] == case["n_coarse"] * case["n_fine"]
    np.testing.assert_allclose(c5.sum(1), out.logits_5x.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c20.sum(1), out.logits_20x.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(expl.logits, out.logits[0].numpy(), rtol=1e-6)
    np.testing.assert_allclose(expl.logits_5x + expl.logits_20x, expl.logits, rtol=1e-5, atol=1e-6)
    assert expl.predicted == int(out.logits.argmax())
    np.testing.assert_allclose(
        expl.probabilities, torch.softmax(out.logits[0].double(), 0).numpy(), rtol=1e-6
    )


def test_similarities_rows_and_normalisation(case):
    expl, out, bag = case["expl"], case["out"], case["bag"]
    emb = out.embeddings
    np.testing.assert_allclose(expl.similarity_5x, (emb[X5_IMAGE] @ emb[X5_TEXT].t()).numpy(), atol=1e-6)
    np.testing.assert_allclose(expl.similarity_20x, (emb[X20_IMAGE] @ emb[X20_TEXT].t()).numpy(), atol=1e-6)
    n_classes = len(case["classes"])
    assert expl.similarity_5x.shape[1] == n_classes * case["n_coarse"]
    assert expl.similarity_20x.shape[1] == n_classes * case["n_coarse"] * case["n_fine"]
    for norm in (expl.similarity_5x_norm, expl.similarity_20x_norm):
        assert norm.min() >= -1 - 1e-12 and norm.max() <= 1 + 1e-12
        np.testing.assert_allclose(norm.min(1), -1.0)
        np.testing.assert_allclose(norm.max(1), 1.0)
    if case["variant"] == "reference":
        # released pipeline: the childless 5x patch 1 is not a graph node; padded slots are 20x nodes
        assert expl.patches_5x.tolist() == [0, 2, 3, 4, 5, 6, 7]
        assert expl.nodes_20x_padding.any()
        assert len(expl.nodes_20x_parent) == 16 * len(expl.kept_5x)
    else:
        assert expl.patches_5x.tolist() == list(range(8))
        assert not expl.nodes_20x_padding.any()
        assert len(expl.nodes_20x_parent) == sum(CHILD_COUNTS[p] for p in expl.kept_5x)
    np.testing.assert_array_equal(expl.coords_5x, bag.coords5[expl.patches_5x].numpy())
    np.testing.assert_array_equal(expl.kept_5x_coords, bag.coords5[expl.kept_5x].numpy())
    real = ~expl.nodes_20x_padding
    np.testing.assert_array_equal(
        expl.coords_20x[real], bag.coords20[expl.nodes_20x_parent[real], expl.nodes_20x_slot[real]].numpy()
    )
    kept_mask = out.x5_mask
    if bool(kept_mask.any()):  # kept indices: the TGDF mask, mapped back to slide indices
        assert expl.kept_5x.tolist() == expl.patches_5x[kept_mask.numpy()].tolist()
    assert (expl.patch_size_5x, expl.patch_size_20x) == (P5, P20)


def test_top_patches_are_the_argmax_rows(case):
    expl = case["expl"]
    for col, entries in enumerate(expl.top_patches_5x):
        assert entries[0]["row"] == int(np.argmax(expl.similarity_5x[:, col]))
        sims = [e["similarity"] for e in entries]
        assert sims == sorted(sims, reverse=True) and len(entries) == 3
        assert entries[0]["coords"] == expl.coords_5x[entries[0]["row"]].tolist()
    real = np.flatnonzero(~expl.nodes_20x_padding)
    for col, entries in enumerate(expl.top_patches_20x):
        best = real[int(np.argmax(expl.similarity_20x[real, col]))]
        assert entries[0]["row"] == best and not expl.nodes_20x_padding[entries[0]["row"]]
        assert entries[0]["patch"] == expl.nodes_20x_parent[best]
        assert entries[0]["similarity"] == pytest.approx(expl.similarity_20x[best, col])


def test_drilldown_picks_the_best_kept_patch_and_its_true_children(case):
    expl, bag = case["expl"], case["bag"]
    n_coarse, n_fine = case["n_coarse"], case["n_fine"]
    c = expl.predicted
    # independent recomputation: best kept patch by mean normalised similarity to class c's coarse texts
    row_of = {int(p): r for r, p in enumerate(expl.patches_5x)}
    cols = list(range(c * n_coarse, (c + 1) * n_coarse))
    scores = {int(p): expl.similarity_5x_norm[row_of[int(p)], cols].mean() for p in expl.kept_5x}
    best = max(scores, key=scores.get)
    dd = expl.drilldown
    assert dd.class_index == c and dd.patch == best
    assert dd.patch_coords == bag.coords5[best].tolist()
    # its children are exactly the real 20x patches of that 5x patch (padded slots excluded)
    true_children = bag.coords20[best][bag.child_mask[best]].tolist()
    assert sorted(ch["coords"] for ch in dd.children) == sorted(true_children)
    assert len(dd.children) == CHILD_COUNTS[best]
    fine_cols = list(range(c * n_coarse * n_fine, (c + 1) * n_coarse * n_fine))
    assert dd.fine_columns == fine_cols
    for j, group in enumerate(dd.fine_of_coarse):
        assert [expl.descriptions_20x[col].coarse_column for col in group] == [cols[j]] * n_fine
        assert all(
            expl.descriptions_20x[col].term.startswith(f"{case['classes'][c]} fine {j}.") for col in group
        )
    for child in dd.children:
        np.testing.assert_allclose(child["similarity"], expl.similarity_20x[child["row"], fine_cols])


def test_to_dict_is_strict_json_and_tables(case):
    from interpretability.attribution import contributions_frame, drilldown_frame, top_patches_frame

    expl = case["expl"]
    data = json.loads(json.dumps(expl.to_dict(), allow_nan=False))
    assert data["predicted_name"] == case["classes"][expl.predicted]
    assert len(data["similarity_20x_norm"]) == len(expl.nodes_20x_parent)
    assert data["drilldown"]["patch"] == expl.drilldown.patch
    assert "similarity_5x" not in expl.to_dict(include_matrices=False)
    frame = contributions_frame(expl, "20x")
    sums = frame.groupby("class", sort=False)["contribution"].sum().to_numpy()
    np.testing.assert_allclose(sums, expl.logits_20x, rtol=1e-6, atol=1e-7)
    table = drilldown_frame(expl)
    assert len(table) == len(expl.drilldown.children) * case["n_coarse"] * case["n_fine"]
    assert len(top_patches_frame(expl, "5x")) == 3 * len(expl.descriptions_5x)


def test_explain_leaves_training_mode(case, tiny_text_tower):
    model = case["model"]
    model.train()
    explain_slide(model, case["bag"], case["classes"], case["prompts"], top_n=1)
    assert model.training
    model.eval()


def test_figures_render_without_coordinates(case):
    from interpretability.plots import plot_heatmap

    bag = case["bag"]
    bare = SlideBag(bag.slide_id, bag.x5, bag.x20, bag.child_mask, bag.label)
    expl = explain_slide(case["model"], bare, case["classes"], case["prompts"])
    assert expl.coords_5x is None and expl.drilldown.patch_coords is None
    for scale in ("5x", "20x"):
        plot_heatmap(expl, scale).canvas.draw()  # a placeholder text instead of squares


def test_prompt_counts_must_match_the_model(case):
    from utils.errors import InputError

    wrong = make_prompts(case["classes"], case["n_coarse"] + 1, case["n_fine"])
    with pytest.raises(InputError, match="coarse"):
        explain_slide(case["model"], case["bag"], case["classes"], wrong)


# ------------------------------------------------------------------------------------------ runs and CLI


@pytest.fixture(scope="module")
def mini_run(tmp_path_factory, tiny_clip_dir):
    return make_mini_run(tmp_path_factory.mktemp("mini_run"), tiny_clip_dir)


def _snapshot(folder: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_explain_cli_writes_figures_and_json(mini_run, tmp_path):
    import explain

    before = _snapshot(mini_run.parents[4])
    out = tmp_path / "out"
    assert (
        explain.main(["--checkpoint", str(mini_run), "--slide", "slide_1", "--out", str(out), "--top", "2"])
        == 0
    )
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        ["contributions_5x.png", "contributions_20x.png", "heatmap_5x.png", "heatmap_20x.png", "drilldown.csv",
         "explanation.json"]
    )  # fmt: skip
    for name in names:
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / "explanation.json").read_text())
    assert data["slide_id"] == "slide_1" and data["label"] == 1
    assert len(data["top_patches_5x"][0]) == 2
    sums = np.asarray(data["contributions_5x"]).reshape(3, -1).sum(1)
    np.testing.assert_allclose(sums, data["logits_5x"], rtol=1e-6, atol=1e-7)
    import pandas as pd

    table = pd.read_csv(out / "drilldown.csv")
    assert len(table) == len(data["drilldown"]["children"]) * 4
    assert _snapshot(mini_run.parents[4]) == before  # inputs untouched, nothing written into the run


def test_explain_takes_the_shared_flags_over_the_runs_values(mini_run, tmp_path, capsys):
    """A run folder moved to another machine: --data_root_dir replaces the config's feature root."""
    import shutil

    import explain

    run = tmp_path / "run"
    shutil.copytree(mini_run, run)
    features = shutil.copytree(mini_run.parents[4] / "features", tmp_path / "moved_features")
    payload = json.loads((run / "config.json").read_text())
    payload["config"]["data_root_dir"] = str(tmp_path / "gone")
    (run / "config.json").write_text(json.dumps(payload))
    argv = ["--checkpoint", str(run), "--slide", "slide_1", "--top", "2", "--device", "cpu", "--threads", "1"]
    assert "gone" in _cli_error(capsys, [*argv, "--out", str(tmp_path / "a")])
    assert explain.main([*argv, "--out", str(tmp_path / "b"), "--data_root_dir", str(features)]) == 0
    assert (
        explain.main(["--checkpoint", str(mini_run), "--slide", "slide_1", "--out", str(tmp_path / "c")]) == 0
    )
    moved, original = (json.loads((tmp_path / d / "explanation.json").read_text()) for d in ("b", "c"))
    assert moved["logits_5x"] == original["logits_5x"]


def _cli_error(capsys, argv) -> str:
    import explain
    from utils.errors import run_cli

    assert run_cli(explain.main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_explain_cli_errors(mini_run, tmp_path, tiny_clip_dir, capsys):
    before = _snapshot(mini_run.parents[4])
    out = ["--out", str(tmp_path / "o")]
    assert "slide_9" in _cli_error(capsys, ["--checkpoint", str(mini_run), "--slide", "slide_9", *out])
    assert "not in" in _cli_error(capsys, ["--checkpoint", str(mini_run), "--slide", "slide_9", *out])
    err = _cli_error(capsys, ["--checkpoint", str(mini_run), "--fold", "3", "--slide", "slide_1", *out])
    assert "s_3_checkpoint.pt" in err and "checkpoint not found" in err
    err = _cli_error(capsys, ["--checkpoint", str(tmp_path / "nope"), "--slide", "slide_1", *out])
    assert "nope" in err
    lonely = tmp_path / "lonely.pt"
    lonely.write_bytes((mini_run / "s_0_checkpoint.pt").read_bytes())
    err = _cli_error(capsys, ["--checkpoint", str(lonely), "--slide", "slide_1", *out])
    assert "config.json" in err and "not found" in err
    other = make_mini_run(tmp_path / "abmil", tiny_clip_dir, model_type="ABMIL")
    err = _cli_error(capsys, ["--checkpoint", str(other), "--slide", "slide_1", *out])
    assert "ABMIL" in err and "HiVE_MIL" in err
    assert not (tmp_path / "o").exists()
    assert _snapshot(mini_run.parents[4]) == before


def test_explain_output_folder_that_is_a_file_is_one_line(mini_run, tmp_path, capsys):
    import explain
    from utils.errors import run_cli

    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    code = run_cli(
        explain.main, ["--checkpoint", str(mini_run), "--slide", "slide_2", "--out", str(blocker / "x")]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1
