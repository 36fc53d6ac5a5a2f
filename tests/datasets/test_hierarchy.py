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


# ------------------------------------------------------------------------------ linking rules (all | nearest)

# 5x tiles of 2048 px patched with step 1024: four overlapping squares.
OVERLAP5 = np.array([[0, 0], [1024, 0], [0, 1024], [1024, 1024]])
OVERLAP20 = np.array(
    [
        [0, 0],  # 0: only in #0
        [1024, 0],  # 1: in #0 and #1 (corner of #1: nearest)
        [1536, 1536],  # 2: in all four; L1 distances 3072, 2048, 2048, 1024 -> nearest #3
        [2047, 0],  # 3: last column of #0, also in #1 (distance 1023 < 2047) -> nearest #1
        [2048, 0],  # 4: on #0's far edge (not in #0), in #1
        [512, 2047],  # 5: last row of #0, also in #2 (distance 1535 < 2559) -> nearest #2
        [3072, 0],  # 6: on #1's far edge: no parent
        [1023, 1023],  # 7: only in #0 (one pixel before #1, #2 and #3 start)
    ]
)


def test_all_rule_lists_a_child_under_every_containing_tile_by_hand():
    link = link_children(OVERLAP5, OVERLAP20, 2048, rule="all")
    assert link.rule == "all"
    assert link.children_of(0) == [0, 1, 2, 3, 5, 7]
    assert link.children_of(1) == [1, 2, 3, 4]
    assert link.children_of(2) == [2, 5]
    assert link.children_of(3) == [2]
    np.testing.assert_array_equal(link.num_candidates, [6, 4, 2, 1])
    np.testing.assert_array_equal(link.orphans20, [6])
    assert link.childless5.size == 0
    assert link.num_linked == 7 and link.num_links == 13 and link.num_dropped == 0
    np.testing.assert_array_equal(link.parent_of, [0, 1, 3, 1, 1, 2, -1, 0])  # nearest, for statistics


def test_nearest_rule_lists_a_child_under_one_tile_by_hand():
    link = link_children(OVERLAP5, OVERLAP20, 2048, rule="nearest")
    assert link.rule == "nearest"
    assert [link.children_of(p) for p in range(4)] == [[0, 7], [1, 3, 4], [5], [2]]
    np.testing.assert_array_equal(link.num_candidates, [2, 3, 1, 1])
    np.testing.assert_array_equal(link.orphans20, [6])
    assert link.num_linked == 7 and link.num_links == 7
    np.testing.assert_array_equal(find_parents(OVERLAP5, OVERLAP20, 2048), [0, 1, 3, 1, 1, 2, -1, 0])


def test_default_rule_is_the_released_all_rule():
    default = link_children(OVERLAP5, OVERLAP20, 2048)
    np.testing.assert_array_equal(
        default.children, link_children(OVERLAP5, OVERLAP20, 2048, rule="all").children
    )
    with pytest.raises(ValueError, match="rule must be one of all, nearest"):
        link_children(OVERLAP5, OVERLAP20, 2048, rule="closest")


def test_all_rule_rows_in_a_hierarchical_file_by_hand():
    features20 = np.arange(16, dtype=np.float32).reshape(8, 2) + 1  # row j = [2j+1, 2j+2]
    arrays = build_hierarchical_arrays(
        features20, OVERLAP20, link_children(OVERLAP5, OVERLAP20, 2048, max_children=6)
    )
    np.testing.assert_array_equal(arrays.parent_index, [0, 1, 2, 3])
    np.testing.assert_array_equal(arrays.child_mask.sum(1), [6, 4, 2, 1])
    np.testing.assert_array_equal(arrays.coords[3, 0], [1536, 1536])  # patch 2 is in every row
    for row in range(4):
        assert [1536, 1536] in arrays.coords[row][arrays.child_mask[row]].tolist()
    np.testing.assert_array_equal(arrays.features[2, :2], [[5, 6], [11, 12]])


def _brute_force_all(coords5, coords20, size):
    return [
        [j for j, c in enumerate(coords20) if p[0] <= c[0] < p[0] + size and p[1] <= c[1] < p[1] + size]
        for p in coords5
    ]


