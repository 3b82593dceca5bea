"""Frame samplers: hand-derived index sets, random supports over many seeds, and typed errors.

The official grids are checked exactly by tests/golden (case 'sampling'); the expected values here are worked
out by hand from the rules in the module docstring.
"""

import random

import numpy as np
import pytest

from vidlab.errors import ConfigError, VidlabError
from vidlab.io.sampling import SAMPLERS, SamplingError, make_sampler

SEEDS = range(200)


def draws(sampler, vlen, fps=30.0):
    """Draws over many seeds, from both generator kinds the samplers accept."""
    out = []
    for seed in SEEDS:
        for rng in (np.random.default_rng(seed), random.Random(seed)):
            out.append([view.tolist() for view in sampler(vlen, fps, rng)])
    return out


def only_view(sampler, vlen, fps=30.0, rng=None):
    views = sampler(vlen, fps, rng)
    assert len(views) == 1
    assert views[0].dtype == np.int64
    return views[0].tolist()


# --- FiT / Singularity segment samplers ------------------------------------------------------------------


def test_segment_middles_and_fit_returns_at_most_vlen_indices():
    # vlen 8, 4 segments: edges 0,2,4,6,8 -> [0,1] [2,3] [4,5] [6,7]; middles (a + e) // 2
    assert only_view(make_sampler("fit_uniform", num_frames=4), 8) == [0, 2, 4, 6]
    # more frames than the video has: FiT returns vlen indices (the dataset black-pads) ...
    assert only_view(make_sampler("fit_uniform", num_frames=8), 3) == [0, 1, 2]
    # ... Singularity repeats the last index up to num_frames
    assert only_view(make_sampler("singularity_middle", num_frames=8), 3) == [0, 1, 2, 2, 2, 2, 2, 2]


def test_fix_start_offsets_each_segment_start_and_refuses_indices_past_the_end():
    # vlen 10, 2 segments [0,4] [5,9]
    assert only_view(make_sampler("fit_uniform", num_frames=2, fix_start=3), 10) == [3, 8]
    assert only_view(make_sampler("singularity_middle", num_frames=4, fix_start=0), 2) == [0, 1, 1, 1]
    with pytest.raises(SamplingError, match="past the end"):
        make_sampler("fit_uniform", num_frames=2, fix_start=5)(10, 30.0)


def test_fit_rand_never_draws_a_segment_last_frame():
    # vlen 10, 2 segments [0,4] [5,9]: the official range(a, e) gives [0,3] and [5,8]
    results = draws(make_sampler("fit_rand", num_frames=2), 10)
    firsts = {r[0][0] for r in results}
    seconds = {r[0][1] for r in results}
    assert firsts == {0, 1, 2, 3}
    assert seconds == {5, 6, 7, 8}


def test_fit_rand_takes_segment_start_where_the_official_code_raises():
    # vlen 6, 4 segments: edges 0,1,3,4,6 -> [0,0] [1,2] [3,3] [4,5]; one-frame segments give a_j,
    # two-frame segments can only draw a_j (their last frame is excluded)
    assert {tuple(r[0]) for r in draws(make_sampler("fit_rand", num_frames=4), 6)} == {(0, 1, 3, 4)}
    # shorter video than num_frames: every segment is one frame, no crash, vlen indices
    assert {tuple(r[0]) for r in draws(make_sampler("fit_rand", num_frames=8), 3)} == {(0, 1, 2)}


def test_singularity_rand_draws_per_segment_and_pads():
    results = draws(make_sampler("singularity_rand", num_frames=4), 20)
    # vlen 20, 4 segments [0,4] [5,9] [10,14] [15,19]
    for j, low in enumerate((0, 5, 10, 15)):
        assert {r[0][j] for r in results} == set(range(low, low + 4))
    padded = draws(make_sampler("singularity_rand", num_frames=6), 2)
    # every segment is one frame: the permutation fallback picks both frames, then repeats the last
    assert {tuple(r[0]) for r in padded} == {(0, 1, 1, 1, 1, 1)}


def test_singularity_rand_falls_back_to_sorted_distinct_frames():
    # vlen 6, 4 segments with one-frame segments -> 4 distinct sorted frames of the 6
    results = draws(make_sampler("singularity_rand", num_frames=4), 6)
    for (view,) in results:
        assert view == sorted(set(view)) and len(view) == 4 and 0 <= view[0] and view[-1] < 6
    assert len({tuple(view) for (view,) in results}) == 15  # all C(6, 4) subsets occur


