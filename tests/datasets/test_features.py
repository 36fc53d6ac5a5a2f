"""H5 feature files: layout, round trips in our and the published format, aligned scatter, bad inputs."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from datasets.features import (
    FeatureLayout,
    hier_file_is_complete,
    missing_feature_slides,
    read_slide_bag,
    write_hierarchical_file,
    write_patch_file,
)
from datasets.hierarchy import link_children
from tests.data_fixtures import edit_h5, snapshot, standard_slide, write_published_hier, write_slide
from utils.errors import InputError


@pytest.fixture
def layout(tmp_path: Path) -> FeatureLayout:
    return FeatureLayout(tmp_path / "data", "toy", "plip")


def _build(layout, slide="s1", dim=8, max_children=16):
    coords5, coords20, x5, x20 = standard_slide(layout, slide, dim=dim)
    link = link_children(coords5, coords20, 2048, max_children=max_children)
    write_hierarchical_file(layout.hier_file(slide), x20, coords20, link, {"parent_size_px": 2048})
    return coords5, coords20, x5, x20, link


def test_layout_paths(tmp_path):
    layout = FeatureLayout(tmp_path, "tcga_brca", "plip")
    assert layout.root == tmp_path / "tcga_brca_plip"
    assert layout.low_dir == tmp_path / "tcga_brca_plip" / "plip_5x"
    assert layout.high_dir == tmp_path / "tcga_brca_plip" / "plip_20x"
    assert layout.hier_dir == tmp_path / "tcga_brca_plip" / "hierarchical_plip_5x_20x"
    assert layout.low_file("a") == layout.low_dir / "a.h5"
    assert layout.high_file("a").name == "a.h5" and layout.hier_file("a").parent == layout.hier_dir


def test_round_trip_our_format(layout):
    coords5, coords20, x5, x20, link = _build(layout)
    bag = read_slide_bag(layout, "s1", label=2, expected_dim=8)
    assert bag.slide_id == "s1" and bag.label == 2 and bag.meta["format"] == "ours"
    np.testing.assert_array_equal(bag.x5.numpy(), x5)
    assert bag.x20.shape == (3, 16, 8) and bag.x20.dtype == bag.x5.dtype
    # 5x #0: children 20x 0,1,2 in slots 0..2; #1: none; #2: 20x 3..18.
    np.testing.assert_array_equal(bag.child_mask.sum(1).numpy(), [3, 0, 16])
    np.testing.assert_array_equal(bag.x20[0, :3].numpy(), x20[:3])
    assert not bag.x20[0, 3:].any() and not bag.x20[1].any()
    np.testing.assert_array_equal(bag.x20[2].numpy(), x20[3:19])
    np.testing.assert_array_equal(bag.coords20[0, 1].numpy(), [512, 512])
    np.testing.assert_array_equal(bag.coords5.numpy(), coords5)
    assert bag.num_20x == 19
    assert hier_file_is_complete(layout.hier_file("s1"))


def test_aligned_scatter_with_permuted_rows(layout):
    """Rows stored out of 5x order land on their parent_index rows."""
    coords5, coords20, x5, x20, link = _build(layout)
    path = layout.hier_file("s1")
    with h5py.File(path, "r") as f:
        feats, coords, mask = f["features"][()], f["coords"][()], f["child_mask"][()]
    edit_h5(path, "features", feats[::-1])
    edit_h5(path, "coords", coords[::-1])
    edit_h5(path, "child_mask", mask[::-1])
    edit_h5(path, "parent_index", np.array([2, 0]))
    bag = read_slide_bag(layout, "s1")
    np.testing.assert_array_equal(bag.x20[0, :3].numpy(), x20[:3])
    np.testing.assert_array_equal(bag.x20[2].numpy(), x20[3:19])
    np.testing.assert_array_equal(bag.child_mask.sum(1).numpy(), [3, 0, 16])


def test_published_format_loads(layout):
    coords5, coords20, x5, x20 = standard_slide(layout, "s1")
    # Published layout: the childless 5x patch was deleted from the 5x file, rows follow 5x order.
    keep = [0, 2]
    write_patch_file(layout.low_file("s1"), x5[keep], coords5[keep])
    feats = np.zeros((2, 16, 8), np.float32)
    coords = np.zeros((2, 16, 2), np.int64)
    feats[0, :3], coords[0, :3] = x20[:3], coords20[:3]
    feats[1], coords[1] = x20[3:19], coords20[3:19]
    write_published_hier(layout.hier_file("s1"), feats, coords)
    bag = read_slide_bag(layout, "s1", label=1)
    assert bag.meta["format"] == "published"
    np.testing.assert_array_equal(bag.child_mask.sum(1).numpy(), [3, 16])
    np.testing.assert_array_equal(bag.x20.numpy(), feats)
    np.testing.assert_array_equal(bag.coords20[0, :3].numpy(), coords20[:3])


def test_published_format_with_unaligned_rows_is_refused(layout):
    coords5, coords20, x5, x20 = standard_slide(layout, "s1")
    write_published_hier(
        layout.hier_file("s1"), np.ones((2, 16, 8), np.float32), np.zeros((2, 16, 2), np.int64)
    )
    before = snapshot(layout.root)
    with pytest.raises(InputError, match="create_hierarchical_features.py") as err:
        read_slide_bag(layout, "s1")
    assert "2 rows" in str(err.value) and "3 5x patches" in str(err.value) and "\n" not in str(err.value)
    assert snapshot(layout.root) == before


def test_mmap_and_float16_give_same_bag(layout):
    coords5, coords20, x5, x20 = standard_slide(layout, "s1")
    write_patch_file(layout.high_file("s1"), x20.astype(np.float16), coords20)
    link = link_children(coords5, coords20, 2048)
    write_hierarchical_file(layout.hier_file("s1"), x20.astype(np.float16), coords20, link)
    plain = read_slide_bag(layout, "s1")
    mapped = read_slide_bag(layout, "s1", mmap=True)
    assert plain.x20.dtype == mapped.x20.dtype and str(plain.x20.dtype) == "torch.float32"
    np.testing.assert_array_equal(plain.x20.numpy(), mapped.x20.numpy())
    np.testing.assert_array_equal(plain.x20[2].numpy(), x20[3:19].astype(np.float16).astype(np.float32))


def test_missing_feature_slides(layout):
    _build(layout, "s1")
    write_slide(layout, "s2", np.zeros((1, 2), int), np.zeros((1, 2), int))  # no hierarchical file
    assert missing_feature_slides(layout, ["s2", "s1", "s3"]) == ["s2", "s3"]


# ------------------------------------------------------------------------------------------ bad inputs


def _corrupt_5x(layout):
    edit_h5(layout.low_file("s1"), "features", np.array([[np.nan] * 8] * 3, np.float32))


BAD_INPUTS = {
    "missing 5x file": (lambda lay: lay.low_file("s1").unlink(), "missing 5x feature file"),
    "missing hier file": (lambda lay: lay.hier_file("s1").unlink(), "missing hierarchical feature file"),
    "missing key": (lambda lay: edit_h5(lay.low_file("s1"), "coords", None), "missing dataset 'coords'"),
    "wrong ndim": (
        lambda lay: edit_h5(lay.low_file("s1"), "features", np.zeros(3, np.float32)),
        "2 dimensions",
    ),
    "wrong coords shape": (
        lambda lay: edit_h5(lay.low_file("s1"), "coords", np.zeros((3, 3), int)),
        "'coords' has shape",
    ),
    "hier coords shape": (
        lambda lay: edit_h5(lay.hier_file("s1"), "coords", np.zeros((2, 16, 3), int)),
        "'coords' has shape",
    ),
    "empty bag": (
        lambda lay: (
            edit_h5(lay.low_file("s1"), "features", np.zeros((0, 8), np.float32)),
            edit_h5(lay.low_file("s1"), "coords", np.zeros((0, 2), int)),
        ),
        "empty bag",
    ),
    "nan in 5x": (_corrupt_5x, "NaN or Inf"),
    "inf in hier": (
        lambda lay: edit_h5(lay.hier_file("s1"), "features", np.full((2, 16, 8), np.inf, np.float32)),
        "NaN or Inf",
    ),
    "hier dim differs from 5x": (
        lambda lay: edit_h5(lay.hier_file("s1"), "features", np.ones((2, 16, 4), np.float32)),
        "expected 8, found 4",
    ),
    "parent_index out of range": (
        lambda lay: edit_h5(lay.hier_file("s1"), "parent_index", np.array([0, 3])),
        "'parent_index' out of range",
    ),
    "parent_index repeated": (
        lambda lay: edit_h5(lay.hier_file("s1"), "parent_index", np.array([0, 0])),
        "lists a 5x patch twice",
    ),
    "children outside parent": (
        lambda lay: edit_h5(lay.hier_file("s1"), "parent_index", np.array([2, 0])),
        "outside their 5x patch",
    ),
    "not hdf5": (
        lambda lay: lay.hier_file("s1").write_bytes(b"not an h5 file"),
        "cannot open hierarchical feature file",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_one_line_error_and_files_untouched(layout, case):
    _build(layout)
    damage, expected = BAD_INPUTS[case]
    damage(layout)
    before = snapshot(layout.root)
    with pytest.raises(InputError) as err:
        read_slide_bag(layout, "s1", expected_dim=8)
    message = str(err.value)
    assert expected in message and "\n" not in message
    assert "s1.h5" in message
    assert snapshot(layout.root) == before


def test_dim_mismatch_names_expected_and_found(layout):
    _build(layout)
    with pytest.raises(InputError, match=r"plip_5x/s1.h5: feature dim mismatch: expected 512, found 8"):
        read_slide_bag(layout, "s1", expected_dim=512)


def test_hier_dim_disagreeing_with_5x(layout):
    _build(layout)
    edit_h5(layout.hier_file("s1"), "features", np.ones((2, 16, 4), np.float32))
    with pytest.raises(
        InputError, match=r"hierarchical_plip_5x_20x/s1.h5: feature dim 4 disagrees with 8 in .*plip_5x/s1.h5"
    ):
        read_slide_bag(layout, "s1")


def test_no_children_at_all_is_an_empty_bag(layout):
    _build(layout)
    edit_h5(layout.hier_file("s1"), "child_mask", np.zeros((2, 16), bool))
    with pytest.raises(InputError, match="empty bag"):
        read_slide_bag(layout, "s1")


def _edge_slide(layout, slide="edge"):
    """5x #0 at (0, 0) with children at (1536, 0) and (2047, 0) (its last column); 5x #1 at (2048, 0)
    with the child (2048, 0), which lies exactly on #0's far edge."""
    coords5 = np.array([[0, 0], [2048, 0]])
    coords20 = np.array([[1536, 0], [2047, 0], [2048, 0]])
    write_slide(layout, slide, coords5, coords20)
    link = link_children(coords5, coords20, 2048)
    assert link.children_of(0) == [0, 1] and link.children_of(1) == [2]
    write_hierarchical_file(
        layout.hier_file(slide), *_read_20x(layout, slide), link, {"parent_size_px": 2048}
    )


