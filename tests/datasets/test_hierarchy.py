"""5x->20x linking: hand-checked parents, borders, orphans, seeded sub-sampling, file arrays."""

from __future__ import annotations

import numpy as np
import pytest

from datasets.hierarchy import (
    build_hierarchical_arrays,
    find_parents,
    grid_keys,
    link_children,
    pack_cells,
    patch_px,
    slide_salt,
    unpack_cells,
)


def test_patch_px():
    assert patch_px(40, 5) == 2048
    assert patch_px(20, 5) == 1024
    assert patch_px(40, 20) == 512
    assert patch_px(20, 20) == 256
    with pytest.raises(ValueError):
        patch_px(40, 0)


def test_keys_pack_and_unpack():
    cells = np.array([[0, 0], [1, 0], [0, 1], [-3, 7], [123456, 654321]])
    keys = pack_cells(cells)
    assert len(set(keys.tolist())) == len(cells)
    np.testing.assert_array_equal(unpack_cells(keys), cells)
    np.testing.assert_array_equal(
        grid_keys(np.array([[0, 0], [2047, 2047], [2048, 0]]), 2048)[:2], [keys[0]] * 2
    )


def test_hand_checked_parents_and_borders():
    coords5 = np.array([[0, 0], [2048, 0], [0, 2048], [10000, 10000]])
    coords20 = np.array(
        [
            [0, 0],  # corner of 5x #0
            [512, 1536],  # inside #0
            [2047, 2047],  # last pixel of #0
            [2048, 0],  # exactly on the border between #0 and #1: belongs to #1 (half-open squares)
            [2048, 2048],  # diagonal neighbour cell, no 5x patch there
            [-1, 0],  # left of everything
            [1536, 2048],  # top border of #2
            [4095, 100],  # last column of #1
            [4096, 0],  # just right of #1
        ]
    )
    parent = find_parents(coords5, coords20, 2048)
    np.testing.assert_array_equal(parent, [0, 0, 0, 1, -1, -1, 2, 1, -1])
    link = link_children(coords5, coords20, 2048)
    assert link.children_of(0) == [0, 1, 2]
    assert link.children_of(1) == [3, 7]
    assert link.children_of(2) == [6]
    assert link.children_of(3) == []
    np.testing.assert_array_equal(link.orphans20, [4, 5, 8])
    np.testing.assert_array_equal(link.childless5, [3])
    np.testing.assert_array_equal(link.num_candidates, [3, 2, 1, 0])
    assert link.children.shape == (4, 16)
    assert link.num_linked == 6 and link.num_dropped == 0


def test_parents_off_the_global_grid():
    """5x tiles starting at an arbitrary origin (CLAM contours) are still found."""
    coords5 = np.array([[100, 100], [2148, 100]])
    coords20 = np.array([[2147, 100], [2148, 100], [99, 100], [2147, 2147], [2147, 2148], [4195, 2147]])
    np.testing.assert_array_equal(find_parents(coords5, coords20, 2048), [0, 1, -1, 0, -1, 1])


def test_level0_20_grid():
    coords5 = np.array([[0, 0], [1024, 0]])
    coords20 = np.array([[768, 768], [1024, 256], [2048, 0]])
    np.testing.assert_array_equal(find_parents(coords5, coords20, patch_px(20, 5)), [0, 1, -1])


def test_overlapping_and_duplicate_parents():
    overlapping = np.array([[0, 0], [1024, 0]])
    # [1500, 0] lies in both squares: the nearer corner (#1) wins; [500, 0] only in #0.
    np.testing.assert_array_equal(find_parents(overlapping, np.array([[1500, 0], [500, 0]]), 2048), [1, 0])
    duplicated = np.array([[0, 0], [0, 0]])
    np.testing.assert_array_equal(find_parents(duplicated, np.array([[10, 10]]), 2048), [0])


def _brute_force(coords5, coords20, size):
    out = []
    for c in coords20:
        inside = [
            (int(np.abs(c - p).sum()), i)
            for i, p in enumerate(coords5)
            if p[0] <= c[0] < p[0] + size and p[1] <= c[1] < p[1] + size
        ]
        out.append(min(inside)[1] if inside else -1)
    return np.array(out)