def test_random_draws_follow_the_generator_seed():
    sampler = make_sampler("fit_rand", num_frames=8)
    for make_rng in (np.random.default_rng, random.Random):
        assert sampler(300, 30.0, make_rng(7))[0].tolist() == sampler(300, 30.0, make_rng(7))[0].tolist()
    assert len({tuple(r[0]) for r in draws(sampler, 300)}) > 300


def test_sliding_window_offsets():
    # vlen 40, 4 segments starting 0,10,20,30; offsets range(0, 40 // 5, 2) = 0,2,4,6
    views = make_sampler("fit_sliding_window", num_frames=4, stride=2)(40, 30.0)
    assert [v.tolist() for v in views] == [[0, 10, 20, 30], [2, 12, 22, 32], [4, 14, 24, 34], [6, 16, 26, 36]]
    # too short for any offset: one view at offset 0
    assert [v.tolist() for v in make_sampler("fit_sliding_window", num_frames=4, stride=2)(4, 30.0)] == [[0, 1, 2, 3]]


# --- Singularity fpsX -------------------------------------------------------------------------------------


def test_fps_mode_samples_interval_middles_with_half_to_even_rounding():
    # 100 frames at 25 fps = 4 s; at 1 fps the times are 0.5, 1.5, 2.5, 3.5 s = frames 12.5, 37.5, 62.5, 87.5
    sampler = make_sampler("singularity_fps", output_fps=1.0)
    assert only_view(sampler, 100, 25.0) == [12, 38, 62, 88]
    assert only_view(make_sampler("singularity_fps", output_fps=1.0, max_num_frames=2), 100, 25.0) == [12, 38]
    # 0.5 fps on 10 s at 10 fps: times 1, 3, 5, 7, 9 s
    assert only_view(make_sampler("singularity_fps", output_fps=0.5), 100, 10.0) == [10, 30, 50, 70, 90]


def test_fps_mode_errors_on_too_short_videos_and_missing_fps():
    sampler = make_sampler("singularity_fps", output_fps=1.0)
    with pytest.raises(SamplingError, match="no frame"):
        sampler(3, 25.0)  # 0.12 s: the first frame time, 0.5 s, is past the end
    for fps in (0.0, None, float("nan")):
        with pytest.raises(SamplingError, match="frame rate"):
            sampler(100, fps)


# --- EVL dense clips and multi-view -----------------------------------------------------------------------


def test_evl_train_random_start_covers_every_valid_start():
    # 4 frames 2 apart span 7 frames; vlen 20 -> starts 0..13
    results = draws(make_sampler("evl_train", num_frames=4, sampling_rate=2), 20)
    starts = set()
    for (view,) in results:
        assert np.diff(view).tolist() == [2, 2, 2]
        starts.add(view[0])
    assert starts == set(range(14))


def test_evl_train_short_video_branch_repeats_the_last_position_inside():
    sampler = make_sampler("evl_train", num_frames=4, sampling_rate=16)
    # positions 0,16,32,48 in a 30-frame video: 32 and 48 repeat 16 (not frame 29)
    assert {tuple(r[0]) for r in draws(sampler, 30)} == {(0, 16, 16, 16)}


def test_evl_tsn_draws_within_rounded_overlapping_segments():
    # vlen 9, 4 frames: seg 2 -> [0,2] [2,4] [4,6] [6,8], ends included
    results = draws(make_sampler("evl_tsn", num_frames=4), 9)
    for j, low in enumerate((0, 2, 4, 6)):
        assert {r[0][j] for r in results} == {low, low + 1, low + 2}


def test_uniform_views_spacing_and_padding():
    sampler = make_sampler("evl_eval", num_frames=4, sampling_rate=2, num_views=3)
    # span 7, slack 13: starts round(0) = 0, round(6.5) = 6 (half to even), round(13) = 13
    assert [v.tolist() for v in sampler(20, 30.0)] == [[0, 2, 4, 6], [6, 8, 10, 12], [13, 15, 17, 19]]
    assert only_view(make_sampler("uniform_views", num_frames=4, sampling_rate=2), 20) == [6, 8, 10, 12]
    # shorter than the span: every view starts at 0 and repeats the video's last frame
    assert [v.tolist() for v in sampler(5, 30.0)] == [[0, 2, 4, 4]] * 3


