"""Annotation readers: each format's records, and a one-line `AnnotationError` for each kind of bad file."""

from __future__ import annotations

import inspect
import json
import os
import pickle
import zlib
from pathlib import Path

import numpy as np
import pytest

from vidlab.data.formats import FILE_OPTIONS, READERS, MediaRecord, read_annotations, read_source
from vidlab.errors import AnnotationError, ConfigError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write_json(path: Path, data) -> Path:
    return write(path, json.dumps(data))


# --------------------------------------------------------------------------- good files


def test_webvid_csv_builds_page_dir_paths_and_cuts_captions(tmp_path):
    ann = write(
        tmp_path / "results_2M_train.csv", 'videoid,name,page_dir\n31353427,"a dog, running",016401_016450\n7,' + "x" * 400 + ",p\n"
    )
    records = read_annotations("webvid", ann, root=tmp_path / "WebVid")
    assert records[0] == MediaRecord(str(tmp_path / "WebVid/videos/016401_016450/31353427.mp4"), "video", ("a dog, running",))
    assert records[1].captions == ("x" * 350,)


def test_caption_csv_with_a_path_column_infers_images(tmp_path):
    ann = write(tmp_path / "cc.csv", "image,caption\nimgs/a.jpg,a cat\nclips/b.webm,a bird\n")
    records = read_annotations("csv", ann, path_column="image")
    assert [(r.path, r.kind, r.captions) for r in records] == [
        (str(tmp_path / "imgs/a.jpg"), "image", ("a cat",)),
        (str(tmp_path / "clips/b.webm"), "video", ("a bird",)),
    ]


def test_cc3m_file_name_is_the_crc32_of_the_thumbnail_url(tmp_path):
    url = "http://example.com/pic.jpg"
    ann = write(tmp_path / "Train_GCC.csv", f"caption,thumbnailUrl\nsome caption,{url}\n")
    (record,) = read_annotations("cc3m", ann, root=tmp_path)
    assert record.path == str(tmp_path / "training" / str(zlib.crc32(url.encode()) & 0xFFFFFFFF))
    assert record.kind == "image"


def test_howto100m_captions_carry_their_time_window(tmp_path):
    ann = write(tmp_path / "caption.csv", "video_id,start,end,text\nabc,1.5,4.0,cut the onion\n")
    (record,) = read_annotations("howto100m", ann, root=tmp_path / "videos")
    assert (record.path, record.start, record.end, record.captions) == (str(tmp_path / "videos/abc.mp4"), 1.5, 4.0, ("cut the onion",))


@pytest.fixture
def msrvtt(tmp_path):
    ann = write_json(
        tmp_path / "annotation/MSR_VTT.json",
        {"annotations": [{"image_id": f"video{v}", "caption": f"v{v} c{c}", "id": 10 * v + c} for v in range(3) for c in range(3)]},
    )
    split = write(tmp_path / "structured-symlinks/val_list_jsfusion.txt", "video2\nvideo0\n")
    return ann, split


def test_msrvtt_groups_captions_per_video_in_split_list_order(tmp_path, msrvtt):
    ann, split = msrvtt
    records = read_annotations("msrvtt", ann, root=tmp_path, split_list=split)
    assert [r.extra["video_id"] for r in records] == ["video2", "video0"]
    assert records[0].captions == ("v2 c0", "v2 c1", "v2 c2")
    assert records[0].path == str(tmp_path / "videos/all/video2.mp4")


def test_msrvtt_fixed_test_caption_from_fit_pickle(tmp_path, msrvtt):
    ann, split = msrvtt
    index = tmp_path / "jsfusion_val_caption_idx.pkl"
    index.write_bytes(pickle.dumps({"video0": np.int64(1), "video2": np.int64(2)}))  # numpy ints, as FiT's file
    records = read_annotations("msrvtt", ann, root=tmp_path, split_list=split, fixed_captions=index)
    assert [r.captions for r in records] == [("v2 c2",), ("v0 c1",)]


