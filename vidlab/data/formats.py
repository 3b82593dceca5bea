"""Annotation readers: every supported file format becomes one list of `MediaRecord`s.

Datasets, shard writers and `vidlab data check` only ever see `MediaRecord`s, so adding a format is one
reader function registered under a name that configs use (`read_annotations("webvid", ...)`).
A malformed file raises `AnnotationError(path, line_or_entry, reason)` naming the exact place.
"""

from __future__ import annotations

import csv
import functools
import inspect
import json
import math
import operator
import os
import pickle
import re
import string
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from vidlab.errors import AnnotationError, ConfigError

MediaKind = Literal["video", "image"]

# Still images; everything else (GIF included: it may be animated) is decoded as a video.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


class _NoExtra(Mapping):
    """The shared, immutable empty `extra`: datasets hold millions of records, each would otherwise carry
    its own dict. Pickles by name, so DataLoader workers get the same singleton."""

    def __getitem__(self, key: str) -> Any:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __reduce__(self) -> str:
        return "NO_EXTRA"


NO_EXTRA: Mapping[str, Any] = _NoExtra()


@dataclass(frozen=True, slots=True)
class MediaRecord:
    """One annotated media file: what to decode and what it is paired with.

    `start`/`end` (seconds) restrict decoding to a time window (HowTo100M-style captions); `label` is a
    class index (or the correct option of a multiple-choice entry); `extra` carries format-specific
    fields that datasets pass through unchanged (QA question/answers, class names, durations).
    """

    path: str
    kind: MediaKind = "video"
    captions: tuple[str, ...] = ()
    label: int | None = None
    start: float | None = None
    end: float | None = None
    extra: Mapping[str, Any] = field(default_factory=lambda: NO_EXTRA)


Reader = Callable[..., list[MediaRecord]]
READERS: dict[str, Reader] = {}


def register_reader(name: str, reader: Reader | None = None, /, **preset: Any):
    """Register `reader` under `name`; keyword `preset`s pin defaults (e.g. WebVid's column names).

    Usable as a decorator (`@register_reader("evl_list")`) or directly for presets of a generic reader.
    """

    def add(fn: Reader) -> Reader:
        if name in READERS:
            raise ValueError(f"annotation format {name!r} registered twice")
        READERS[name] = functools.partial(fn, **preset) if preset else fn
        return fn

    return add(reader) if reader is not None else add


def read_annotations(fmt: str, path: str | os.PathLike, root: str | os.PathLike | None = None, **options: Any) -> list[MediaRecord]:
    """Read an annotation file of format `fmt`; media paths are resolved against `root`.

    `root` defaults to the annotation file's folder. Unknown formats and options are `ConfigError`s
    that list what is accepted, since both usually come from a config file.
    """
    try:
        reader = READERS[fmt]
    except KeyError:
        raise ConfigError(f"unknown annotation format {fmt!r}; known: {', '.join(sorted(READERS))}") from None
    path = Path(path)
    root = Path(root) if root is not None else (path if path.is_dir() else path.parent)
    params = inspect.signature(reader).parameters
    unknown = sorted(set(options) - set(params) - {"path", "root"})
    if unknown:
        accepted = [p for p in params if p not in ("path", "root")]
        raise ConfigError(f"format {fmt!r} does not take option(s) {unknown}; accepted: {accepted}")
    records = reader(path, root, **options)
    if not records:
        raise AnnotationError(str(path), None, "no entries")
    return records


# Reader options that name a file; `read_source` resolves them against the data root like the annotations.
FILE_OPTIONS = frozenset({"split_list", "fixed_captions", "class_index"})