# --- fixed-fps clips (VIMPAC, GDT) ------------------------------------------------------------------------


def test_fixed_fps_centred_clip_steps_by_source_fps_over_target_fps():
    # 30 fps video, 10 fps clip: every 3rd frame, span 10; vlen 30 -> slack 20, centred start 10
    centred = make_sampler("fixed_fps", num_frames=4, target_fps=10.0, start="center")
    assert only_view(centred, 30, 30.0) == [10, 13, 16, 19]
    # 25 fps video: frames at 0, 2.5, 5, 7.5 source frames -> nearest 0, 3, 5, 8; vlen 8 -> last frame repeats
    assert only_view(centred, 8, 25.0) == [0, 3, 5, 7]


def test_fixed_fps_random_clip_keeps_its_spacing_inside_the_video():
    sampler = make_sampler("fixed_fps", num_frames=4, target_fps=15.0)
    starts = set()
    for (view,) in draws(sampler, 20, fps=30.0):
        assert np.diff(view).tolist() == [2, 2, 2]
        starts.add(view[0])
    assert starts == set(range(14))
    with pytest.raises(SamplingError, match="frame rate"):
        sampler(20, 0.0, np.random.default_rng(0))


# --- factory and errors -----------------------------------------------------------------------------------


def test_every_registered_name_builds_and_returns_in_range_int64_views():
    params = {
        "fit_sliding_window": {"num_frames": 4, "stride": 1},
        "singularity_fps": {"output_fps": 2.0},
        "ffmpeg_fps": {"output_fps": 2.0},
        "fixed_fps": {"num_frames": 4, "target_fps": 10.0},
        "evl_eval": {"num_frames": 4, "num_views": 3},
        "uniform_views": {"num_frames": 4, "num_views": 2},
    }
    for name in SAMPLERS:
        sampler = make_sampler(name, **params.get(name, {"num_frames": 4}))
        for vlen in (1, 2, 7, 100):
            if name in ("singularity_fps", "ffmpeg_fps") and vlen < 8:
                continue  # shorter than a quarter second at 30 fps: no frame time (tested above)
            views = sampler(vlen, 30.0, np.random.default_rng(0))
            assert views and all(v.dtype == np.int64 and v.min() >= 0 and v.max() < vlen for v in views)


@pytest.mark.parametrize(
    "name, params, message",
    [
        ("nope", {"num_frames": 4}, "unknown frame sampler 'nope'"),
        (None, {"num_frames": 4}, "unknown frame sampler None"),
        ("fit_rand", {"num_frames": 0}, "num_frames must be an integer >= 1"),
        ("fit_rand", {"num_frames": "4"}, "num_frames must be an integer >= 1"),
        ("fit_rand", {"num_frames": True}, "num_frames must be an integer >= 1"),
        ("fit_rand", {"num_frame": 4}, "it takes: num_frames"),
        ("evl_train", {"num_frames": 4, "sampling_rate": 0}, "sampling_rate must be an integer >= 1"),
        ("singularity_fps", {"output_fps": -1.0}, "output_fps must be a positive number"),
        ("fixed_fps", {"num_frames": 4, "target_fps": 10.0, "start": "middle"}, "start must be 'random'"),
        ("fit_uniform", {"num_frames": 4, "fix_start": -1}, "fix_start must be an integer >= 0"),
    ],
)
def test_bad_parameters_are_config_errors(name, params, message):
    with pytest.raises(ConfigError, match=message):
        make_sampler(name, **params)


def test_bad_calls_are_typed_errors():
    sampler = make_sampler("fit_rand", num_frames=4)
    with pytest.raises(SamplingError, match="0 frames"):
        sampler(0, 30.0, np.random.default_rng(0))
    with pytest.raises(SamplingError, match="must be an integer"):
        sampler(4.5, 30.0, np.random.default_rng(0))
    with pytest.raises(SamplingError, match="draws at random"):
        sampler(10, 30.0)
    with pytest.raises(SamplingError, match="numpy.random.Generator or random.Random"):
        sampler(10, 30.0, np.random.RandomState(0))
    assert issubclass(SamplingError, VidlabError) and issubclass(SamplingError, ValueError)