def test_msrvtt_caption_index_pickle_cannot_run_code(tmp_path, msrvtt):
    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    ann, split = msrvtt
    index = tmp_path / "evil.pkl"
    index.write_bytes(pickle.dumps({"video0": Exploit()}))
    with pytest.raises(AnnotationError, match="refusing to load"):
        read_annotations("msrvtt", ann, root=tmp_path, split_list=split, fixed_captions=index)


def test_singularity_caption_qa_and_multiple_choice_entries(tmp_path):
    ann = write_json(
        tmp_path / "anno.json",
        [
            {"image": "coco/1.jpg", "caption": "a plate"},
            {"video": "v/1.mp4", "caption": ["first", "second"], "duration": 12.5},
            {"video": "v/2.mp4", "question": "what is it?", "answer": "dog", "question_id": 7},
            {"video": "v/3.mp4", "caption": ["a", "b", "c", "d", "e"], "answer": 3},
        ],
    )
    image, video, qa, mc = read_annotations("singularity", ann, root=tmp_path)
    assert (image.kind, image.captions) == ("image", ("a plate",))
    assert (video.kind, video.captions, video.extra) == ("video", ("first", "second"), {"duration": 12.5})
    assert qa.extra == {"question": "what is it?", "answers": ["dog"], "question_id": 7}
    assert (mc.captions, mc.label) == (("a", "b", "c", "d", "e"), 3)


def test_singularity_video_flag_and_paragraph_joining(tmp_path):
    ann = write_json(tmp_path / "didemo.json", [{"image": "vids/x.mp4.jpg", "caption": ["one.", "two."]}])
    (record,) = read_annotations("singularity", ann, kind="video", join_captions=True)
    assert (record.kind, record.captions) == ("video", ("one. two.",))


def test_evl_list_splits_label_off_the_last_space(tmp_path):
    ann = write(tmp_path / "k400_train.txt", "abseiling/a b.mp4 0\nzumba/c.mp4 399\n")
    records = read_annotations("evl_list", ann, root=tmp_path / "k400")
    assert [(r.path, r.label) for r in records] == [
        (str(tmp_path / "k400/abseiling/a b.mp4"), 0),
        (str(tmp_path / "k400/zumba/c.mp4"), 399),
    ]
    assert read_annotations("evl", ann, root=tmp_path / "k400") == records  # the name EVL configs (and data check) use


def test_class_folders_label_sorted_class_names(tmp_path):
    for cls, names in {"walk": ["b.avi", "a.avi"], "clap": ["c.avi"]}.items():
        for name in names:
            write(tmp_path / "train" / cls / name, "x")
    records = read_annotations("class_folders", tmp_path, split="train")
    assert [(Path(r.path).name, r.label, r.extra["class_name"]) for r in records] == [
        ("c.avi", 0, "clap"),
        ("a.avi", 1, "walk"),
        ("b.avi", 1, "walk"),
    ]


def test_ucf101_train_and_test_lists_use_class_ind(tmp_path):
    write(tmp_path / "ucfTrainTestlist/classInd.txt", "1 ApplyEyeMakeup\n2 Archery\n")
    train = write(tmp_path / "ucfTrainTestlist/trainlist01.txt", "Archery/v_Archery_g08_c01.avi 2\n")
    test = write(tmp_path / "ucfTrainTestlist/testlist01.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\n")
    (tr,) = read_annotations("ucf101", train, root=tmp_path / "UCF-101")
    (te,) = read_annotations("ucf101", test, root=tmp_path / "UCF-101")
    assert (tr.path, tr.label) == (str(tmp_path / "UCF-101/Archery/v_Archery_g08_c01.avi"), 1)
    assert te.label == 0


def test_hmdb51_split_tags_select_train_or_test(tmp_path):
    splits = tmp_path / "testTrainMulti_7030_splits"
    write(splits / "wave_test_split1.txt", "w1.avi 1 \nw2.avi 2 \nw3.avi 0 \n")
    write(splits / "clap_test_split1.txt", "c1.avi 2 \n")
    write(splits / "clap_test_split2.txt", "c1.avi 1 \n")
    train = read_annotations("hmdb51", splits, root=tmp_path / "hmdb")
    test = read_annotations("hmdb51", splits, root=tmp_path / "hmdb", subset="test")
    assert [(r.path, r.label) for r in train] == [(str(tmp_path / "hmdb/wave/w1.avi"), 1)]
    assert [(Path(r.path).name, r.label) for r in test] == [("c1.avi", 0), ("w2.avi", 1)]