def test_matches_brute_force_on_random_overlapping_tiles():
    rng = np.random.default_rng(3)
    coords5 = rng.integers(0, 20000, size=(60, 2))
    coords20 = rng.integers(-500, 22000, size=(700, 2))
    np.testing.assert_array_equal(
        find_parents(coords5, coords20, 2048), _brute_force(coords5, coords20, 2048)
    )


def _crowded_parent():
    """One 5x patch at (4096, 0) with an 8x8 grid of 64 corners inside, plus a second 5x patch."""
    xs, ys = np.meshgrid(np.arange(8) * 256, np.arange(8) * 256, indexing="ij")
    coords20 = np.stack([xs.ravel(), ys.ravel()], axis=1) + np.array([4096, 0])
    coords5 = np.array([[4096, 0], [0, 0]])
    return coords5, coords20


def _kept_coords(link, coords20, parent):
    return {tuple(coords20[i]) for i in link.children_of(parent)}


def test_more_than_max_children_seeded_and_order_independent():
    coords5, coords20 = _crowded_parent()
    link = link_children(coords5, coords20, 2048, max_children=16, seed=7, salt=slide_salt("a"))
    kept = link.children_of(0)
    assert len(kept) == 16 and kept == sorted(kept)
    assert link.num_candidates[0] == 64 and link.num_dropped == 48
    assert link.kept.sum() == 16 and set(np.flatnonzero(link.kept)) == set(kept)
    again = link_children(coords5, coords20, 2048, max_children=16, seed=7, salt=slide_salt("a"))
    np.testing.assert_array_equal(again.children, link.children)

    # Shuffle the 20x rows and swap the 5x rows: the same children (by coordinates) are kept.
    perm = np.random.default_rng(0).permutation(len(coords20))
    shuffled = link_children(
        coords5[::-1], coords20[perm], 2048, max_children=16, seed=7, salt=slide_salt("a")
    )
    assert _kept_coords(shuffled, coords20[perm], 1) == _kept_coords(link, coords20, 0)

    other_seed = link_children(coords5, coords20, 2048, max_children=16, seed=8, salt=slide_salt("a"))
    other_slide = link_children(coords5, coords20, 2048, max_children=16, seed=7, salt=slide_salt("b"))
    assert other_seed.children_of(0) != kept
    assert other_slide.children_of(0) != kept


def test_empty_inputs():
    link = link_children(np.zeros((2, 2), int), np.zeros((0, 2), int), 2048)
    np.testing.assert_array_equal(link.childless5, [0, 1])
    link = link_children(np.zeros((0, 2), int), np.array([[1, 1]]), 2048)
    np.testing.assert_array_equal(link.orphans20, [0])
    with pytest.raises(ValueError):
        link_children(np.zeros((2, 3), int), np.zeros((1, 2), int), 2048)


def test_build_hierarchical_arrays_by_hand():
    coords5 = np.array([[0, 0], [2048, 0], [0, 2048]])
    coords20 = np.array([[2048, 512], [0, 0], [9999, 9999], [0, 2048 + 512], [512, 0]])
    features20 = np.arange(10, dtype=np.float32).reshape(5, 2) + 1  # row j = [2j+1, 2j+2]
    arrays = build_hierarchical_arrays(
        features20, coords20, link_children(coords5, coords20, 2048, max_children=3)
    )
    # Parents: #0 <- 20x {1, 4}, #1 <- {0}, #2 <- {3}; 20x #2 orphan. Rows for every 5x with a child.
    np.testing.assert_array_equal(arrays.parent_index, [0, 1, 2])
    np.testing.assert_array_equal(arrays.child_mask, [[1, 1, 0], [1, 0, 0], [1, 0, 0]])
    np.testing.assert_array_equal(arrays.features[0], [[3, 4], [9, 10], [0, 0]])
    np.testing.assert_array_equal(arrays.features[1], [[1, 2], [0, 0], [0, 0]])
    np.testing.assert_array_equal(arrays.coords[2], [[0, 2560], [0, 0], [0, 0]])
    assert arrays.features.shape == (3, 3, 2) and arrays.coords.dtype == np.int64


def test_childless_parent_gets_no_row():
    coords5 = np.array([[0, 0], [2048, 0]])
    arrays = build_hierarchical_arrays(
        np.ones((1, 4), np.float32),
        np.array([[2100, 5]]),
        link_children(coords5, np.array([[2100, 5]]), 2048),
    )
    np.testing.assert_array_equal(arrays.parent_index, [1])
    assert arrays.features.shape == (1, 16, 4)