def _read_20x(layout, slide):
    with h5py.File(layout.high_file(slide), "r") as f:
        return f["features"][()], f["coords"][()]


def test_loader_far_edge_of_a_parent_is_outside(layout):
    """A child at parent + size - 1 loads; one at parent + size (moved into the parent's row) is refused."""
    _edge_slide(layout)
    bag = read_slide_bag(layout, "edge")
    np.testing.assert_array_equal(bag.coords20[0, :2].numpy(), [[1536, 0], [2047, 0]])
    x20, coords20 = _read_20x(layout, "edge")
    with h5py.File(layout.hier_file("edge"), "r") as f:
        feats, coords = f["features"][()], f["coords"][()]
    feats[0, 1], coords[0, 1] = x20[2], coords20[2]  # (2048, 0) listed under 5x #0
    edit_h5(layout.hier_file("edge"), "features", feats)
    edit_h5(layout.hier_file("edge"), "coords", coords)
    with pytest.raises(InputError, match="1 children lie outside their 5x patch"):
        read_slide_bag(layout, "edge")
    coords[0, 1] = [2048, 5]  # the same on the other axis: x is one past the edge
    edit_h5(layout.hier_file("edge"), "coords", coords)
    with pytest.raises(InputError, match="1 children lie outside their 5x patch"):
        read_slide_bag(layout, "edge")
