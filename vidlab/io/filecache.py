"""A small LRU cache of per-file results, invalidated when the file changes (size or mtime)."""

from __future__ import annotations

import functools
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def cached_per_file(
    budget: int, cost: Callable[[T], int] | None = None
) -> Callable[[Callable[[str | os.PathLike[str]], T]], Callable[[str | os.PathLike[str]], T]]:
    """Cache `fn(path)` by (path, size, mtime): a rewritten file gets a new key; failures are not cached.

    The least recently used results are dropped while their total `cost` (1 each by default) exceeds
    `budget`; the newest is always kept, so a long video read clip by clip is not re-scanned each time.
    The budget should hold a whole small dataset: a training epoch visits every video in random order,
    so a cache smaller than the dataset misses on almost every clip, and each miss reopens the file
    (about 1 ms) before the decoder opens it again.
    """
    measure = cost or (lambda _value: 1)

    def decorate(fn: Callable[[str | os.PathLike[str]], T]) -> Callable[[str | os.PathLike[str]], T]:
        cache: OrderedDict[tuple[str, int, int], tuple[T, int]] = OrderedDict()
        total = 0
        lock = threading.Lock()

        @functools.wraps(fn)
        def wrapper(path: str | os.PathLike[str]) -> T:
            nonlocal total
            try:
                stat = os.stat(path)
            except (OSError, ValueError):  # ValueError: a NUL byte in the path
                return fn(path)  # let `fn` report the missing file with its own error
            key = (os.fspath(path), stat.st_size, stat.st_mtime_ns)
            with lock:
                if key in cache:
                    cache.move_to_end(key)
                    return cache[key][0]
            value = fn(path)
            weight = measure(value)
            with lock:
                if key not in cache:
                    cache[key] = (value, weight)
                    total += weight
                while total > budget and len(cache) > 1:
                    _, (_, dropped) = cache.popitem(last=False)
                    total -= dropped
            return value

        return wrapper

    return decorate
