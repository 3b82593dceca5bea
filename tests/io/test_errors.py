"""Every bad file raises `VideoReadError` with the right reason from every entry point."""

from __future__ import annotations

import pickle

import pytest

from vidlab.errors import VidlabError
from vidlab.io import (
    Reason,
    VideoReadError,
    cli_read_frames,
    probe,
    read_audio,
    read_frames,
    read_frames_at,
)
from vidlab.testing.media import make_empty, make_text_file

ENTRY_POINTS = {
    "probe": probe,
    "read_frames": lambda path: read_frames(path, [0]),
    "read_frames_at": lambda path: read_frames_at(path, [0.0]),
    "read_audio": read_audio,
}


def _reason(call, path) -> Reason:
    with pytest.raises(VideoReadError) as excinfo:
        call(path)
    assert excinfo.value.path == str(path)
    return excinfo.value.reason


@pytest.fixture(scope="module")
def bad_files(media, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    return {
        Reason.MISSING: folder / "missing.mp4",
        Reason.EMPTY: make_empty(folder / "empty.mp4"),
        Reason.NOT_A_VIDEO: make_text_file(folder / "notes.mp4"),
        "text.txt": make_text_file(folder / "notes.txt"),
        # FFmpeg opens .nfo/.ans/.asc text as an "ANSI art" video stream.
        "text.nfo": make_text_file(folder / "notes.nfo"),
        "directory": folder,
        Reason.NO_VIDEO_STREAM: media.audio_only("errors_audio_only.m4a"),
    }


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("reason", [Reason.MISSING, Reason.EMPTY, Reason.NOT_A_VIDEO])
def test_unusable_files(bad_files, entry, reason):
    assert _reason(ENTRY_POINTS[entry], bad_files[reason]) is reason


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_text_and_directories_are_not_videos(bad_files, entry):
    assert _reason(ENTRY_POINTS[entry], bad_files["text.txt"]) is Reason.NOT_A_VIDEO
    assert _reason(ENTRY_POINTS[entry], bad_files["text.nfo"]) is Reason.NOT_A_VIDEO
    assert _reason(ENTRY_POINTS[entry], bad_files["directory"]) is Reason.NOT_A_VIDEO


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_a_nul_byte_in_the_path_is_a_missing_file(bad_files, entry):
    """No file can have such a name; the OS calls would raise a bare ValueError that no bad-sample policy catches."""
    path = f"{bad_files['directory']}/videos/000000.mp4\0"
    assert _reason(ENTRY_POINTS[entry], path) is Reason.MISSING
    with pytest.raises(VideoReadError, match=r"000000.mp4\\x00: missing \(NUL byte in the path\)$"):
        ENTRY_POINTS[entry](path)


@pytest.mark.parametrize("entry", ["probe", "read_frames", "read_frames_at"])
def test_audio_only_file_has_no_video_stream(bad_files, entry):
    assert _reason(ENTRY_POINTS[entry], bad_files[Reason.NO_VIDEO_STREAM]) is Reason.NO_VIDEO_STREAM


def test_garbage_frame_data_is_corrupt(media):
    path = media.corrupt("errors_garbage.mp4", num_frames=12)
    assert probe(path).num_frames == 12  # the header is intact
    for read in (
        lambda: read_frames(path, [0]),
        lambda: read_frames(path, [11, 3]),
        lambda: read_frames_at(path, [0.2]),
    ):
        with pytest.raises(VideoReadError) as excinfo:
            read()
        assert excinfo.value.reason is Reason.CORRUPT


def test_header_without_its_index_is_corrupt(media, tmp_path):
    # The moov box (frame table) is written last by default: cutting it off leaves a known
    # signature with nothing playable, which is damage rather than "not a video".
    whole = media.video("errors_moov_last.mp4", num_frames=12).read_bytes()
    path = tmp_path / "no_moov.mp4"
    path.write_bytes(whole[: len(whole) // 2])
    assert _reason(probe, path) is Reason.CORRUPT


def test_out_of_range_requests(media):
    path = media.video("errors_range.mp4", num_frames=10, fps=10)
    for request in ([10], [0, -1], [3, 99]):
        with pytest.raises(VideoReadError) as excinfo:
            read_frames(path, request)
        assert excinfo.value.reason is Reason.OUT_OF_RANGE
    for times in ([1.5], [-0.1], [float("nan")]):
        with pytest.raises(VideoReadError) as excinfo:
            read_frames_at(path, times)
        assert excinfo.value.reason is Reason.OUT_OF_RANGE
    with pytest.raises(VideoReadError) as excinfo:
        read_frames(path, [[1, 2]])
    assert excinfo.value.reason is Reason.OUT_OF_RANGE


@pytest.mark.parametrize("name", ["errors_truncated.mp4", "errors_truncated.mkv"])
def test_truncated_file_serves_the_frames_that_survive(media, name):
    original = media.video(f"{name}.whole{name[-4:]}", num_frames=60, gop=10, bframes=2, faststart=True)
    path = media.truncated(name, num_frames=60, gop=10, bframes=2, keep_fraction=0.5)
    reference = cli_read_frames(original)
    early = [12, 0, 5]
    assert (read_frames(path, early).int() - reference[early].int()).abs().max() <= 2
    with pytest.raises(VideoReadError) as excinfo:
        read_frames(path, [2, 55])
    assert excinfo.value.reason in (Reason.CORRUPT, Reason.OUT_OF_RANGE)
    assert "55" in excinfo.value.detail


def test_errors_are_vidlab_errors_and_survive_pickling(bad_files):
    with pytest.raises(VidlabError) as excinfo:
        read_frames(bad_files[Reason.EMPTY], [0])
    copy = pickle.loads(pickle.dumps(excinfo.value))
    assert (type(copy), copy.path, copy.reason, str(copy)) == (
        VideoReadError,
        excinfo.value.path,
        Reason.EMPTY,
        str(excinfo.value),
    )
