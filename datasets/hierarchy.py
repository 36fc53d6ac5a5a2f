"""Linking 20x patches to their 5x parents (pure numpy, near-linear).

HiVE-MIL's hierarchical graph (paper Sec. 3.2, "hierarchical edges") connects every 20x image patch
to the 5x patch it lies in. A 5x patch with top-left corner ``c`` covers the level-0 square
``[c, c + S)`` in both axes, where ``S = patch_px(level0_mag, 5)``; a 20x patch is its child when the
20x patch's top-left corner lies in that square.

Linking never scans all 20x patches per 5x patch. Both coordinate sets are mapped to integer grid
cells of side ``S`` (``coords // S``, packed into one int64 key); the 5x keys are sorted once and every
20x corner looks up the (at most four) cells whose parents could contain it with ``searchsorted``.
Cost: O((N5 + N20) log N5). 5x patches need not lie on one global grid (CLAM-style tiling starts each
tissue contour at its own origin), and overlapping 5x tiles are handled (see :func:`link_children`).

Two linking rules differ only where 5x tiles overlap (e.g. tiles patched with a step smaller than the
tile): ``all`` (default, as the released script) lists a 20x patch under every 5x patch whose square
contains its corner; ``nearest`` lists it under one parent only, the one with the nearest corner.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

BASE_PATCH_PX = 256
_GRID_OFFSET = 1 << 30  # grid indices are shifted by this before packing (allows negative coords)
_GRID_LIMIT = 1 << 30
LINK_RULES = ("all", "nearest")
DEFAULT_LINK_RULE = "all"  # the released script's rule


def patch_px(level0_mag: float, mag: float, patch_size: int = BASE_PATCH_PX) -> int:
    """Side in level-0 pixels of a ``patch_size`` patch extracted at magnification ``mag``.

    ``patch_px(40, 5) == 2048``, ``patch_px(20, 5) == 1024``, ``patch_px(40, 20) == 512``.
    """
    if level0_mag <= 0 or mag <= 0:
        raise ValueError(f"magnifications must be positive (level0_mag={level0_mag}, mag={mag})")
    side = patch_size * float(level0_mag) / float(mag)
    if side != int(side):
        raise ValueError(f"patch side {side} px is not an integer (level0_mag={level0_mag}, mag={mag})")
    return int(side)


def children_per_parent(low_mag: float, high_mag: float) -> int:
    """``(high / low)^2``: how many high-magnification patches tile one low-magnification patch (16)."""
    return int(round((float(high_mag) / float(low_mag)) ** 2))


def slide_salt(slide_id: str) -> int:
    """A stable (process-independent) integer derived from a slide id, for seeding per-slide draws."""
    return zlib.crc32(slide_id.encode("utf-8"))


def grid_keys(coords: np.ndarray, cell_px: int) -> np.ndarray:
    """Pack the grid cell ``coords // cell_px`` of each row of ``coords`` [N, 2] into one int64 key.

    Keys of cells ``(gx, gy)`` are ``(gx + 2^30) * 2^31 + (gy + 2^30)``: equal cells give equal keys and
    distinct cells (with ``|g| < 2^30``) give distinct keys.
    """
    cells = np.floor_divide(np.asarray(coords, dtype=np.int64), np.int64(cell_px))
    return pack_cells(cells)


def pack_cells(cells: np.ndarray) -> np.ndarray:
    """Pack integer pairs [N, 2] (grid cells, or exact coordinates) into unique int64 keys [N]."""
    cells = np.asarray(cells, dtype=np.int64)
    if cells.size and (np.abs(cells).max() >= _GRID_LIMIT):
        raise ValueError("patch coordinates are too large to pack (absolute value >= 2^30)")
    return (cells[:, 0] + _GRID_OFFSET) * np.int64(1 << 31) + (cells[:, 1] + _GRID_OFFSET)


def unpack_cells(keys: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_cells`: int64 keys [N] -> integer pairs [N, 2]."""
    keys = np.asarray(keys, dtype=np.int64)
    return np.stack([keys // (1 << 31) - _GRID_OFFSET, keys % (1 << 31) - _GRID_OFFSET], axis=1)


@dataclass
class LinkResult:
    """Outcome of :func:`link_children` for one slide.

    Attributes:
        children: [N5, max_children] int64 indices into the 20x patches, ascending, -1 padded.
        num_candidates: [N5] int64 number of children each 5x patch gets under ``rule`` before
            sub-sampling (``all``: every 20x corner inside its square; ``nearest``: those it is nearest to).
        parent_of: [N20] int64 index of the nearest 5x patch containing each 20x corner, -1 when none
            does. (Under ``all`` the patch may be listed under further parents; a child dropped by
            sub-sampling still has its parent here; see ``kept``.)
        kept: [N20] bool, True for 20x patches that appear in ``children`` (under any parent).
        orphans20: indices of 20x patches with no parent.
        childless5: indices of 5x patches without any child.
        max_children: the cap used.
        rule: the linking rule, ``all`` or ``nearest``.
    """

    children: np.ndarray
    num_candidates: np.ndarray
    parent_of: np.ndarray
    kept: np.ndarray
    orphans20: np.ndarray
    childless5: np.ndarray
    max_children: int
    rule: str = DEFAULT_LINK_RULE

    @property
    def num_children(self) -> np.ndarray:
        """[N5] number of kept children of each 5x patch."""
        return (self.children >= 0).sum(axis=1)

    @property
    def num_linked(self) -> int:
        """Number of distinct 20x patches kept as children."""
        return int(self.kept.sum())

    @property
    def num_links(self) -> int:
        """Number of parent-child links kept (above :attr:`num_linked` when a child has several parents)."""
        return int((self.children >= 0).sum())

    @property
    def num_dropped(self) -> int:
        """Number of 20x patches with a parent that were removed by the ``max_children`` cap."""
        return int((self.parent_of >= 0).sum()) - self.num_linked

    def children_of(self, parent: int) -> list[int]:
        """Kept child indices of 5x patch ``parent``."""
        row = self.children[parent]
        return [int(c) for c in row[row >= 0]]


def containing_pairs(
    coords5: np.ndarray, coords20: np.ndarray, parent_size_px: int
) -> tuple[np.ndarray, np.ndarray]:
    """Every ``(child, parent)`` pair where 5x square ``[c, c + S)^2`` contains the 20x top-left corner.

    A corner in grid cell ``g`` can only lie in parents whose corners are in cells ``g - (0|1, 0|1)``,
    so four sorted-key lookups find all candidates: O((N5 + N20) log N5), never a scan of all 20x
    patches per 5x patch. Returns two int64 arrays of equal length (a pair appears once); a 20x
    corner inside overlapping (or duplicated) 5x tiles appears once per containing square.
    """
    c5 = _as_coords(coords5, "coords5")
    c20 = _as_coords(coords20, "coords20")
    size = int(parent_size_px)
    if size <= 0:
        raise ValueError(f"parent_size_px must be positive, got {parent_size_px}")
    n20 = c20.shape[0]
    none = np.zeros(0, dtype=np.int64)
    if n20 == 0 or c5.shape[0] == 0:
        return none, none
    keys5 = pack_cells(np.floor_divide(c5, size))
    order5 = np.argsort(keys5, kind="stable")
    sorted5 = keys5[order5]
    # Many 20x corners share a cell: look up each distinct cell once, then broadcast back.
    cell_keys, cell_of = np.unique(pack_cells(np.floor_divide(c20, size)), return_inverse=True)
    cells = unpack_cells(cell_keys)

    x20, y20 = c20[:, 0], c20[:, 1]
    x5, y5 = c5[:, 0], c5[:, 1]
    child_parts, parent_parts = [none], [none]
    for dx in (0, 1):
        for dy in (0, 1):
            keys = pack_cells(cells - np.array([dx, dy], dtype=np.int64))
            cell_lo = np.searchsorted(sorted5, keys, side="left")
            cell_count = np.searchsorted(sorted5, keys, side="right") - cell_lo
            if not cell_count.any():
                continue
            count = cell_count[cell_of]
            lo = cell_lo[cell_of]
            if cell_count.max() == 1:  # common case: at most one 5x corner per cell
                child = np.flatnonzero(count)
                parent = order5[lo[child]]
            else:
                total = int(count.sum())
                child = np.repeat(np.arange(n20, dtype=np.int64), count)
                offset_in_cell = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(count) - count, count)
                parent = order5[np.repeat(lo, count) + offset_in_cell]
            off_x = x20[child] - x5[parent]
            off_y = y20[child] - y5[parent]
            inside = (off_x >= 0) & (off_x < size) & (off_y >= 0) & (off_y < size)
            child_parts.append(child[inside])
            parent_parts.append(parent[inside])
    return np.concatenate(child_parts), np.concatenate(parent_parts)


def find_parents(coords5: np.ndarray, coords20: np.ndarray, parent_size_px: int) -> np.ndarray:
    """Index of the 5x patch whose square ``[c, c + S)^2`` contains each 20x top-left corner (-1: none).

    When several 5x squares contain a corner (overlapping or duplicated 5x tiles), the parent with the
    nearest top-left corner (L1) wins, ties going to the lowest 5x index (the ``nearest`` rule).
    """
    c5 = _as_coords(coords5, "coords5")
    c20 = _as_coords(coords20, "coords20")
    child, parent = containing_pairs(c5, c20, parent_size_px)
    return _nearest_parent(c5, c20, child, parent)


def _nearest_parent(c5: np.ndarray, c20: np.ndarray, child: np.ndarray, parent: np.ndarray) -> np.ndarray:
    """[N20] nearest containing parent from the containing pairs (-1 where a corner has none)."""
    n20 = c20.shape[0]
    parent_of = np.full(n20, -1, dtype=np.int64)
    if child.size and np.bincount(child, minlength=n20).max() > 1:
        # Several squares contain some corners: keep the nearest corner (L1), then the lowest index.
        distance = np.abs(c20[child] - c5[parent]).sum(axis=1)
        order = np.lexsort((parent, distance, child))
        child, parent = child[order], parent[order]
        first = np.ones(child.size, dtype=bool)
        first[1:] = child[1:] != child[:-1]
        child, parent = child[first], parent[first]
    parent_of[child] = parent
    return parent_of


def link_children(
    coords5: np.ndarray,
    coords20: np.ndarray,
    parent_size_px: int,
    max_children: int = 16,
    seed: int = 0,
    salt: int = 0,
    rule: str = DEFAULT_LINK_RULE,
) -> LinkResult:
    """Assign the 20x patches to their 5x parents and cap each parent at ``max_children`` children.

    Args:
        coords5: [N5, 2] level-0 top-left corners of the 5x patches.
        coords20: [N20, 2] level-0 top-left corners of the 20x patches.
        parent_size_px: side of a 5x patch in level-0 px (:func:`patch_px` of the slide's level0_mag).
        max_children: cap per parent (16 = (20/5)^2 for 5x->20x).
        seed: global seed of the sub-sampling.
        salt: per-slide integer (:func:`slide_salt` of the slide id) so slides draw independently.
        rule: ``all`` (released): a 20x patch is a child of every 5x patch whose square contains its
            corner, so with overlapping 5x tiles it can be listed under several parents; ``nearest``:
            only under the nearest such parent (:func:`find_parents`). Both agree when tiles do not overlap.

    When a parent has more than ``max_children`` candidates, a random subset is kept, drawn with a
    numpy Generator seeded from ``(seed, salt, parent corner x, parent corner y)`` over the candidates
    sorted by coordinates. The subset therefore depends neither on the order in which slides are
    processed nor on the row order of either file. Kept children are listed by ascending 20x index.
    """
    if max_children <= 0:
        raise ValueError(f"max_children must be positive, got {max_children}")
    if rule not in LINK_RULES:
        raise ValueError(f"rule must be one of {', '.join(LINK_RULES)}, got {rule!r}")
    c5 = _as_coords(coords5, "coords5")
    c20 = _as_coords(coords20, "coords20")
    n5, n20 = c5.shape[0], c20.shape[0]
    pair_child, pair_parent = containing_pairs(c5, c20, parent_size_px)
    parent_of = _nearest_parent(c5, c20, pair_child, pair_parent)
    if rule == "nearest":
        pair_child = np.flatnonzero(parent_of >= 0)
        pair_parent = parent_of[pair_child]
    num_candidates = np.bincount(pair_parent, minlength=n5).astype(np.int64)

    # Group the pairs by parent, ascending 20x index inside each group.
    order = np.argsort(pair_parent * np.int64(max(n20, 1)) + pair_child)  # pairs are unique: no ties
    grouped, group_parent = pair_child[order], pair_parent[order]
    group_start = np.cumsum(num_candidates) - num_candidates
    position = np.arange(grouped.size, dtype=np.int64) - group_start[group_parent]

    children = np.full((n5, max_children), -1, dtype=np.int64)
    fits = num_candidates[group_parent] <= max_children
    children[group_parent[fits], position[fits]] = grouped[fits]
    for parent in np.flatnonzero(num_candidates > max_children):
        start = group_start[parent]
        members = grouped[start : start + num_candidates[parent]]
        children[parent] = _subsample(members, c20, c5[parent], max_children, seed, salt)

    kept = np.zeros(n20, dtype=bool)
    kept[children[children >= 0]] = True
    return LinkResult(
        children=children,
        num_candidates=num_candidates,
        parent_of=parent_of,
        kept=kept,
        orphans20=np.flatnonzero(parent_of < 0),
        childless5=np.flatnonzero(num_candidates == 0),
        max_children=int(max_children),
        rule=rule,
    )


def _subsample(
    members: np.ndarray, coords20: np.ndarray, parent_corner: np.ndarray, k: int, seed: int, salt: int
) -> np.ndarray:
    """Seeded choice of ``k`` of ``members`` (20x indices), independent of their order; sorted result."""
    xy = coords20[members]
    canonical = members[np.lexsort((members, xy[:, 0], xy[:, 1]))]  # by y, then x, then index
    entropy = [int(seed) & 0xFFFFFFFFFFFFFFFF, int(salt) & 0xFFFFFFFFFFFFFFFF]
    entropy += [int(v) + (1 << 62) for v in parent_corner]  # SeedSequence needs non-negative ints
    rng = np.random.default_rng(np.random.SeedSequence(entropy))
    picked = canonical[rng.permutation(canonical.size)[:k]]
    return np.sort(picked)


@dataclass
class HierarchicalArrays:
    """Content of a hierarchical H5 file (one row per 5x patch that has a child).

    Attributes:
        features: [R, M, D] children features, zero where padded.
        coords: [R, M, 2] children coordinates, zero where padded.
        parent_index: [R] int64 row of the 5x file each row belongs to.
        child_mask: [R, M] bool, True for real children.
    """

    features: np.ndarray
    coords: np.ndarray
    parent_index: np.ndarray
    child_mask: np.ndarray


def hierarchical_rows(link: LinkResult) -> tuple[np.ndarray, np.ndarray]:
    """``(parent_index [R], child_index [R, M])``: the rows of a hierarchical file, -1 = padding."""
    parent_index = np.flatnonzero((link.children >= 0).any(axis=1)).astype(np.int64)
    return parent_index, link.children[parent_index]


def gather_children(values: np.ndarray, child_index: np.ndarray) -> np.ndarray:
    """``values[child_index]`` with rows of index -1 set to zero: [R, M, ...] from [N20, ...]."""
    valid = child_index >= 0
    out = np.asarray(values)[np.where(valid, child_index, 0)]
    out[~valid] = 0
    return out


def build_hierarchical_arrays(
    features20: np.ndarray, coords20: np.ndarray, link: LinkResult
) -> HierarchicalArrays:
    """Hierarchical file arrays for one slide from its 20x patches and their links (in memory).

    Row ``i`` holds the children of 5x patch ``parent_index[i]``; only 5x patches with at least one
    child get a row (the published layout), padded with zeros to ``link.max_children``.
    """
    parent_index, child_index = hierarchical_rows(link)
    return HierarchicalArrays(
        features=gather_children(features20, child_index),
        coords=gather_children(np.asarray(coords20, dtype=np.int64), child_index),
        parent_index=parent_index,
        child_mask=child_index >= 0,
    )


def _as_coords(coords: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(coords)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} must have shape [N, 2], got {list(arr.shape)}")
    return arr.astype(np.int64, copy=False)
