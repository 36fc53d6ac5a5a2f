"""Background prefetching of slide bags: load the next items while the model works on the current one.

:func:`prefetch` yields ``load(i)`` for each index in order, keeping at most ``depth`` loads in flight on
``workers`` background threads (a bounded window, so memory stays bounded). An exception raised by a load
is re-raised in the consumer at that item; when the consumer stops early (break, exception, garbage
collection) the pending loads are cancelled and the threads are joined.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def prefetch(
    load: Callable[[int], T], indices: Sequence[int] | Iterable[int], depth: int = 2, workers: int = 1
) -> Iterator[T]:
    """Yield ``load(i)`` for ``i`` in ``indices``, in order; ``depth`` = 0 loads synchronously."""
    if depth <= 0 or workers <= 0:
        for i in indices:
            yield load(i)
        return
    pending: deque[Future] = deque()
    todo = iter(indices)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prefetch")
    try:

        def fill() -> None:
            while len(pending) < depth:
                try:
                    i = next(todo)
                except StopIteration:
                    return
                pending.append(pool.submit(load, i))

        fill()
        while pending:
            item = pending.popleft().result()
            fill()
            yield item
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