def test_a_configured_source_reads_every_relative_path_under_the_data_root(tmp_path, msrvtt, monkeypatch):
    """FiT's official layout: annotations, media root, split list and caption index all under data.root."""
    ann, split = msrvtt
    index = tmp_path / "structured-symlinks/jsfusion_val_caption_idx.pkl"
    index.write_bytes(pickle.dumps({"video0": 1, "video2": 2}))
    (tmp_path / "media").mkdir()
    monkeypatch.chdir(tmp_path / "media")  # relative paths must not follow the working directory
    records = read_source(
        tmp_path,
        "annotation/MSR_VTT.json",
        "msrvtt",
        "media",
        split_list="structured-symlinks/val_list_jsfusion.txt",
        fixed_captions=str(index),  # an absolute path stays as it is
    )
    assert [(r.path, r.captions) for r in records] == [
        (str(tmp_path / "media/videos/all/video2.mp4"), ("v2 c2",)),
        (str(tmp_path / "media/videos/all/video0.mp4"), ("v0 c1",)),
    ]
    assert read_source(tmp_path, ann, "msrvtt")[0].path == str(tmp_path / "videos/all/video0.mp4")  # media default: the root


@pytest.mark.parametrize(
    ("media_root", "options", "message"),
    [
        ("nope", {}, r"data.test.media_root: .*nope: file not found \(relative paths are under data.root"),
        ("annotation/MSR_VTT.json", {}, r"data.test.media_root: .*MSR_VTT.json is not a folder"),
        (None, {"split_list": "lists/val.txt"}, r"data.test.options.split_list: .*lists/val.txt: file not found"),
    ],
)
def test_a_configured_source_names_the_setting_whose_path_is_missing(tmp_path, msrvtt, media_root, options, message):
    with pytest.raises(ConfigError, match=message):
        read_source(tmp_path, "annotation/MSR_VTT.json", "msrvtt", media_root, where="data.test", **options)
    with pytest.raises(ConfigError, match=r"data.test.annotations: .*other.json: file not found"):
        read_source(tmp_path, "annotation/other.json", "msrvtt", where="data.test")


def test_every_reader_option_that_names_a_file_is_resolved_against_the_root():
    """A new reader option typed as a path must join FILE_OPTIONS, or configs would read it from the working directory."""
    path_options = {
        name
        for reader in READERS.values()
        for name, param in inspect.signature(reader).parameters.items()
        if name not in ("path", "root") and "PathLike" in str(param.annotation)
    }
    assert path_options == FILE_OPTIONS


# --------------------------------------------------------------------------- bad files

