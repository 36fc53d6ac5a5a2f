"""A map-style dataset of slide bags with a bounded, thread-safe LRU cache.

Few-shot training revisits the same handful of slides every epoch, so loaded bags are kept in memory
up to ``cache_mb`` megabytes of tensor data (least recently used evicted first). A background
prefetch thread may call ``__getitem__`` while the training loop does too; the cache is guarded by a
lock, and slide files are read outside the lock so loads of different slides overlap.
Cached bags are shared objects: callers must not modify their tensors in place.

A bag is kept only from its ``admit_after``-th read on (default 3). Keeping a bag costs touching its
memory for the first time (a 500 x 16 x 512 float32 bag is 17 MB, about 4,000 page faults: tens to
hundreds of milliseconds on a virtual machine, taken while the model computes), whereas reading it again
from a page-cached H5 file costs about 12 ms. A slide read once or twice (a test slide, a short run) never
pays that back; from the third read on every further epoch saves a read. ``admit_after=1`` keeps every bag
at its first read.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from datasets.bag import SlideBag
from datasets.features import FeatureLayout, read_slide_bag
from utils.errors import InputError

_MB = 1024 * 1024
ADMIT_AFTER = 3  # reads of a slide before its bag is kept (module docstring)


def bag_nbytes(bag: SlideBag) -> int:
    """Bytes held by the tensors of ``bag``."""
    tensors = (bag.x5, bag.x20, bag.child_mask, bag.coords5, bag.coords20)
    return sum(t.element_size() * t.nelement() for t in tensors if t is not None)


class BagDataset:
    """Slides of one split: ``dataset[i]`` is the :class:`SlideBag` of ``slide_ids[i]`` with ``labels[i]``."""

    def __init__(
        self,
        layout: FeatureLayout,
        slide_ids: list[str],
        labels: list[int],
        cache_mb: float = 2048,
        expected_dim: int | None = None,
        admit_after: int = ADMIT_AFTER,
    ):
        if len(slide_ids) != len(labels):
            raise InputError(f"BagDataset: {len(slide_ids)} slide ids but {len(labels)} labels")
        self.layout = layout
        self.slide_ids = list(slide_ids)
        self.labels = [int(v) for v in labels]
        self.expected_dim = expected_dim
        self.cache_bytes = max(0, int(cache_mb * _MB))
        self.admit_after = max(1, int(admit_after))
        self._reads: dict[str, int] = {}  # reads of each slide not (yet) kept
        self._cache: OrderedDict[str, tuple[SlideBag, int]] = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self.slide_ids)

    def __getitem__(self, index: int) -> SlideBag:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} slides")
        key = self._cache_key(index)
        with self._lock:
            entry = self._cache.get(key)
            if entry is not None:
                self._cache.move_to_end(key)
                self.hits += 1
                return entry[0]
            self.misses += 1
            reads = self._reads[key] = self._reads.get(key, 0) + 1
        bag = self._read(index)
        if reads >= self.admit_after:
            self._insert(key, bag)
        return bag

    def _cache_key(self, index: int) -> str:
        """Cache key of item ``index``: its id, a NUL separator, its label."""
        return f"{self.slide_ids[index]}\0{self.labels[index]}"

    def _read(self, index: int) -> SlideBag:
        """Load item ``index`` from disk (outside the cache lock); subclasses load other bag kinds."""
        return read_slide_bag(
            self.layout, self.slide_ids[index], self.labels[index], expected_dim=self.expected_dim
        )

    def _insert(self, key: str, bag: SlideBag) -> None:
        size = bag_nbytes(bag)
        if size > self.cache_bytes:
            return  # larger than the whole cache: not cached
        with self._lock:
            if key in self._cache:  # another thread loaded it meanwhile
                self._cache.move_to_end(key)
                return
            while self._cache and self._cached_bytes + size > self.cache_bytes:
                _, (_, old_size) = self._cache.popitem(last=False)
                self._cached_bytes -= old_size
            self._cache[key] = (bag, size)
            self._cached_bytes += size

    def cached_slides(self) -> list[str]:
        """Slide ids in the cache, least recently used first."""
        with self._lock:
            return [key.split("\0", 1)[0] for key in self._cache]

    @property
    def cached_mb(self) -> float:
        with self._lock:
            return self._cached_bytes / _MB
