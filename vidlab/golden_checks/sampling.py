"""Golden checks of the frame samplers: official sampling calls translated to vidlab samplers."""

from __future__ import annotations

import copy
import random
from typing import Any

import numpy as np

from vidlab.golden import GoldenCase, GoldenError, Mismatches
from vidlab.io.sampling import Sampler, SamplingError, make_sampler


def sampler_from_official(system: str, sample: str, **official: Any) -> Sampler:
    """vidlab's sampler for an official sampling call, named by the official mode: FiT sample_frames 'rand' /
    'uniform', Singularity get_frame_indices 'rand' / 'middle' / 'fpsX', EVL 'train' (random_sample) / 'eval',
    with the official keyword arguments (num_frames, fix_start, max_num_frames, sampling_rate, num_temporal_views).
    """
    num_frames = official.get("num_frames")
    if system == "fit":
        if sample == "rand":
            return make_sampler("fit_rand", num_frames=num_frames)
        return make_sampler("fit_uniform", num_frames=num_frames, fix_start=official.get("fix_start"))
    if system == "singularity":
        if sample == "rand":
            return make_sampler("singularity_rand", num_frames=num_frames)
        if sample.startswith("fps"):
            return make_sampler(
                "singularity_fps", output_fps=float(sample[3:]), max_num_frames=official.get("max_num_frames", -1)
            )
        return make_sampler("singularity_middle", num_frames=num_frames, fix_start=official.get("fix_start"))
    if system == "evl":
        rate = official["sampling_rate"]
        if sample == "train":
            if rate < 0:
                return make_sampler("evl_tsn", num_frames=num_frames)
            return make_sampler("evl_train", num_frames=num_frames, sampling_rate=rate)
        return make_sampler(
            "evl_eval", num_frames=num_frames, sampling_rate=rate, num_views=official["num_temporal_views"]
        )
    raise GoldenError(f"no vidlab translation for official {system!r} sampling {sample!r}")


_SAMPLING_SEEDS = range(100)
_SAMPLING_METADATA = {"case", "official", "environment", "description", "tolerance", "notes"}
_NO_FPS = 25.0  # handed to samplers that ignore the frame rate


def check_sampling(case: GoldenCase) -> None:
    """Exact indices for every deterministic grid point; random modes must stay inside the official support.

    Where the official output is unusable (indices past the video's end, or none at all) vidlab must raise
    SamplingError instead of returning it.
    """
    mismatches = Mismatches(case.name)
    sections = {
        "fit_sample_frames": _check_fit_entry,
        "singularity_get_frame_indices": _check_singularity_entry,
        "singularity_get_frame_indices_fps": _check_fps_entry,
        "evl_eval_temporal_crops": _check_evl_eval_entry,
        "evl_train_sampler_deterministic_branch": _check_evl_train_entry,
    }
    fit_support = {
        (e["num_frames"], e["vlen"]): e["rand_support"]["per_segment_choices"]
        for e in case.spec.get("fit_sample_frames", [])
    }
    for key, value in case.spec.items():
        if key in _SAMPLING_METADATA:
            continue
        if key not in sections:
            mismatches.expect(False, f"section {key!r} is not a sampling mode vidlab knows")
            continue
        for entry in value:
            sections[key](entry, mismatches, fit_support)
    mismatches.raise_if_any()


def _check_fit_entry(entry: dict, out: Mismatches, fit_support: dict) -> None:
    num_frames, vlen = entry["num_frames"], entry["vlen"]
    where = f"fit num_frames={num_frames} vlen={vlen}"
    uniform = sampler_from_official("fit", "uniform", num_frames=num_frames)
    _expect_views(out, f"{where} uniform", uniform, vlen, [entry["uniform"]["indices"]])
    for fix_start, result in entry["fix_start"].items():
        sampler = sampler_from_official("fit", "uniform", num_frames=num_frames, fix_start=int(fix_start))
        _expect_views(out, f"{where} fix_start={fix_start}", sampler, vlen, [result["indices"]])
    rand = sampler_from_official("fit", "rand", num_frames=num_frames)
    support = entry["rand_support"]["per_segment_choices"]
    _expect_segment_support(out, f"{where} rand", rand, vlen, support, padded_to=None)
    if "indices" in entry["rand_seed0"]:
        _expect_seeded_draw(out, where, rand, vlen, entry["rand_seed0"]["indices"])


def _check_singularity_entry(entry: dict, out: Mismatches, fit_support: dict) -> None:
    num_frames, vlen = entry["num_frames"], entry["vlen"]
    where = f"singularity num_frames={num_frames} vlen={vlen}"
    middle = sampler_from_official("singularity", "middle", num_frames=num_frames)
    _expect_views(out, f"{where} middle", middle, vlen, [entry["middle"]["indices"]])
    for fix_start, result in entry["fix_start"].items():
        sampler = sampler_from_official("singularity", "middle", num_frames=num_frames, fix_start=int(fix_start))
        _expect_views(out, f"{where} fix_start={fix_start}", sampler, vlen, [result["indices"]])
    support = fit_support.get((num_frames, vlen))
    if support is None:
        return
    rand = sampler_from_official("singularity", "rand", num_frames=num_frames)
    if all(first < last for first, last in support):
        _expect_segment_support(out, f"{where} rand", rand, vlen, support, padded_to=num_frames)
        _expect_seeded_draw(out, where, rand, vlen, entry["rand_seed0"]["indices"])
    else:
        _expect_permutation_fallback(out, f"{where} rand (fallback)", rand, vlen, len(support), num_frames)