BAD_FILES = [
    # (format, file name, content, options, where, reason fragment)
    ("webvid", "w.csv", "videoid,page_dir\n1,p\n", {}, 1, "missing column(s) ['name']"),
    ("webvid", "w.csv", "videoid,name,page_dir\n1,ok,p\n2,  ,p\n", {}, 3, "empty caption"),
    ("webvid", "w.csv", "videoid,name,page_dir\n1,ok\n", {}, 2, "expected 3 fields"),
    ("webvid", "w.csv", "videoid,name,page_dir\n,ok,p\n", {}, 2, "empty videoid"),
    ("howto100m", "h.csv", "video_id,start,end,text\na,x,2,t\n", {}, 2, "bad start 'x': not a number"),
    ("howto100m", "h.csv", "video_id,start,end,text\na,3,2,t\n", {}, 2, "empty time window"),
    ("msrvtt", "m.json", '{"videos": []}', {}, None, "'annotations' list"),
    ("msrvtt", "m.json", '{"annotations": [{"image_id": "video1"}]}', {}, "annotations[0]", "missing key 'caption'"),
    (
        "msrvtt",
        "m.json",
        '{"annotations": [{"image_id": "video1",\n "caption": 5}]}',
        {},
        "annotations[0]",
        "caption must be a string, got int",
    ),
    ("singularity", "s.json", '{"image": "a.jpg"}', {}, None, "expected a JSON list of entries, got dict"),
    ("singularity", "s.json", '[{"image": "a.jpg", "caption": "x"},\n {"image": "b.jpg", "caption": "x",}]', {}, "line 2", "invalid JSON"),
    ("singularity", "s.json", '[{"caption": "x"}]', {}, "entry 0", "missing key 'video' or 'image'"),
    ("singularity", "s.json", '[{"image": "a.jpg", "caption": "x"}, {"image": "b.jpg", "caption": ""}]', {}, "entry 1", "empty caption"),
    ("singularity", "s.json", '[{"image": "a.jpg", "caption": []}]', {}, "entry 0", "empty caption list"),
    (
        "singularity",
        "s.json",
        '[{"video": "a.mp4", "caption": ["a", "b"], "answer": 2}]',
        {},
        "entry 0",
        "answer 2 is not an option index 0..1",
    ),
    ("singularity", "s.json", '[{"video": "a.mp4", "question": "why?"}]', {}, "entry 0", "QA entry without 'answer'"),
    ("singularity", "s.json", '["a.mp4"]', {}, "entry 0", "expected an object, got str"),
    ("evl_list", "l.txt", "a.mp4 1\nb.mp4\n", {}, 2, "expected '<path> <label>'"),
    ("evl_list", "l.txt", "a.mp4 one\n", {}, 1, "bad label 'one': not an integer"),
    ("evl_list", "l.txt", "a.mp4 -1\n", {}, 1, "bad label '-1'"),
    ("evl_list", "l.txt", "\n\n", {}, None, "no entries"),
    # a NUL byte in a media path: named at the line, not a ValueError at the first OS call
    ("evl", "l.txt", "videos/000000.mp4\x00 2\n", {}, 1, r"NUL byte in the media path 'videos/000000.mp4\x00'"),
    ("csv", "c.csv", "path,caption\na.mp4,x\nb\x00.mp4,y\n", {"path_column": "path"}, 3, "NUL byte in the media path"),
    ("singularity", "s.json", '[{"video": "a\\u0000.mp4", "caption": "x"}]', {}, "entry 0", "NUL byte in the media path"),
    # JSON Python cannot or should not read
    ("singularity", "s.json", "[" * 1000 + "]" * 1000, {}, None, "invalid JSON: nested too deeply"),
    ("singularity", "s.json", '[{"video": "a.mp4", "caption": "x", "n": ' + "1" * 5000 + "}]", {}, None, "an integer of 5000 digits"),
    ("singularity", "s.json", '[{"video": "a.mp4", "caption": "x", "d": NaN}]', {}, None, "NaN is not a JSON number"),
    ("singularity", "s.json", '[{"video": "a.mp4", "caption": "x", "caption": "y"}]', {}, None, "duplicate key 'caption'"),
    ("msrvtt", "m.json", '{"annotations": [], "annotations": [{"image_id": "v", "caption": "x"}]}', {}, None, "duplicate key 'annotations'"),
    # labels: plain decimal class indices that fit an int32
    ("evl_list", "l.txt", "a.mp4 4294967296\n", {}, 1, "bad label '4294967296': must be in 0..2147483647"),
    ("evl_list", "l.txt", "a.mp4 1e26\n", {}, 1, "bad label '1e26': not an integer"),
    ("evl_list", "l.txt", "a.mp4 1_000\n", {}, 1, "bad label '1_000': not an integer"),
    ("evl_list", "l.txt", "a.mp4 \u0663\n", {}, 1, "not an integer"),
    ("evl_list", "l.txt", "a.mp4 " + "9" * 5000 + "\n", {}, 1, "(5000 characters)"),
    # CSV: a duplicated column (the last would win), a quote that swallows the following rows
    ("csv", "c.csv", "path,caption,caption\na.mp4,x,y\n", {"path_column": "path"}, 1, "duplicate column(s) ['caption']"),
    ("csv", "c.csv", 'path,caption\na.mp4,"x\nb.mp4,y\nc.mp4,z\n', {"path_column": "path"}, 2, "unterminated quote: bad CSV at line 4"),
    ("csv", "c.csv", 'path,caption\na.mp4,"x\nb.mp4,y\nc.mp4,z"\n', {"path_column": "path"}, 2, "unterminated quote: a field runs on to line 4"),
]