def read_source(
    root: str | os.PathLike,
    annotations: str | os.PathLike,
    fmt: str,
    media_root: str | os.PathLike | None = None,
    *,
    where: str = "data",
    **options: Any,
) -> list[MediaRecord]:
    """The records of a data source a config names (`where`, e.g. `data.test`): `annotations`, `media_root`
    and the options that name files (`FILE_OPTIONS`) are relative to `root` (the config's `data.root`) unless
    absolute; media default to `root`. A missing file or folder is a `ConfigError` naming the setting."""
    root = Path(root)
    under = f"relative paths are under data.root {str(root)!r}"
    annotations, media = root / annotations, root / (media_root or "")
    files = {key: root / options[key] for key in sorted(FILE_OPTIONS & options.keys()) if options[key] is not None}
    named = {"annotations": annotations, "media_root": media, **{f"options.{key}": path for key, path in files.items()}}
    for setting, path in named.items():
        if not path.exists():
            raise ConfigError(f"{where}.{setting}: {path}: file not found ({under})")
    if not media.is_dir():
        raise ConfigError(f"{where}.media_root: {media} is not a folder ({under})")
    return read_annotations(fmt, annotations, media, **{**options, **files})


# --------------------------------------------------------------------------- shared helpers


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise AnnotationError(str(path), None, "file not found" if not path.exists() else "not a file")