def _check_fps_entry(entry: dict, out: Mismatches, fit_support: dict) -> None:
    sampler = sampler_from_official("singularity", entry["sample"], max_num_frames=entry["max_num_frames"])
    where = (f"singularity {entry['sample']} input_fps={entry['input_fps']} vlen={entry['vlen']} "
             f"max_num_frames={entry['max_num_frames']}")
    _expect_views(out, where, sampler, entry["vlen"], [entry["indices"]], fps=entry["input_fps"])


def _check_evl_eval_entry(entry: dict, out: Mismatches, fit_support: dict) -> None:
    official = {k: entry[k] for k in ("num_frames", "sampling_rate", "num_temporal_views")}
    where = "evl eval " + " ".join(f"{k}={v}" for k, v in official.items()) + f" vlen={entry['vlen']}"
    _expect_views(out, where, sampler_from_official("evl", "eval", **official), entry["vlen"], entry["views"])


def _check_evl_train_entry(entry: dict, out: Mismatches, fit_support: dict) -> None:
    num_frames, rate, vlen = entry["num_frames"], entry["sampling_rate"], entry["vlen"]
    where = f"evl train num_frames={num_frames} sampling_rate={rate} vlen={vlen}"
    sampler = sampler_from_official("evl", "train", num_frames=num_frames, sampling_rate=rate)
    for seed in _SAMPLING_SEEDS[:10]:
        _expect_views(out, f"{where} seed={seed}", sampler, vlen, [entry["indices"]], np.random.default_rng(seed))


def _expect_views(
    out: Mismatches, where: str, sampler: Sampler, vlen: int, expected: list[list[int]],
    rng: Any = None, fps: float = _NO_FPS,
) -> None:
    """The official indices exactly; where they are unusable, the checked call must raise SamplingError."""
    raw_rng, checked_rng = (copy.deepcopy(rng), rng) if rng is not None else (None, None)
    got = [view.tolist() for view in sampler.unchecked(vlen, fps, raw_rng)]
    out.expect(got == expected, f"{where}: expected {expected}, got {got}")
    if any(not view or max(view) >= vlen for view in expected):
        try:
            sampler(vlen, fps, checked_rng)
        except SamplingError:
            return
        out.expect(False, f"{where}: official gives unusable {expected}, vidlab did not raise SamplingError")


def _expect_seeded_draw(out: Mismatches, where: str, sampler: Sampler, vlen: int, official: list[int]) -> None:
    """With random.Random(0), vidlab draws what the official code drew after random.seed(0)."""
    _expect_views(out, f"{where} rand after random.seed(0)", sampler, vlen, [official], random.Random(0))


def _random_draws(sampler: Sampler, vlen: int) -> list[list[int]]:
    """Draws from both kinds of generator vidlab accepts, over fixed seeds."""
    draws = []
    for seed in _SAMPLING_SEEDS:
        for rng in (np.random.default_rng(seed), random.Random(seed)):
            draws.append(sampler(vlen, _NO_FPS, rng)[0].tolist())
    return draws


def _expect_segment_support(
    out: Mismatches, where: str, sampler: Sampler, vlen: int, support: list[list[int]], padded_to: int | None
) -> None:
    """Segment j draws from [a_j, e_j) (a_j itself for a one-frame segment); small ranges must be covered."""
    draws = np.array(_random_draws(sampler, vlen))
    expected_len = padded_to if padded_to is not None else len(support)
    if draws.shape[1] != expected_len:
        out.expect(False, f"{where}: expected {expected_len} indices per draw, got {draws.shape[1]}")
        return
    for j, (first, last) in enumerate(support):
        column = draws[:, j]
        allowed_max = first if first == last else last - 1
        out.expect(
            bool(column.min() >= first and column.max() <= allowed_max),
            f"{where}: segment {j} drew {sorted(set(column.tolist()))} outside [{first}, {allowed_max}]",
        )
        if allowed_max - first < 8:
            out.expect(
                set(column.tolist()) == set(range(first, allowed_max + 1)),
                f"{where}: segment {j} never drew some of [{first}, {allowed_max}] in {len(column)} draws",
            )
    if padded_to is not None:
        out.expect(bool((draws[:, len(support):] == draws[:, [len(support) - 1]]).all()),
                   f"{where}: padding does not repeat the last index")


def _expect_permutation_fallback(
    out: Mismatches, where: str, sampler: Sampler, vlen: int, acc: int, num_frames: int
) -> None:
    """Singularity's fallback: acc distinct sorted frames of the video, then the last one repeated."""
    for draw in _random_draws(sampler, vlen):
        head, tail = draw[:acc], draw[acc:]
        ok = (len(draw) == num_frames and head == sorted(set(head)) and len(head) == acc
              and 0 <= head[0] and head[-1] < vlen and all(i == head[-1] for i in tail))
        out.expect(ok, f"{where}: {draw} is not {acc} sorted distinct frames padded with the last")
