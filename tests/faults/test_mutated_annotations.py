"""Every annotation reader fed seeded mutations of small valid files: each one loads (with sane records) or
raises a one-line `VidlabError`; any other exception is a traceback a user would see from `vidlab data check`.

Issue 27 found 58 tracebacks in 1,450 mutated files. The mutations: byte and bit flips, truncation, NUL bytes,
deleted / duplicated / swapped lines, odd line breaks, BOMs, other encodings, binary garbage, an empty file,
huge or non-integer numbers, deep nesting, wrong JSON types, duplicated JSON keys and CSV columns, unterminated
CSV quotes, and for the caption-index pickle wrongly typed contents.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import pickle
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from vidlab.data.formats import READERS, MediaRecord, read_annotations
from vidlab.errors import VidlabError

pytestmark = pytest.mark.faults

SEED = 27
ROUNDS = 6  # draws of each random operator per target
MIN_MUTATIONS = 1000

Mutation = Callable[[random.Random, bytes], bytes | None]  # None: the operator does not apply to this file

# --------------------------------------------------------------------------- the valid files

CSV_FILES = {
    "csv": b'path,caption\nvideos/a.mp4,a dog runs\nimages/b.jpg,"a cat, sleeping"\nvideos/c.webm,a bird flies\n',
    "webvid": b'videoid,name,page_dir\n31353427,"a dog, running",016401_016450\n7,a red car,016401_016450\n9,sunset,p2\n',
    "howto100m": b"video_id,start,end,text\nabc,1.5,4.0,cut the onion\nabc,4.0,6.5,fry it\nxyz,0,2,stir\n",
    "cc3m": b"caption,thumbnailUrl\nsome caption,http://example.com/a.jpg\nanother one,http://example.com/b.jpg\n",
}
MSRVTT = {"annotations": [{"image_id": f"video{v}", "caption": f"clip {v} caption {c}", "id": 2 * v + c} for v in range(3) for c in range(2)]}
SINGULARITY = [
    {"image": "coco/1.jpg", "caption": "a plate of food"},
    {"video": "v/1.mp4", "caption": ["first", "second"], "duration": 12.5},
    {"video": "v/2.mp4", "question": "what is it?", "answer": "dog", "question_id": 7},
    {"video": "v/3.mp4", "caption": ["a", "b", "c"], "answer": 2},
    {"caption": "a label", "image": ["s/1.webm", "s/2.webm"]},
]
CLASS_IND = b"1 ApplyEyeMakeup\n2 Archery\n3 Biking\n"


@dataclass
class Target:
    """One reader with its valid files (relative path -> bytes); `mutated` is the file the mutations replace."""

    name: str
    fmt: str
    files: dict[str, bytes]
    mutated: str
    annotation: str  # what read_annotations gets: a file or a folder
    options: dict[str, str] = field(default_factory=dict)  # option -> a file of `files`
    kind: str = "text"  # text | csv | json | pickle: which structural mutations apply


def _targets() -> list[Target]:
    msrvtt_files = {
        "MSR_VTT.json": json.dumps(MSRVTT).encode(),
        "val_list.txt": b"video2\nvideo0\n",
        "fixed.json": b'{"video0": 1, "video2": 0}',
        "fixed.pkl": pickle.dumps({"video0": np.int64(1), "video2": np.int64(0)}),
    }
    msrvtt = dict(split_list="val_list.txt", fixed_captions="fixed.json")
    ucf = {"classInd.txt": CLASS_IND, "trainlist01.txt": b"Archery/v_Archery_g08_c01.avi 2\nBiking/v_Biking_g01_c02.avi 3\n"}
    hmdb = {"splits/wave_test_split1.txt": b"w1.avi 1 \nw2.avi 2 \nw3.avi 0 \n", "splits/clap_test_split1.txt": b"c1.avi 1 \nc2.avi 1 \n"}
    evl = b"abseiling/a b.mp4 0\nzumba/c.mp4 399\nyoga/d.mp4 7\n"
    return [
        *(Target(fmt, fmt, {"ann.csv": text}, "ann.csv", "ann.csv", {"path_column": "path"} if fmt == "csv" else {}, "csv")
          for fmt, text in CSV_FILES.items()),
        Target("msrvtt", "msrvtt", msrvtt_files, "MSR_VTT.json", "MSR_VTT.json", msrvtt, "json"),
        Target("msrvtt-split-list", "msrvtt", msrvtt_files, "val_list.txt", "MSR_VTT.json", msrvtt),
        Target("msrvtt-fixed-json", "msrvtt", msrvtt_files, "fixed.json", "MSR_VTT.json", msrvtt, "json"),
        Target("msrvtt-fixed-pickle", "msrvtt", msrvtt_files, "fixed.pkl", "MSR_VTT.json", {**msrvtt, "fixed_captions": "fixed.pkl"}, "pickle"),
        Target("singularity", "singularity", {"anno.json": json.dumps(SINGULARITY, indent=1).encode()}, "anno.json", "anno.json", {}, "json"),
        Target("evl_list", "evl_list", {"list.txt": evl}, "list.txt", "list.txt"),
        Target("evl", "evl", {"list.txt": b"k400/x.mp4 1\nk400/y.jpg 0\n"}, "list.txt", "list.txt"),
        Target("ucf101", "ucf101", ucf, "trainlist01.txt", "trainlist01.txt"),
        Target("ucf101-class-index", "ucf101", ucf, "classInd.txt", "trainlist01.txt"),
        Target("hmdb51", "hmdb51", hmdb, "splits/wave_test_split1.txt", "splits"),
    ]


# --------------------------------------------------------------------------- mutations of bytes and lines


def _flip(rng: random.Random, data: bytes) -> bytes | None:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        out[rng.randrange(len(out))] = rng.randrange(256)
    return bytes(out)


def _bit(rng: random.Random, data: bytes) -> bytes | None:
    out = bytearray(data)
    out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def _truncate(rng: random.Random, data: bytes) -> bytes | None:
    return data[: rng.randrange(1, len(data))]


def _nul(rng: random.Random, data: bytes) -> bytes | None:
    at = rng.randrange(len(data))
    return data[:at] + b"\0" + data[at:]


def _lines(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


def _delete_line(rng: random.Random, data: bytes) -> bytes | None:
    lines = _lines(data)
    del lines[rng.randrange(len(lines))]
    return b"".join(lines)


def _duplicate_line(rng: random.Random, data: bytes) -> bytes | None:
    lines = _lines(data)
    i = rng.randrange(len(lines))
    lines.insert(rng.randrange(len(lines) + 1), lines[i])
    return b"".join(lines)


def _swap_lines(rng: random.Random, data: bytes) -> bytes | None:
    lines = _lines(data)
    rng.shuffle(lines)
    return b"".join(lines)


def _line_breaks(rng: random.Random, data: bytes) -> bytes | None:
    breaks = ["\r\n", "\r", "\u2028", "\x85", "\x0b", "\x0c", "\n\n\n", "\x1e"]
    return data.decode().replace("\n", rng.choice(breaks)).encode()


def _garbage(rng: random.Random, data: bytes) -> bytes | None:
    return rng.randbytes(rng.randint(1, 600))


def _bom(rng: random.Random, data: bytes) -> bytes | None:
    return rng.choice([b"\xef\xbb\xbf", b"\xef\xbb\xbf\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff"]) + data


def _encoding(rng: random.Random, data: bytes) -> bytes | None:
    text = data.decode()
    at = rng.randrange(len(text))
    text = text[:at] + rng.choice(["é", "ü", "€", "日本"]) + text[at:]
    codec = rng.choice(["utf-16", "utf-16-le", "utf-32", "latin-1", "cp1252", "shift_jis", "utf-8-sig"])
    return text.encode(codec, errors="replace")


def _quote(rng: random.Random, data: bytes) -> bytes | None:
    at = rng.randrange(len(data))
    return data[:at] + rng.choice([b'"', b"'", b'"""']) + data[at:]