def test_all_rule_matches_brute_force_on_random_overlapping_tiles():
    rng = np.random.default_rng(5)
    coords5 = rng.integers(0, 12000, size=(80, 2))
    coords5[:5] = coords5[5:10]  # some duplicated tiles
    coords20 = rng.integers(-500, 14000, size=(900, 2))
    link = link_children(coords5, coords20, 2048, max_children=900, rule="all")
    expected = _brute_force_all(coords5, coords20, 2048)
    assert [link.children_of(p) for p in range(len(coords5))] == expected
    assert link.num_links == sum(len(c) for c in expected) > link.num_linked
    np.testing.assert_array_equal(
        link.orphans20, [j for j in range(900) if not any(j in c for c in expected)]
    )


def test_all_rule_cap_is_seeded_per_parent_and_order_independent():
    # 5x tiles at step 1024 over a 512-px 20x grid: every tile contains 16 corners, most shared.
    coords5 = np.array([[x, y] for x in (0, 1024, 2048) for y in (0, 1024)])
    coords20 = np.array([[x, y] for x in range(0, 4096, 512) for y in range(0, 3072, 512)])
    link = link_children(coords5, coords20, 2048, max_children=5, seed=3, salt=slide_salt("s"), rule="all")
    containing = _brute_force_all(coords5, coords20, 2048)
    assert all(len(c) == 16 for c in containing)
    for p in range(len(coords5)):
        kept = link.children_of(p)
        assert len(kept) == 5 and kept == sorted(kept) and set(kept) <= set(containing[p])
    assert link.num_dropped == int((link.parent_of >= 0).sum()) - link.num_linked
    again = link_children(coords5, coords20, 2048, max_children=5, seed=3, salt=slide_salt("s"), rule="all")
    np.testing.assert_array_equal(again.children, link.children)
    perm = np.random.default_rng(1).permutation(len(coords20))
    shuffled = link_children(
        coords5[::-1], coords20[perm], 2048, max_children=5, seed=3, salt=slide_salt("s"), rule="all"
    )
    for p in range(len(coords5)):
        q = len(coords5) - 1 - p
        assert _kept_coords(shuffled, coords20[perm], q) == _kept_coords(link, coords20, p)


@pytest.mark.parametrize("max_children", [16, 3])
def test_rules_agree_exactly_without_overlap(max_children):
    """Non-overlapping 5x tiles (a grid per contour, origins off the global grid): identical results."""
    rng = np.random.default_rng(11)
    grid = np.array([[x, y] for x in range(6) for y in range(5)]) * 2048
    coords5 = np.concatenate([grid + [100, 37], grid + [20000, 5]])
    coords20 = np.concatenate(
        [rng.integers(0, 2048, size=(400, 2)) + coords5[rng.integers(0, len(coords5), 400)], [[-5, -5]]]
    )
    a = link_children(coords5, coords20, 2048, max_children=max_children, seed=2, rule="all")
    b = link_children(coords5, coords20, 2048, max_children=max_children, seed=2, rule="nearest")
    for field in ("children", "num_candidates", "parent_of", "kept", "orphans20", "childless5"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
    assert a.num_links == a.num_linked == b.num_linked


@pytest.mark.parametrize("rule", ["all", "nearest"])
def test_child_on_the_far_boundary_of_its_parent(rule):
    """A corner at parent + size - 1 is a child; at parent + size (either axis) it is not (half-open square)."""
    parent = np.array([[1000, 3000]])
    size = 2048
    coords20 = np.array(
        [
            [1000 + size - 1, 3000 + size - 1],  # last pixel of the square: child
            [1000 + size, 3000],  # right edge: not a child
            [1000, 3000 + size],  # bottom edge: not a child
            [1000 + size - 1, 3000],  # last column: child
            [1000, 3000 + size - 1],  # last row: child
            [999, 3000],  # one left of the corner: not a child
            [1000, 2999],  # one above the corner: not a child
            [1000, 3000],  # the corner itself: child
        ]
    )
    np.testing.assert_array_equal(find_parents(parent, coords20, size), [0, -1, -1, 0, 0, -1, -1, 0])
    link = link_children(parent, coords20, size, rule=rule)
    assert link.children_of(0) == [0, 3, 4, 7]
    np.testing.assert_array_equal(link.orphans20, [1, 2, 5, 6])
