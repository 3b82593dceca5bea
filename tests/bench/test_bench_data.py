"""`vidlab bench data` smoke test on 2 tiny videos: the command runs and reports every method, and all
methods load the same frames. No timing assertions: speed is what the benchmark reports, not what tests check."""

import json

import pytest
import torch

from vidlab.bench.data import (
    MERGE_GAP_FRAMES,
    METHODS,
    NAIVE,
    SETUPS,
    VIDLAB,
    VIDLAB_DECODE,
    backend_method,
    clip_dataset,
    gop_spans,
    lower_bound_ffmpeg,
    lower_bound_frames,
    naive_frames,
    plan_clips,
)
from vidlab.cli.main import main
from vidlab.io import available_backends
from vidlab.io.ffmpeg import FFMPEG_ENV
from vidlab.io.index import frame_index
from vidlab.testing.media import make_video

FPS = 30.0
GOP = 10


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Two 2-s clips with audio: one with B-frames, one without, both with 10-frame GOPs."""
    folder = tmp_path_factory.mktemp("bench_videos")
    for name, bframes in (("a.mp4", 2), ("b.mp4", 0)):
        make_video(folder / name, num_frames=60, fps=FPS, size=(64, 48), gop=GOP, bframes=bframes, audio=True, audio_sample_rate=48000)
    return folder


def test_gop_spans_decode_from_each_needed_keyframe_to_the_last_wanted_frame(videos):
    index = frame_index(videos / "a.mp4")
    # GOPs start at 0, 10, 20, ...: frames 3 and 5 share GOP 0; 57 needs [50, 57], far enough from 5
    # to be worth its own process; 25 needs [20, 25], close enough to 5 to decode through.
    spans = gop_spans(index, [57, 3, 5], start_time_s=0.0)
    assert [(s.first, s.count) for s in spans] == [(0, 6), (50, 8)]
    assert 50 - 6 >= MERGE_GAP_FRAMES
    assert spans[0].start_s is None  # from the file start: no seek
    assert spans[1].start_s == pytest.approx(50 / FPS, abs=1e-5)
    spans = gop_spans(index, [25, 3, 5], start_time_s=0.0)
    assert [(s.first, s.count) for s in spans] == [(0, 26)]
    # Frames 9 and 10 touch (10 is a keyframe right after 9): one process decodes 0..12.
    assert [(s.first, s.count) for s in gop_spans(index, [9, 12], 0.0)] == [(0, 13)]


@pytest.mark.parametrize("setup_name", list(SETUPS))
def test_every_method_loads_the_same_frames(videos, setup_name, monkeypatch):
    monkeypatch.setenv(FFMPEG_ENV, lower_bound_ffmpeg())  # the ffmpeg the benchmark's lower bound runs
    setup = SETUPS[setup_name]
    video_files = sorted(videos.iterdir())
    plan = plan_clips(setup, video_files, num_clips=3, seed=3)
    vidlab_decode = clip_dataset(VIDLAB_DECODE, setup, plan, seed=3)
    vidlab, naive = clip_dataset(VIDLAB, setup, plan, seed=3), clip_dataset(NAIVE, setup, plan, seed=3)
    for i, clip in enumerate(plan):
        decoded = vidlab_decode[i]["video"].permute(0, 2, 3, 1)  # (T, C, H, W) -> (T, H, W, 3)
        assert decoded.shape == (len(clip.indices), 48, 64, 3)
        assert torch.equal(decoded, naive_frames(clip)), f"clip {i}: vidlab and naive frames differ"
        assert torch.equal(decoded, lower_bound_frames(clip)), f"clip {i}: vidlab and ffmpeg CLI frames differ"
        for backend in available_backends():
            on_backend = clip_dataset(backend_method(backend), setup, plan, seed=3)[i]["video"].permute(0, 2, 3, 1)
            assert torch.equal(on_backend, decoded), f"clip {i}: the {backend} backend gives other frames"
        # Same indices and the same transform seed: the transformed clips match too.
        transformed, naive_transformed = vidlab[i], naive[i]
        assert transformed["video"].dtype == torch.float32
        assert torch.equal(transformed["video"], naive_transformed["video"])
        if setup.audio_seconds:
            assert transformed["audio"].shape == naive_transformed["audio"].shape
            assert torch.allclose(transformed["audio"], naive_transformed["audio"], atol=1e-2)


def test_command_prints_the_table_with_every_method(videos, tmp_path, capsys):
    out, results = tmp_path / "report.md", tmp_path / "report.json"
    args = ["bench", "data", "--videos", str(videos), "--clips", "2", "--workers", "0", "--out", str(out), "--json", str(results)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.startswith("| ")]
    all_methods = (*METHODS, *map(backend_method, available_backends()))
    for setup in SETUPS.values():
        methods_shown = {cells[3].strip() for cells in (row.split("|") for row in rows) if cells[1].strip() == setup.title}
        assert methods_shown == set(all_methods), setup.name
    assert "includes process launch" in printed
    assert out.read_text() == printed

    report = json.loads(results.read_text())
    assert {(c["setup"], c["method"]) for c in report["cells"]} == {(s, m) for s in SETUPS for m in all_methods}
    for cell in report["cells"]:
        assert cell["clips"] == 2 and cell["clips_per_s"] > 0
        assert cell["peak_rss_mib"] >= report["baseline_rss_mib"] > 0
    # The EVL setup ran, so the targets are reported (met or missed, whatever this machine measures).
    assert len(report["targets"]) == 1 and "lower bound" in report["targets"][0]


def test_bad_input_is_one_clear_error_line(videos, tmp_path, capsys):
    assert main(["bench", "data", "--videos", str(tmp_path), "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no video files" in err[0]
    assert main(["bench", "data", "--videos", str(videos), "--setups", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown setup(s) nope" in err[0]


def test_start_methods_are_compared_interleaved_with_every_phase(videos, tmp_path, capsys):
    results = tmp_path / "report.json"
    base = ["bench", "data", "--videos", str(videos), "--setups", "evl", "--clips", "2", "--workers", "1", "--backends"]
    assert main([*base, "--start-methods", "forkserver", "spawn", "--start-repeats", "2", "--json", str(results)]) == 0
    printed = capsys.readouterr().out
    assert "### Worker start methods" in printed and "| start method | first batch | epoch 1 | epoch 2 | restart |" in printed
    runs = json.loads(results.read_text())["start_methods"]
    assert [r["method"] for r in runs] == ["forkserver", "spawn", "forkserver", "spawn"]  # interleaved
    assert all(set(r["seconds"]) == {"first batch", "epoch 1", "epoch 2", "restart"} for r in runs)
    assert all(0 < r["seconds"]["first batch"] <= r["seconds"]["epoch 1"] for r in runs)
    assert main([*base, "--start-methods", "thread"]) == 2
    assert "unknown start method(s) thread" in capsys.readouterr().err
