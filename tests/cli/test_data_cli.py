"""`vidlab data probe` and `vidlab data check`: output and exit codes."""

from __future__ import annotations

import json

import pytest

from vidlab.cli.main import main
from vidlab.testing.media import make_empty, make_image, make_text_file, make_video


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    make_video(root / "clip.mp4", num_frames=12, fps=6, size=(64, 48), audio=True)
    make_video(root / "turned.mp4", num_frames=5, fps=10, size=(64, 48), rotation=90)
    make_image(root / "still.png")
    make_text_file(root / "readme.mp4")
    (root / "nested").mkdir()
    make_empty(root / "nested" / "empty.mp4")
    return root


def test_probe_file_prints_its_streams(folder, capsys):
    assert main(["data", "probe", str(folder / "clip.mp4")]) == 0
    header, row = capsys.readouterr().out.strip().splitlines()
    assert header.split() == ["file", "codec", "size", "fps", "frames", "duration", "rotation", "audio"]
    assert row.split() == ["clip.mp4", "h264", "64x48", "6", "12", "2.00s", "0", "yes", "(16000", "Hz)"]


def test_probe_folder_lists_unreadable_files_and_exits_1(folder, capsys):
    assert main(["data", "probe", str(folder)]) == 1
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.split("\n\n")[0].splitlines()[1:]}
    assert set(rows) == {"clip.mp4", "turned.mp4", "still.png"}
    assert rows["turned.mp4"][2:7] == ["48x64", "10", "5", "0.50s", "90"]  # display size after rotation
    assert "unreadable (1 of 4):\n  readme.mp4: not a video" in out
    assert "empty.mp4" not in out  # not recursive


def test_probe_recursive_json(folder, capsys):
    assert main(["data", "probe", str(folder), "--recursive", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert {f["path"]: f["num_frames"] for f in report["files"]} == {"clip.mp4": 12, "turned.mp4": 5, "still.png": 1}
    assert {u["path"]: u["reason"].split(" (")[0] for u in report["unreadable"]} == {
        "nested/empty.mp4": "empty",
        "readme.mp4": "not a video",
    }


def test_probe_missing_path_is_a_one_line_error(tmp_path, capsys):
    assert main(["data", "probe", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"vidlab: error: {tmp_path / 'nothing'}: no such file or folder"


def test_check_reports_missing_and_undecodable_files(folder, tmp_path, capsys):
    listing = tmp_path / "list.txt"
    listing.write_text("clip.mp4 0\nturned.mp4 1\nclip.mp4 2\ngone.mp4 3\nreadme.mp4 4\n")
    assert main(["data", "check", str(listing), "--format", "evl_list", "--root", str(folder)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "5 records, 4 files: 2 exist and decode, 2 failed"
    assert out[1:] == [f"  {folder / 'gone.mp4'}: missing", f"  {folder / 'readme.mp4'}: not a video (no known media format)"]
    assert main(["data", "check", str(listing), "--format", "evl_list", "--root", str(folder), "--no-decode"]) == 1
    assert capsys.readouterr().out.splitlines()[0] == "5 records, 4 files: 3 exist, 1 failed"


def test_check_passes_with_reader_options(folder, tmp_path, capsys):
    ann = tmp_path / "anno.json"
    ann.write_text(json.dumps([{"image": "clip.mp4", "caption": "a"}, {"image": "still.png", "caption": "b"}]))
    assert main(["data", "check", str(ann), "-f", "singularity", "--root", str(folder), "-o", "join_captions=true"]) == 0
    assert capsys.readouterr().out.strip() == "2 records, 2 files: 2 exist and decode, 0 failed"


def test_check_bad_annotation_or_option_is_a_one_line_error(folder, tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("clip.mp4 zero\n")
    assert main(["data", "check", str(bad), "--format", "evl_list", "--root", str(folder)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"vidlab: error: {bad}:1: bad label 'zero': not an integer"
    assert main(["data", "check", str(bad), "--format", "evl_list", "-o", "nonsense"]) == 2
    assert "is not of the form key=value" in capsys.readouterr().err
