"""The per-file cache behind `probe` and `frame_index`: cost budget, recency and file versions."""

from __future__ import annotations

import os

from vidlab.io.filecache import cached_per_file


def _counting_cache(budget: int, sizes: dict[str, int]):
    calls: list[str] = []

    @cached_per_file(budget=budget, cost=lambda value: value)
    def size_of(path: str | os.PathLike[str]) -> int:
        calls.append(os.path.basename(path))
        return sizes[os.path.basename(path)]

    return size_of, calls


def _files(tmp_path, names):
    for name in names:
        (tmp_path / name).write_text(name)
    return {name: str(tmp_path / name) for name in names}


def test_results_within_the_budget_are_served_from_the_cache(tmp_path):
    paths = _files(tmp_path, "abc")
    size_of, calls = _counting_cache(budget=6, sizes={"a": 1, "b": 2, "c": 3})
    for _ in range(3):
        for path in paths.values():
            size_of(path)
    assert calls == ["a", "b", "c"]


def test_the_least_recently_used_go_when_the_cost_exceeds_the_budget(tmp_path):
    paths = _files(tmp_path, "abc")
    size_of, calls = _counting_cache(budget=5, sizes={"a": 2, "b": 2, "c": 2})
    size_of(paths["a"])
    size_of(paths["b"])
    size_of(paths["a"])  # a is now the most recent: c's arrival drops b
    size_of(paths["c"])
    size_of(paths["a"])
    size_of(paths["b"])
    assert calls == ["a", "b", "c", "b"]


def test_a_result_larger_than_the_budget_is_kept_until_the_next(tmp_path):
    paths = _files(tmp_path, "ab")
    size_of, calls = _counting_cache(budget=5, sizes={"a": 9, "b": 1})
    size_of(paths["a"])
    size_of(paths["a"])  # a long video read clip by clip is scanned once
    size_of(paths["b"])
    size_of(paths["b"])
    size_of(paths["a"])
    assert calls == ["a", "b", "a"]


def test_a_rewritten_file_is_computed_again(tmp_path):
    paths = _files(tmp_path, "a")
    size_of, calls = _counting_cache(budget=5, sizes={"a": 1})
    size_of(paths["a"])
    (tmp_path / "a").write_text("longer content")
    size_of(paths["a"])
    assert calls == ["a", "a"]