def _read_text(path: Path) -> str:
    _check_file(path)
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise AnnotationError(str(path), None, f"not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise AnnotationError(str(path), None, f"cannot read: {e.strerror or e}") from None


class _JSONProblem(ValueError):
    """Valid JSON syntax that vidlab refuses (raised from `json.loads` hooks, which know no line number)."""


# Longer integers cannot be labels, indices or ids; Python refuses to convert those of over 4,300 digits anyway.
_MAX_JSON_INT_DIGITS = 100


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object without duplicate keys: `json` would keep the last value silently."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        duplicate = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise _JSONProblem(f"duplicate key {duplicate!r} in an object")
    return obj


def _json_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > _MAX_JSON_INT_DIGITS:
        raise _JSONProblem(f"an integer of {digits} digits")
    return int(text)


def _json_constant(name: str) -> float:
    raise _JSONProblem(f"{name} is not a JSON number")


def _load_json(path: Path) -> Any:
    text = _read_text(path)
    try:
        return json.loads(text, object_pairs_hook=_json_object, parse_int=_json_int, parse_constant=_json_constant)
    except json.JSONDecodeError as e:
        raise AnnotationError(str(path), f"line {e.lineno}", f"invalid JSON: {e.msg}") from None
    except _JSONProblem as e:
        raise AnnotationError(str(path), None, f"invalid JSON: {e}") from None
    except RecursionError:
        raise AnnotationError(str(path), None, "invalid JSON: nested too deeply") from None


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Non-blank lines with their 1-based numbers, trailing whitespace removed."""
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        line = line.rstrip()
        if line:
            yield number, line


def _resolve(root: Path, rel: str, path: Path, where: str | int) -> str:
    """`root/rel` (an absolute `rel` stays as it is); plain concatenation: this runs once per record.

    A NUL byte would otherwise surface as a bare ValueError from the first OS call on the media path.
    """
    if "\0" in rel:
        raise AnnotationError(str(path), where, f"NUL byte in the media path {rel!r}")
    return rel if os.path.isabs(rel) else f"{root}{os.sep}{rel}"


def _kind_of(rel: str, kind: MediaKind | None) -> MediaKind:
    if kind is not None:
        return kind
    return "image" if os.path.splitext(rel)[1].lower() in IMAGE_SUFFIXES else "video"


def _check_kind(kind: str | None) -> None:
    if kind not in (None, "video", "image"):
        raise ConfigError(f"media kind must be 'video' or 'image', got {kind!r}")


def _text(value: Any, path: Path, where: str | int, what: str = "caption") -> str:
    """A non-blank string (a caption, a question, a media path, an id)."""
    if not isinstance(value, str):
        raise AnnotationError(str(path), where, f"{what} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise AnnotationError(str(path), where, f"empty {what}")
    return value


def _captions(value: Any, path: Path, where: str | int) -> tuple[str, ...]:
    """A caption or a non-empty list of captions, each a non-blank string."""
    if isinstance(value, list):
        if not value:
            raise AnnotationError(str(path), where, "empty caption list")
        return tuple(_text(c, path, where) for c in value)
    return (_text(value, path, where),)


# Labels are class indices: int32 in every framework, and a larger one is a corrupt file, not a big dataset.
MAX_LABEL = 2**31 - 1
_INTEGER = re.compile(r"-?[0-9]+")


def _label(text: str, path: Path, where: str | int, offset: int = 0) -> int:
    """A class index written as plain decimal digits (not `1e3`, `1_000` or other scripts' digits); `offset`
    converts 1-based files to 0-based labels."""
    shown = text if len(text) <= 40 else f"{text[:20]}...{text[-10:]} ({len(text)} characters)"
    if not _INTEGER.fullmatch(text):
        raise AnnotationError(str(path), where, f"bad label {shown!r}: not an integer")
    if text.startswith("-") or len(text) > len(str(MAX_LABEL)) or not offset <= int(text) <= MAX_LABEL + offset:
        raise AnnotationError(str(path), where, f"bad label {shown!r}: must be in {offset}..{MAX_LABEL + offset}")
    return int(text) - offset


def _seconds(text: str, path: Path, where: str | int, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise AnnotationError(str(path), where, f"bad {column} {text!r}: not a number") from None
    if not math.isfinite(value) or value < 0:
        raise AnnotationError(str(path), where, f"bad {column} {text!r}: must be a finite time >= 0")
    return value


# --------------------------------------------------------------------------- CSV (WebVid, CC3M, HowTo100M)


def _swallowed_rows(row: dict[str, str], delimiter: str, fields: int) -> bool:
    """Whether a quoted field spanning lines holds a line with a row's worth of delimiters: the lines that
    follow an unterminated quote, read as one field (multi-line captions are legal CSV, swallowed rows are not)."""
    spanning = (value for value in row.values() if "\n" in value or "\r" in value)
    return any(line.count(delimiter) >= fields - 1 for value in spanning for line in value.splitlines()[1:])


def _csv_rows(path: Path, required: Sequence[str], delimiter: str) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows as dicts with their line numbers (the header is line 1); checks required columns first.

    Streams the file: WebVid-10M's CSVs are gigabytes. `strict` makes a quote left open at the end of the
    file an error, not one last field holding the rest of the file.
    """
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        hint = ' (a tab is "\\t" in double quotes, as YAML reads it: -o \'delimiter="\\t"\')' if delimiter == "\\t" else ""
        raise ConfigError(f"delimiter must be one character, got {delimiter!r}{hint}")
    _check_file(path)
    try:
        f = open(path, encoding="utf-8-sig", newline="")
    except OSError as e:
        raise AnnotationError(str(path), None, f"cannot read: {e.strerror or e}") from None
    with f:
        reader = csv.DictReader(f, delimiter=delimiter, strict=True)
        end = 1  # last line of the previous row
        try:
            header = reader.fieldnames or []
            end = reader.line_num
            duplicated = sorted({c for c in header if header.count(c) > 1})
            if duplicated:
                raise AnnotationError(str(path), 1, f"duplicate column(s) {duplicated}: only the last would be read")
            missing = [c for c in required if c not in header]
            if missing:
                raise AnnotationError(str(path), 1, f"missing column(s) {missing}; header has {header}")
            for row in reader:
                if None in row or None in row.values():  # too many or too few fields
                    raise AnnotationError(str(path), reader.line_num, f"expected {len(header)} fields as in the header")
                if reader.line_num > end + 1 and _swallowed_rows(row, delimiter, len(header)):
                    raise AnnotationError(str(path), end + 1, f"unterminated quote: a field runs on to line {reader.line_num}")
                end = reader.line_num
                yield end, row
        except UnicodeDecodeError as e:
            raise AnnotationError(str(path), reader.line_num + 1, f"not UTF-8 text (byte {e.start} of a chunk)") from None
        except csv.Error as e:
            failed = reader.reader.line_num  # the DictReader's own count is the last good row's
            if failed > end + 1:  # the row began on an earlier line: a quote opened there did not close
                raise AnnotationError(str(path), end + 1, f"unterminated quote: bad CSV at line {failed}: {e}") from None
            raise AnnotationError(str(path), failed, f"bad CSV: {e}") from None


def _template_fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def _csv_records(
    path: Path,
    root: Path,
    make_rel: Callable[[dict[str, str]], str],
    path_columns: Sequence[str],
    caption_column: str,
    kind: MediaKind | None,
    start_column: str | None,
    end_column: str | None,
    max_caption_chars: int | None,
    delimiter: str,
) -> list[MediaRecord]:
    time_columns = [c for c in (start_column, end_column) if c]
    records = []
    for line, row in _csv_rows(path, [*path_columns, caption_column, *time_columns], delimiter):
        for column in path_columns:
            if not row[column].strip():
                raise AnnotationError(str(path), line, f"empty {column}")
        caption = _text(row[caption_column], path, line)[:max_caption_chars]
        start = _seconds(row[start_column], path, line, start_column) if start_column else None
        end = _seconds(row[end_column], path, line, end_column) if end_column else None
        if start is not None and end is not None and end <= start:
            raise AnnotationError(str(path), line, f"empty time window: {end_column} {end} <= {start_column} {start}")
        rel = make_rel(row)
        records.append(MediaRecord(_resolve(root, rel, path, line), _kind_of(rel, kind), (caption,), start=start, end=end))
    return records


@register_reader("csv")
def read_caption_csv(
    path: Path,
    root: Path,
    *,
    caption_column: str = "caption",
    path_column: str | None = None,
    path_template: str | None = None,
    kind: MediaKind | None = None,
    start_column: str | None = None,
    end_column: str | None = None,
    max_caption_chars: int | None = None,
    delimiter: str = ",",
) -> list[MediaRecord]:
    """A caption CSV with a header: the media path is a column, or a template over columns.

    `path_template` uses `str.format` fields named after columns (WebVid: `videos/{page_dir}/{videoid}.mp4`).
    `kind` None infers image/video from the file suffix.
    """
    _check_kind(kind)
    if (path_column is None) == (path_template is None):
        raise ConfigError("csv annotations need exactly one of path_column or path_template")

    def make_rel(row: dict[str, str]) -> str:
        return path_template.format(**row) if path_template is not None else row[path_column]

    columns = _template_fields(path_template) if path_template is not None else [path_column]
    return _csv_records(path, root, make_rel, columns, caption_column, kind, start_column, end_column, max_caption_chars, delimiter)


# WebVid (FiT): metadata/results_{cut}_{split}.csv, captions cut to 350 characters as FiT does.
register_reader(
    "webvid", read_caption_csv, caption_column="name", path_template="videos/{page_dir}/{videoid}.mp4", kind="video", max_caption_chars=350
)
# HowTo100M-style: one caption per line with its time window in seconds.
register_reader(
    "howto100m",
    read_caption_csv,
    caption_column="text",
    path_template="{video_id}.mp4",
    kind="video",
    start_column="start",
    end_column="end",
)


@register_reader("cc3m")
def read_cc3m_csv(path: Path, root: Path, *, subdir: str = "training", delimiter: str = ",") -> list[MediaRecord]:
    """Conceptual Captions as FiT downloads it: the image is `{subdir}/{crc32(thumbnailUrl)}` (no suffix)."""

    def make_rel(row: dict[str, str]) -> str:
        return os.path.join(subdir, str(zlib.crc32(row["thumbnailUrl"].encode("utf-8")) & 0xFFFFFFFF))

    return _csv_records(path, root, make_rel, ["thumbnailUrl"], "caption", "image", None, None, None, delimiter)


# --------------------------------------------------------------------------- MSR-VTT


class _IndexUnpickler(pickle.Unpickler):
    """Loads a pickled {video_id: caption_index} mapping without running arbitrary code from the file."""

    _ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {("numpy", "dtype"), ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _load_caption_index(path: Path) -> Mapping[str, int]:
    """FiT's `jsfusion_val_caption_idx.pkl` (pickled dict) or the same mapping as JSON."""
    if path.suffix.lower() == ".json":
        mapping = _load_json(path)
    else:
        if not path.is_file():
            raise AnnotationError(str(path), None, "file not found")
        try:
            with open(path, "rb") as f:
                mapping = _IndexUnpickler(f).load()
        except OSError as e:
            raise AnnotationError(str(path), None, f"cannot read: {e.strerror or e}") from None
        except Exception as e:  # a damaged pickle fails in open-ended ways (MemoryError, IndexError, KeyError, ...)
            raise AnnotationError(str(path), None, f"not a pickled caption index: {e or type(e).__name__}") from None
    if not isinstance(mapping, Mapping):
        raise AnnotationError(str(path), None, f"expected a mapping video id -> caption index, got {type(mapping).__name__}")
    return mapping


@register_reader("msrvtt")
def read_msrvtt(
    path: Path,
    root: Path,
    *,
    split_list: str | os.PathLike | None = None,
    fixed_captions: str | os.PathLike | None = None,
    path_template: str = "videos/all/{video_id}.mp4",
    kind: MediaKind = "video",
) -> list[MediaRecord]:
    """MSR-VTT `MSR_VTT.json`: one record per video with all its captions.

    `split_list` (e.g. `train_list_jsfusion.txt`) keeps those video ids in that order; `fixed_captions`
    (FiT's `jsfusion_val_caption_idx.pkl`) keeps one fixed caption per video, the 1k-A test protocol.
    """
    data = _load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise AnnotationError(str(path), None, "expected an object with an 'annotations' list")
    captions: dict[str, list[str]] = {}
    for i, entry in enumerate(data["annotations"]):
        where = f"annotations[{i}]"
        if not isinstance(entry, dict):
            raise AnnotationError(str(path), where, f"expected an object, got {type(entry).__name__}")
        for key in ("image_id", "caption"):
            if key not in entry:
                raise AnnotationError(str(path), where, f"missing key {key!r}")
        video_id = _text(entry["image_id"], path, where, "image_id")
        captions.setdefault(video_id, []).append(_text(entry["caption"], path, where))
    if split_list is None:
        order = list(captions)
    else:
        split_path = Path(split_list)
        order = []
        for line, video_id in _lines(split_path):
            if video_id not in captions:
                raise AnnotationError(str(split_path), line, f"video {video_id!r} has no captions in {path.name}")
            order.append(video_id)
    if fixed_captions is not None:
        index_path = Path(fixed_captions)
        index = _load_caption_index(index_path)
        fixed: dict[str, list[str]] = {}
        for video_id in order:
            if video_id not in index:
                raise AnnotationError(str(index_path), video_id, "video has no fixed caption index")
            try:
                k = operator.index(index[video_id])
            except TypeError:
                raise AnnotationError(str(index_path), video_id, f"caption index {index[video_id]!r} is not an integer") from None
            if not 0 <= k < len(captions[video_id]):
                raise AnnotationError(str(index_path), video_id, f"caption index {k} outside 0..{len(captions[video_id]) - 1}")
            fixed[video_id] = [captions[video_id][k]]
        captions = fixed
    rels = {v: path_template.format(video_id=v) for v in order}
    return [MediaRecord(_resolve(root, rels[v], path, v), kind, tuple(captions[v]), extra={"video_id": v}) for v in order]


# --------------------------------------------------------------------------- Singularity JSON


@register_reader("singularity")
def read_singularity_json(path: Path, root: Path, *, kind: MediaKind | None = None, join_captions: bool = False) -> list[MediaRecord]:
    """Singularity's JSON list: caption entries, QA entries and multiple-choice entries.

    - `{'image'|'video': relpath, 'caption': str | [str]}`; Singularity uses the key `image` for videos too,
      so `kind` (its config's `video` flag) overrides the suffix-based guess for `image` entries.
    - QA `{video, question, answer: str | [str], question_id}` -> `extra` question/answers/question_id.
    - Multiple choice `{video, caption: [options], answer: int}` -> captions = options, label = answer.
    - A list of media paths (the per-caption layout of SSv2 label / template evaluation files,
      `{caption, image: [paths]}`) -> one record per path, each with the entry's captions.
    `join_captions` joins a caption list into one paragraph (DiDeMo/ActivityNet paragraph retrieval).
    """
    _check_kind(kind)
    data = _load_json(path)
    if not isinstance(data, list):
        raise AnnotationError(str(path), None, f"expected a JSON list of entries, got {type(data).__name__}")
    records = []
    for i, entry in enumerate(data):
        where = f"entry {i}"
        if not isinstance(entry, dict):
            raise AnnotationError(str(path), where, f"expected an object, got {type(entry).__name__}")
        if "video" in entry:
            media, media_kind = entry["video"], "video"
        elif "image" in entry:
            media, media_kind = entry["image"], None
        else:
            raise AnnotationError(str(path), where, "missing key 'video' or 'image'")
        rels = [_text(rel, path, where, "media path") for rel in (media if isinstance(media, list) else [media])]
        if not rels:
            raise AnnotationError(str(path), where, "empty list of media paths")
        extra = {k: v for k, v in entry.items() if k not in ("video", "image", "caption", "question", "answer", "question_id")}
        label = None
        if "question" in entry:
            question = _text(entry["question"], path, where, "question")
            if "answer" not in entry:
                raise AnnotationError(str(path), where, "QA entry without 'answer'")
            answers = _captions(entry["answer"], path, where)
            extra.update(question=question, answers=list(answers), question_id=entry.get("question_id"))
            captions: tuple[str, ...] = ()
        elif "caption" not in entry:
            raise AnnotationError(str(path), where, "missing key 'caption'")
        else:
            captions = _captions(entry["caption"], path, where)
            if "answer" in entry:  # multiple choice: the answer indexes the caption options
                answer = entry["answer"]
                if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(captions):
                    raise AnnotationError(str(path), where, f"answer {answer!r} is not an option index 0..{len(captions) - 1}")
                label = answer
            elif join_captions:
                captions = (" ".join(captions),)
        for rel in rels:
            resolved = _resolve(root, rel, path, where)
            records.append(MediaRecord(resolved, _kind_of(rel, kind or media_kind), captions, label=label, extra=extra))
    return records


# --------------------------------------------------------------------------- class labels (EVL, UCF101, HMDB51, folders)


@register_reader("evl_list")
def read_label_list(path: Path, root: Path, *, kind: MediaKind | None = None) -> list[MediaRecord]:
    """EVL's list file: `<path> <label>` per line, the label after the last single space."""
    _check_kind(kind)
    records = []
    for line, text in _lines(path):
        rel, sep, label = text.rpartition(" ")
        if not sep or not rel:
            raise AnnotationError(str(path), line, f"expected '<path> <label>', got {text!r}")
        records.append(MediaRecord(_resolve(root, rel, path, line), _kind_of(rel, kind), label=_label(label, path, line)))
    return records


register_reader("evl", read_label_list)  # the name EVL configs use (`format: evl`)


def _class_folders(path: Path) -> list[str]:
    if not path.is_dir():
        raise AnnotationError(str(path), None, "folder not found" if not path.exists() else "not a folder")
    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise AnnotationError(str(path), None, "no class folders")
    return classes


@register_reader("class_folders")
def read_class_folders(path: Path, root: Path, *, split: str | None = None, kind: MediaKind | None = None) -> list[MediaRecord]:
    """`ROOT/SPLIT/CLASS/*`: labels are class folder names in sorted order (GDT's layout).

    `path` is the dataset root (the `root` argument is unused: the files are found, not listed).
    """
    _check_kind(kind)
    split_dir = path / split if split else path
    records = []
    for label, name in enumerate(_class_folders(split_dir)):
        for file in sorted((split_dir / name).iterdir()):
            if file.is_file() and not file.name.startswith("."):
                records.append(MediaRecord(str(file), _kind_of(file.name, kind), label=label, extra={"class_name": name}))
    return records


def _read_class_index(path: Path) -> dict[str, int]:
    """UCF101's `classInd.txt`: `<1-based index> <class name>` per line -> 0-based labels."""
    classes = {}
    for line, text in _lines(path):
        number, sep, name = text.partition(" ")
        if not sep or not name:
            raise AnnotationError(str(path), line, f"expected '<index> <class>', got {text!r}")
        classes[name] = _label(number, path, line, offset=1)
    return classes


@register_reader("ucf101")
def read_ucf101_split(path: Path, root: Path, *, class_index: str | os.PathLike | None = None) -> list[MediaRecord]:
    """A UCF101 split file: `trainlist0N.txt` (`Class/v_x.avi <1-based label>`) or `testlist0N.txt` (no label).

    The class comes from `classInd.txt` (default: beside the split file); a stated label must agree with it.
    """
    index_path = Path(class_index) if class_index is not None else path.parent / "classInd.txt"
    classes = _read_class_index(index_path)
    records = []
    for line, text in _lines(path):
        rel, _, stated = text.partition(" ")
        class_name = rel.split("/")[0] if "/" in rel else None
        if class_name not in classes:
            raise AnnotationError(str(path), line, f"class of {rel!r} is not in {index_path.name}")
        label = classes[class_name]
        if stated and _label(stated, path, line, offset=1) != label:
            raise AnnotationError(str(path), line, f"bad label {stated!r}: {class_name} is {label + 1} in {index_path.name}")
        records.append(MediaRecord(_resolve(root, rel, path, line), "video", label=label, extra={"class_name": class_name}))
    return records


_HMDB_SPLIT = re.compile(r"^(?P<cls>.+)_test_split(?P<fold>\d+)\.txt$")
_HMDB_TAGS = {"train": "1", "test": "2"}


@register_reader("hmdb51")
def read_hmdb51_split(path: Path, root: Path, *, fold: int = 1, subset: Literal["train", "test"] = "train") -> list[MediaRecord]:
    """HMDB51 split folder: `<class>_test_split<fold>.txt` files tagging each video 0 (unused), 1 (train), 2 (test).

    `path` is the folder of split files; labels are class names in sorted order; videos are `root/<class>/<name>`.
    """
    if subset not in _HMDB_TAGS:
        raise ConfigError(f"hmdb51 subset must be 'train' or 'test', got {subset!r}")
    if not path.is_dir():
        raise AnnotationError(str(path), None, "split folder not found")
    split_files = {}
    for file in path.iterdir():
        match = _HMDB_SPLIT.match(file.name)
        if match and int(match["fold"]) == fold:
            split_files[match["cls"]] = file
    if not split_files:
        raise AnnotationError(str(path), None, f"no *_test_split{fold}.txt files")
    records = []
    for label, class_name in enumerate(sorted(split_files)):
        file = split_files[class_name]
        for line, text in _lines(file):
            parts = text.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise AnnotationError(str(file), line, f"expected '<video> <0|1|2>', got {text!r}")
            if parts[1] == _HMDB_TAGS[subset]:
                rel = os.path.join(class_name, parts[0])
                media = _resolve(root, rel, file, line)
                records.append(MediaRecord(media, "video", label=label, extra={"class_name": class_name}))
    return records


def caption_flags(captions: Sequence[str], flags: Any, path: str) -> list[bool]:
    """The `temporal` flag of each caption (all False without flags); a paragraph (sentences joined into
    one caption) is temporal when any of its sentences is."""
    if flags is None:
        return [False] * len(captions)
    if isinstance(flags, bool):
        return [flags] * len(captions)
    flags = [bool(f) for f in flags]
    if len(flags) == len(captions):
        return flags
    if len(captions) == 1:
        return [any(flags)]
    raise AnnotationError(path, None, f"{len(flags)} 'temporal' flags for {len(captions)} captions")


def has_temporal_flags(records: Sequence[MediaRecord]) -> bool:
    """Whether the annotations mark temporal items at all (ShapesBench does; MSR-VTT does not)."""
    return any("temporal" in r.extra for r in records)
