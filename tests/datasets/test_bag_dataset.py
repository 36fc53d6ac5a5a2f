"""BagDataset: loading, labels, LRU eviction by MB, oversize bags, thread safety."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from datasets.bag_dataset import BagDataset, bag_nbytes
from datasets.features import FeatureLayout, write_hierarchical_file
from datasets.hierarchy import link_children
from tests.data_fixtures import standard_slide
from utils.errors import InputError

SLIDES = ["a", "b", "c", "d"]


@pytest.fixture
def layout(tmp_path):
    layout = FeatureLayout(tmp_path, "toy", "plip")
    for i, slide in enumerate(SLIDES):
        coords5, coords20, _, x20 = standard_slide(layout, slide, seed=i)
        write_hierarchical_file(
            layout.hier_file(slide), x20, coords20, link_children(coords5, coords20, 2048)
        )
    return layout


def _bag_mb(layout):
    return bag_nbytes(BagDataset(layout, ["a"], [0], cache_mb=0)[0]) / 2**20


def test_items_and_labels(layout):
    data = BagDataset(layout, SLIDES, [0, 1, 0, 1], expected_dim=8)
    assert len(data) == 4 and data.slide_ids == SLIDES and data.labels == [0, 1, 0, 1]
    bag = data[1]
    assert bag.slide_id == "b" and bag.label == 1 and bag.x20.shape == (3, 16, 8)
    assert data[-1].slide_id == "d"
    with pytest.raises(IndexError):
        data[4]


def test_lru_eviction(layout):
    size_mb = _bag_mb(layout)
    data = BagDataset(layout, SLIDES, [0] * 4, cache_mb=2.5 * size_mb, admit_after=1)  # room for two bags
    first = data[0]
    data[1]
    assert data.cached_slides() == ["a", "b"]
    data[2]  # evicts a (least recently used)
    assert data.cached_slides() == ["b", "c"]
    data[1]  # b becomes most recent
    data[3]  # evicts c, not b
    assert data.cached_slides() == ["b", "d"]
    assert data.cached_mb <= 2.5 * size_mb
    assert data[1] is data[1]  # served from the cache
    assert data[0] is not first  # re-read after eviction
    np.testing.assert_array_equal(data[0].x5.numpy(), first.x5.numpy())
    assert data.hits >= 2 and data.misses == 5


def test_bag_bigger_than_cache_is_not_cached(layout):
    data = BagDataset(layout, SLIDES, [0] * 4, cache_mb=0.5 * _bag_mb(layout), admit_after=1)
    data[0]
    assert data.cached_slides() == [] and data.cached_mb == 0


def test_thread_safe_under_concurrent_access(layout):
    size_mb = _bag_mb(layout)
    data = BagDataset(layout, SLIDES, [0, 1, 2, 3], cache_mb=2.5 * size_mb, admit_after=1)
    errors = []

    def worker(seed):
        rng = np.random.default_rng(seed)
        try:
            for i in rng.integers(0, 4, 40):
                bag = data[int(i)]
                assert bag.slide_id == SLIDES[int(i)] and bag.label == int(i)
        except Exception as err:  # collected and re-raised in the main thread
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(data.cached_slides()) <= 2 and data.cached_mb <= 2.5 * size_mb
    assert data.hits + data.misses == 160


def test_a_bag_is_kept_from_its_third_read(layout):
    """Keeping a bag costs first-touching its memory; slides read once or twice are not kept."""
    data = BagDataset(layout, SLIDES, [0] * 4)
    first, second = data[0], data[0]
    assert data.cached_slides() == [] and first is not second
    third = data[0]
    assert data.cached_slides() == ["a"] and data[0] is third
    data[1]
    assert data.cached_slides() == ["a"]
    assert (data.hits, data.misses) == (1, 4)


def test_length_mismatch(layout):
    with pytest.raises(InputError, match="2 slide ids but 1 labels"):
        BagDataset(layout, ["a", "b"], [0])