def _spaces(rng: random.Random, data: bytes) -> bytes | None:
    at = rng.randrange(len(data))
    return data[:at] + rng.choice([b" ", b"\t", b"  ", b"\xc2\xa0", b"\xe2\x80\x8b"]) + data[at:]


NUMBERS = ["9" * 5000, "-9" + "9" * 4400, "4294967296", "2147483648", "1e26", "-1", "1.5", "99999999999999999999", "NaN",
           "Infinity", "-0", "0x10", "1_000", "\u0663", "+3", "1e400"]


def _number(number: str, rng: random.Random, data: bytes) -> bytes | None:
    """`number` in place of a number of the file (a label, an index, an id, a time)."""
    runs = list(re.finditer(rb"\d+(?:\.\d+)?", data))
    if not runs:
        return None
    run = rng.choice(runs)
    return data[: run.start()] + number.encode() + data[run.end() :]


def _long_line(rng: random.Random, data: bytes) -> bytes | None:
    lines = _lines(data)
    lines.insert(rng.randrange(len(lines) + 1), b"x" * rng.choice([1000, 100_000]) + b" 1\n")
    return b"".join(lines)


BYTE_MUTATIONS: dict[str, Mutation] = {
    "flip": _flip, "bit": _bit, "truncate": _truncate, "nul": _nul, "delete-line": _delete_line,
    "duplicate-line": _duplicate_line, "swap-lines": _swap_lines, "line-breaks": _line_breaks, "garbage": _garbage,
    "bom": _bom, "encoding": _encoding, "quote": _quote, "spaces": _spaces, "long-line": _long_line,
    **{f"number{i}": functools.partial(_number, number) for i, number in enumerate(NUMBERS)},
}


