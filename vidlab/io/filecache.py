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
    maxsize: int,
) -> Callable[[Callable[[str | os.PathLike[str]], T]], Callable[[str | os.PathLike[str]], T]]:
    """Cache `fn(path)` by (path, size, mtime): datasets read several clips of one video, so its
    headers and frame index are worth keeping; a rewritten file gets a new key. Failures are not cached."""

    def decorate(fn: Callable[[str | os.PathLike[str]], T]) -> Callable[[str | os.PathLike[str]], T]:
        cache: OrderedDict[tuple[str, int, int], T] = OrderedDict()
        lock = threading.Lock()

        @functools.wraps(fn)
        def wrapper(path: str | os.PathLike[str]) -> T:
            try:
                stat = os.stat(path)
            except OSError:
                return fn(path)  # let `fn` report the missing file with its own error
            key = (os.fspath(path), stat.st_size, stat.st_mtime_ns)
            with lock:
                if key in cache:
                    cache.move_to_end(key)
                    return cache[key]
            value = fn(path)
            with lock:
                cache[key] = value
                while len(cache) > maxsize:
                    cache.popitem(last=False)
            return value

        return wrapper

    return decorate