@pytest.mark.parametrize("fmt, name, content, options, where, reason", BAD_FILES)
def test_bad_annotation_names_file_place_and_problem(tmp_path, fmt, name, content, options, where, reason):
    ann = write(tmp_path / name, content)
    with pytest.raises(AnnotationError) as info:
        read_annotations(fmt, ann, **options)
    assert (info.value.path, info.value.where) == (str(ann), where)
    assert reason in info.value.reason
    assert "\n" not in str(info.value) and str(info.value).startswith(str(ann))


def test_a_quoted_caption_may_span_lines(tmp_path):
    """Legal CSV: only a line that looks like a swallowed row makes a multi-line field an unterminated quote."""
    ann = write(tmp_path / "c.csv", 'path,caption\na.mp4,"two\nlines"\nb.mp4,y\n')
    assert [r.captions for r in read_annotations("csv", ann, path_column="path")] == [("two\nlines",), ("y",)]


def test_msrvtt_split_list_naming_an_unknown_video(tmp_path, msrvtt):
    ann, _ = msrvtt
    split = write(tmp_path / "list.txt", "video0\nvideo9\n")
    with pytest.raises(AnnotationError) as info:
        read_annotations("msrvtt", ann, split_list=split)
    assert (info.value.path, info.value.where) == (str(split), 2)


def test_msrvtt_fixed_caption_index_out_of_range(tmp_path, msrvtt):
    ann, split = msrvtt
    index = write_json(tmp_path / "idx.json", {"video0": 0, "video2": 3})
    with pytest.raises(AnnotationError, match="caption index 3 outside 0..2") as info:
        read_annotations("msrvtt", ann, split_list=split, fixed_captions=index)
    assert info.value.where == "video2"


def test_ucf101_label_disagreeing_with_class_ind(tmp_path):
    write(tmp_path / "classInd.txt", "1 ApplyEyeMakeup\n2 Archery\n")
    train = write(tmp_path / "trainlist01.txt", "Archery/v_Archery_g08_c01.avi 1\n")
    with pytest.raises(AnnotationError, match="bad label '1': Archery is 2") as info:
        read_annotations("ucf101", train)
    assert info.value.where == 1


def test_hmdb51_bad_tag(tmp_path):
    bad = write(tmp_path / "wave_test_split1.txt", "w1.avi 1\nw2.avi 3\n")
    with pytest.raises(AnnotationError) as info:
        read_annotations("hmdb51", tmp_path)
    assert (info.value.path, info.value.where) == (str(bad), 2)


def test_missing_and_non_utf8_files(tmp_path):
    with pytest.raises(AnnotationError, match="file not found"):
        read_annotations("evl_list", tmp_path / "nope.txt")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9.mp4 1\n".encode("latin-1"))
    with pytest.raises(AnnotationError, match="not UTF-8"):
        read_annotations("evl_list", latin)


def test_unknown_format_and_option_are_config_errors(tmp_path):
    ann = write(tmp_path / "l.txt", "a.mp4 1\n")
    with pytest.raises(ConfigError, match="unknown annotation format 'kinetics'.*evl_list"):
        read_annotations("kinetics", ann)
    with pytest.raises(ConfigError, match=r"does not take option\(s\) \['split_list'\]"):
        read_annotations("evl_list", ann, split_list="x")


def test_a_csv_delimiter_of_more_than_one_character_is_a_config_error(tmp_path):
    """`-o delimiter=\\t` on a command line is a backslash and a t: say how to write a tab."""
    ann = write(tmp_path / "cc.tsv", "caption\tthumbnailUrl\na cat\thttp://x/1.jpg\n")
    assert len(read_annotations("cc3m", ann, delimiter="\t")) == 1
    with pytest.raises(ConfigError, match=r"delimiter must be one character, got '\\\\t' \(a tab is"):
        read_annotations("cc3m", ann, delimiter="\\t")
    with pytest.raises(ConfigError, match="delimiter must be one character, got ''"):
        read_annotations("webvid", ann, delimiter="")
