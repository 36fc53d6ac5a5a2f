"""Benchmark: 5x->20x linking with grid keys (:func:`link_children`) vs a per-parent scan.

A synthetic slide with ``--n5`` 5x patches on a 2048-px grid and ``--n20`` 20x patches (random cells
of the 4x4 sub-grids, plus 1% without a parent). The naive baseline tests every 20x corner against each
5x square (O(N5 * N20)); it runs on the first ``--naive-parents`` parents only and is extrapolated
linearly to all of them (marked ``*``), after checking that both agree on that subset.

    python benchmarks/bench_linking.py [--n5 8000 --n20 100000 --naive-parents 500] [--rule all|nearest]

The tiles do not overlap, so both linking rules give the same children (checked against the baseline).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datasets.hierarchy import DEFAULT_LINK_RULE, LINK_RULES, link_children  # noqa: E402

PARENT_PX = 2048
CHILD_PX = 512


def synthetic_slide(n5: int, n20: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n5 * 1.5)))
    cells = rng.choice(side * side, n5, replace=False)
    coords5 = np.stack([cells % side, cells // side], axis=1).astype(np.int64) * PARENT_PX + 1000
    n_orphans = n20 // 100
    slots = rng.choice(n5 * 16, n20 - n_orphans, replace=False)
    parent, sub = slots // 16, slots % 16
    coords20 = coords5[parent] + np.stack([sub % 4, sub // 4], axis=1) * CHILD_PX
    orphans = (
        np.stack([np.full(n_orphans, (side + 2) * PARENT_PX), np.arange(n_orphans) * CHILD_PX], axis=1) + 1000
    )
    coords20 = np.concatenate([coords20, orphans])
    return coords5, coords20[rng.permutation(n20)]


def naive_children(coords5: np.ndarray, coords20: np.ndarray, parents: range) -> list[np.ndarray]:
    """Straightforward baseline: for each parent, scan all 20x corners."""
    out = []
    for i in parents:
        x, y = coords5[i]
        inside = (
            (coords20[:, 0] >= x)
            & (coords20[:, 0] < x + PARENT_PX)
            & (coords20[:, 1] >= y)
            & (coords20[:, 1] < y + PARENT_PX)
        )
        out.append(np.flatnonzero(inside))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n5", type=int, nargs="+", default=[1000, 8000])
    parser.add_argument("--n20", type=int, nargs="+", default=[12500, 100000])
    parser.add_argument("--naive-parents", type=int, default=500, help="parents scanned by the baseline")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rule", choices=LINK_RULES, default=DEFAULT_LINK_RULE, help="linking rule")
    args = parser.parse_args(argv)
    print(f"{'n5':>7} {'n20':>8} {'ours s':>9} {'naive s':>10} {'ratio':>8}")
    for n5, n20 in zip(args.n5, args.n20):
        coords5, coords20 = synthetic_slide(n5, n20)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            link = link_children(coords5, coords20, PARENT_PX, max_children=16, seed=0, rule=args.rule)
            times.append(time.perf_counter() - start)
        ours = min(times)
        subset = range(min(n5, args.naive_parents))
        start = time.perf_counter()
        naive = naive_children(coords5, coords20, subset)
        naive_s = (time.perf_counter() - start) * n5 / len(subset)
        for i, expected in zip(subset, naive):
            assert link.children_of(i) == sorted(expected.tolist()), f"mismatch at parent {i}"
        mark = "*" if len(subset) < n5 else " "
        print(f"{n5:>7} {n20:>8} {ours:>9.4f} {naive_s:>9.3f}{mark} {naive_s / ours:>7.0f}x")
    print("* naive time extrapolated from the first", args.naive_parents, "parents")
    return 0


if __name__ == "__main__":
    sys.exit(main())