# --------------------------------------------------------------------------- structural mutations


def _nodes(value: object, path: tuple = ()) -> list[tuple]:
    """Paths (tuples of keys / indices) of every node under `value`, the root included."""
    found = [path]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _nodes(child, (*path, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            found += _nodes(child, (*path, i))
    return found


def _replace(value: object, path: tuple, new: object) -> object:
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)  # type: ignore[arg-type]
    copy[path[0]] = _replace(copy[path[0]], path[1:], new)  # type: ignore[index]
    return copy


WRONG_VALUES = [None, 0, -1, 1.5, 2**32, 1e26, True, "", " ", "x", [], {}, [[]], {"a": 1}, ["x", 1], "\0", "a\nb"]


def _wrong_type(rng: random.Random, data: bytes) -> bytes | None:
    doc = json.loads(data)
    return json.dumps(_replace(doc, rng.choice(_nodes(doc)), rng.choice(WRONG_VALUES))).encode()


def _drop_key(rng: random.Random, data: bytes) -> bytes | None:
    doc = json.loads(data)
    keyed = [p for p in _nodes(doc) if p and isinstance(p[-1], str)]
    if not keyed:
        return None
    path = rng.choice(keyed)
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    return json.dumps(_replace(doc, path[:-1], {k: v for k, v in parent.items() if k != path[-1]})).encode()


def _duplicate_key(rng: random.Random, data: bytes) -> bytes | None:
    keys = list(re.finditer(rb'"(\w+)":', data))
    if not keys:
        return None
    key = rng.choice(keys)
    return data[: key.start()] + b'"' + key[1] + b'": ' + rng.choice([b'"other"', b"0", b"[]", b"null"]) + b", " + data[key.start() :]


def _deep(rng: random.Random, data: bytes) -> bytes | None:
    depth = rng.choice([100, 999, 1000, 5000, 100_000])
    nest = rng.choice([b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth, b"[" * depth])
    values = list(re.finditer(rb'"[^"]*"|\d+', data))
    if rng.random() < 0.3 or not values:
        return nest
    value = rng.choice(values)
    return data[: value.start()] + nest + data[value.end() :]


JSON_MUTATIONS: dict[str, Mutation] = {"wrong-type": _wrong_type, "drop-key": _drop_key, "duplicate-key": _duplicate_key, "deep": _deep}


def _csv_table(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode(), newline="")))


def _csv_bytes(rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue().encode()


def _duplicate_column(rng: random.Random, data: bytes) -> bytes | None:
    rows = _csv_table(data)
    column = rng.randrange(len(rows[0]))
    values = [rng.choice(["", "x", "1", "videos/z.mp4"]) for _ in rows[1:]] if rng.random() < 0.5 else [r[column] for r in rows[1:]]
    return _csv_bytes([row + [value] for row, value in zip(rows, [rows[0][column], *values])])


def _unterminated_quote(rng: random.Random, data: bytes) -> bytes | None:
    lines = data.decode().split("\n")
    i = rng.randrange(1, len(lines) - 1)
    starts = [0] + [m.end() for m in re.finditer(",", lines[i])]
    at = rng.choice(starts)
    lines[i] = lines[i][:at] + '"' + lines[i][at:]
    return "\n".join(lines).encode()


CSV_MUTATIONS: dict[str, Mutation] = {"duplicate-column": _duplicate_column, "unterminated-quote": _unterminated_quote}
MUST_FAIL = {"duplicate-key", "duplicate-column", "unterminated-quote", "empty"}


def _pickles() -> list[tuple[str, bytes]]:
    """Caption indexes of the wrong shape, and pickles of what the loader must refuse."""
    contents = [[1, 2], {"video0": 1.5, "video2": 0}, {"video0": "1", "video2": 0}, {"video0": 2**70, "video2": 0},
                {"video0": -1, "video2": 0}, {"video0": np.float64(1), "video2": 0}, {"video0": True, "video2": 0},
                {"video0": None, "video2": 0}, {}, None, "video0", {"video0": [1], "video2": 0}, {"video2": 0},
                {"video0": np.int64(2**40), "video2": 0}, {"video0": np.array([1]), "video2": 0}, {1: 1, 2: 0},
                os.system, {"video0": Path("x"), "video2": 0}]
    return [(f"pickle-{i}", pickle.dumps(c, protocol=p)) for i, c in enumerate(contents) for p in (2, pickle.HIGHEST_PROTOCOL)]


def mutations(target: Target) -> list[tuple[str, bytes]]:
    """(case id, content) of every distinct seeded mutation of the target's file, plus the empty file."""
    rng = random.Random(f"{SEED}-{target.name}")
    data = target.files[target.mutated]
    ops = dict(BYTE_MUTATIONS)
    if target.kind == "pickle":
        ops = {k: v for k, v in ops.items() if k in ("flip", "bit", "truncate", "nul", "garbage")}
    ops |= JSON_MUTATIONS if target.kind == "json" else CSV_MUTATIONS if target.kind == "csv" else {}
    cases, seen = [("empty", b"")], {b"", data}
    if target.kind == "pickle":
        cases += _pickles()
    for name, op in ops.items():
        for round_ in range(ROUNDS):
            content = op(rng, data)
            if content is not None and content not in seen:
                seen.add(content)
                cases.append((f"{name}-{round_}", content))
    return cases


# --------------------------------------------------------------------------- the checks


def _record_problem(record: MediaRecord) -> str | None:
    """What is wrong with a record a mutated file loaded into (None: nothing)."""
    if "\0" in record.path:
        return f"NUL byte in the media path {record.path!r}"
    if record.label is not None and (type(record.label) is not int or not 0 <= record.label < 2**31):
        return f"label {record.label!r} is not an integer in [0, 2**31)"
    if not all(isinstance(c, str) and c.strip() for c in record.captions):
        return f"captions {record.captions!r}"
    return None


def _outcome(fmt: str, folder: Path, target: Target) -> tuple[str, str]:
    """('ok' | 'error' | 'traceback' | 'bad record', detail) of reading the target's files in `folder`."""
    options = {k: str(folder / v) if v in target.files else v for k, v in target.options.items()}
    try:
        records = read_annotations(fmt, folder / target.annotation, folder / "media", **options)
    except VidlabError as e:
        message = str(e)
        return ("error", message) if len(message.splitlines()) == 1 else ("traceback", f"multi-line message {message[:200]!r}")
    except Exception as e:  # noqa: BLE001 - any other exception is what this test looks for
        return "traceback", f"{type(e).__name__}: {str(e)[:200]!r}"
    problems = [p for p in map(_record_problem, records) if p]
    return ("bad record", problems[0]) if problems else ("ok", f"{len(records)} records")


def _write(folder: Path, files: dict[str, bytes]) -> None:
    for rel, content in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(content)


def test_every_reader_is_covered():
    """A new reader must get valid files here, or its bad input would go untested."""
    assert {t.fmt for t in _targets()} | {"class_folders"} == set(READERS)


def test_mutated_annotation_files_load_or_give_one_line_errors(tmp_path):
    failures, counts = [], {"ok": 0, "error": 0}
    total = 0
    for target in _targets():
        folder = tmp_path / target.name
        _write(folder, target.files)
        assert _outcome(target.fmt, folder, target)[0] == "ok", f"{target.name}: the valid files do not load"
        must_fail = MUST_FAIL - {"empty"} if target.fmt == "hmdb51" else MUST_FAIL  # an empty split file: a class without videos
        for case, content in mutations(target):
            (folder / target.mutated).write_bytes(content)
            outcome, detail = _outcome(target.fmt, folder, target)
            total += 1
            op = case.rsplit("-", 1)[0]
            if outcome == "ok" and op in must_fail:
                outcome, detail = "loads", f"{op} must be an error; {detail}"
            if outcome in counts:
                counts[outcome] += 1
            else:
                failures.append(f"{target.name}/{case}: {outcome}: {detail}")
    print(f"{total} mutations of {len(_targets())} annotation files: {counts['ok']} load, {counts['error']} one-line errors")
    assert total >= MIN_MUTATIONS
    assert not failures, f"{len(failures)} of {total} mutations:\n" + "\n".join(failures)


CLASS_TREES: dict[str, Callable[[Path], None]] = {
    "no-split-folder": lambda root: root.mkdir(parents=True),
    "split-is-a-file": lambda root: _write(root, {"train": b"x"}),
    "no-classes": lambda root: (root / "train").mkdir(parents=True),
    "only-hidden": lambda root: _write(root, {"train/.cache/a.mp4": b"x", "train/.DS_Store": b"x"}),
    "empty-classes": lambda root: [(root / "train" / c).mkdir(parents=True) for c in ("a", "b")],
    "odd-names": lambda root: _write(root, {"train/c\nlass/a\tb.mp4": b"x", "train/k\u2028/x\rz.avi": b"x", "train/ä/ü.mp4": b"x"}),
    "non-utf8-name": lambda root: _write(root, {os.fsdecode(b"train/cl\xffass/v\xfe.mp4"): b"x"}),
    "broken-link": lambda root: (_write(root, {"train/a/x.mp4": b"x"}), os.symlink(root / "nowhere", root / "train/b")),
    "link-loop": lambda root: (_write(root, {"train/a/x.mp4": b"x"}), os.symlink(root / "train/l", root / "train/l")),
}


@pytest.mark.parametrize("tree", sorted(CLASS_TREES))
def test_class_folder_trees_load_or_give_one_line_errors(tmp_path, tree):
    root = tmp_path / "data"
    CLASS_TREES[tree](root)
    outcome, detail = _outcome("class_folders", root, Target(tree, "class_folders", {}, "", "", {"split": "train"}))
    assert outcome in ("ok", "error"), detail
