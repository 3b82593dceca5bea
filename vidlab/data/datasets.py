"""Map-style datasets over any annotation reader: records in, decoded and transformed clips out.

The sampler and the transform are plain callables (see docs/architecture.md for their contracts), so a
recipe composes e.g. `VideoTextDataset(read_annotations("webvid", ...), make_sampler("rand", num_frames=4),
build_transform(cfg, train=True), num_frames=4)`. Randomness of a sample (frame indices, caption choice,
augmentation, substitute of a bad file) comes from (seed, epoch, index) only, so a batch does not depend
on the number of DataLoader workers.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from vidlab.data.formats import MediaRecord
from vidlab.data.quality import BAD_SAMPLE_ERRORS, BAD_SAMPLES_KEY, BadSample, BadSampleError, BadSamplePolicy
from vidlab.errors import ConfigError
from vidlab.io import Reason, VideoReadError, probe, read_audio, read_frames
from vidlab.io.backends import check_backend

Sampler = Callable[[int, float, np.random.Generator], Sequence[np.ndarray]]
Transform = Callable[[torch.Tensor], torch.Tensor]
ImageFrames = Literal["single", "repeat"]
CaptionMode = Literal["random", "first", "all"]
Target = Literal["caption", "label"] | None


@dataclass(frozen=True)
class AudioWindow:
    """Audio to return with each temporal view: `seconds` from the view's first frame (GDT: 1 s)."""

    seconds: float
    sample_rate: int = 24000


class SharedEpoch:
    """The epoch as a shared-memory integer, so persistent DataLoader workers see `set_epoch` too."""

    def __init__(self, epoch: int = 0):
        self._value = multiprocessing.Value("q", epoch, lock=False)

    def get(self) -> int:
        return int(self._value.value)

    def set(self, epoch: int) -> None:
        self._value.value = epoch


def sample_rng(*key: int) -> tuple[np.random.Generator, int]:
    """A numpy generator and a torch seed derived from a key such as (seed, epoch, index, attempt)."""
    seq = np.random.SeedSequence([int(k) for k in key])
    return np.random.default_rng(seq), int(seq.generate_state(1, np.uint64)[0] >> 1)


def _pad_frames(clip: torch.Tensor, num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad the frame axis (dim -4) to `num_frames`; the mask is True for real frames.

    FiT pads after its transform, with zeros in normalised space, and the model attends to them.
    """
    real = clip.shape[-4]
    mask = torch.arange(max(real, num_frames)) < real
    if real >= num_frames:
        return clip, mask
    pad = clip.new_zeros(*clip.shape[:-4], num_frames - real, *clip.shape[-3:])
    return torch.cat([clip, pad], dim=-4), mask


class ClipReader:
    """Decodes the frames a sampler asks for (one decode call per sample) and applies the transform.

    Shared by the map-style datasets and the shard dataset: `source` is the file to decode, the record's
    own path or a temporary file holding a shard's bytes (`record.path` names it in errors).
    Returns `video` (T,C,H,W), or (V,T,C,H,W) when the sampler gives V > 1 temporal views, a boolean
    `frame_mask` (T,) or (V,T), and with `audio` an `audio` tensor per view.
    """

    def __init__(
        self,
        sampler: Sampler,
        transform: Transform | None = None,
        *,
        num_frames: int,
        image_frames: ImageFrames = "single",
        audio: AudioWindow | None = None,
        audio_transform: Transform | None = None,
        backend: str | None = None,
    ):
        if image_frames not in ("single", "repeat"):
            raise ConfigError(f"image_frames must be 'single' or 'repeat', got {image_frames!r}")
        if num_frames < 1:
            raise ConfigError(f"num_frames must be >= 1, got {num_frames}")
        self.sampler = sampler
        self.transform = transform
        self.num_frames = num_frames
        self.image_frames = image_frames
        self.audio = audio
        self.audio_transform = audio_transform
        self.backend = check_backend(backend) if backend is not None else None

    def _video_views(self, source: str, record: MediaRecord, rng: np.random.Generator) -> tuple[list[torch.Tensor], list[float]]:
        """Decoded views (t,H,W,3) and the start time in seconds of each."""
        info = probe(source)
        first, count = 0, info.num_frames
        if record.start is not None or record.end is not None:
            first = min(round((record.start or 0.0) * info.fps), info.num_frames)
            last = info.num_frames if record.end is None else min(int(np.ceil(record.end * info.fps)), info.num_frames)
            count = last - first
            if count <= 0:
                window = f"{record.start or 0.0:g}-" + (f"{record.end:g} s" if record.end is not None else "end")
                raise VideoReadError(record.path, Reason.OUT_OF_RANGE, f"window {window} outside a {info.duration:.2f} s video")
        views = [np.asarray(v, dtype=np.int64) + first for v in self.sampler(count, info.fps, rng)]
        frames = read_frames(source, np.concatenate(views), backend=self.backend)
        starts = [float(v[0]) / info.fps if len(v) else first / info.fps for v in views]
        return list(torch.split(frames, [len(v) for v in views])), starts

    def _image_views(self, source: str) -> list[torch.Tensor]:
        frame = read_frames(source, np.zeros(1, dtype=np.int64), backend=self.backend)
        return [frame.expand(self.num_frames, *frame.shape[1:]) if self.image_frames == "repeat" else frame]

    def _audio(self, source: str, record: MediaRecord, starts: list[float]) -> torch.Tensor:
        assert self.audio is not None
        length = round(self.audio.seconds * self.audio.sample_rate)
        clips = []
        for start in starts:
            wave = torch.as_tensor(read_audio(source, start, start + self.audio.seconds, sample_rate=self.audio.sample_rate))
            wave = wave[..., :length]
            if wave.shape[-1] < length:  # the window ran past the end of the stream: pad with silence
                wave = torch.nn.functional.pad(wave, (0, length - wave.shape[-1]))
            clips.append(self.audio_transform(wave) if self.audio_transform else wave)
        return clips[0] if len(clips) == 1 else torch.stack(clips)

    def __call__(self, source: str, record: MediaRecord, rng: np.random.Generator, torch_seed: int) -> dict[str, Any]:
        if record.kind == "image":
            if self.audio is not None:
                raise VideoReadError(record.path, Reason.NO_AUDIO_STREAM, "an image has no audio")
            views, starts = self._image_views(source), []
        else:
            views, starts = self._video_views(source, record, rng)
        clips, masks = [], []
        with torch.random.fork_rng(devices=[]):
            # The transforms draw from the CPU generator only; `torch.manual_seed` would also queue a seed
            # for every accelerator backend, formatting a stack trace each time (0.3 ms a clip, measured).
            torch.default_generator.manual_seed(torch_seed)
            for frames in views:
                clip = frames.permute(0, 3, 1, 2)
                if self.transform is not None:
                    clip = self.transform(clip)
                clip, mask = _pad_frames(clip, self.num_frames if record.kind == "video" else 1)
                clips.append(clip)
                masks.append(mask)
        sample = {
            "video": clips[0] if len(clips) == 1 else torch.stack(clips),
            "frame_mask": masks[0] if len(masks) == 1 else torch.stack(masks),
        }
        if self.audio is not None:
            sample["audio"] = self._audio(source, record, starts)
        return sample


def check_target(target: Target, caption_mode: CaptionMode) -> None:
    """Reject a misspelt target or caption mode when the dataset is built, not at its first sample."""
    if target not in ("caption", "label", None):
        raise ConfigError(f"target must be 'caption', 'label' or None, got {target!r}")
    if caption_mode not in ("random", "first", "all"):
        raise ConfigError(f"caption_mode must be 'random', 'first' or 'all', got {caption_mode!r}")


def target_fields(record: MediaRecord, rng: np.random.Generator, target: Target, caption_mode: CaptionMode) -> dict[str, Any]:
    """What the clip is paired with: a `label`, or a `caption` -- one at random (training), the first
    (FiT's fixed test caption) or all -- plus the `label` of a multiple-choice entry."""
    if target == "label":
        return {"label": record.label}
    if target is None:
        return {}
    if caption_mode == "random":
        fields: dict[str, Any] = {"caption": record.captions[int(rng.integers(len(record.captions)))]}
    elif caption_mode == "first":
        fields = {"caption": record.captions[0]}
    else:
        fields = {"caption": list(record.captions)}
    if record.label is not None:
        fields["label"] = record.label
    return fields


def read_sample(
    reader: ClipReader,
    source: str,
    record: MediaRecord,
    key: Sequence[int],
    target: Target,
    caption_mode: CaptionMode,
) -> dict[str, Any]:
    """A record as a sample: `record.extra`, the target fields, the clip and the path.

    All its randomness comes from `key` (see `sample_rng`); this is the one place map-style and shard
    datasets turn records into samples, so both give the same sample for the same record and key.
    """
    rng, torch_seed = sample_rng(*key)
    clip = reader(source, record, rng, torch_seed)
    return {**record.extra, **target_fields(record, rng, target, caption_mode), **clip, "path": record.path}


CHECK_HINT = "`vidlab data check` lists every file of an annotation that cannot serve samples"


class MediaDataset(Dataset):
    """Records -> `{video, frame_mask, index, path, bad_samples, **record.extra}`; subclasses add targets.

    Used directly for QA, whose question and answers travel in `record.extra`. `bad_samples` is the
    policy (`skip` substitutes another sample, up to `max_attempts` reads; `raise` stops at the first).
    """

    target: Target = None
    caption_mode: CaptionMode = "random"

    def __init__(
        self,
        records: Sequence[MediaRecord],
        sampler: Sampler,
        transform: Transform | None = None,
        *,
        num_frames: int,
        seed: int = 0,
        image_frames: ImageFrames = "single",
        audio: AudioWindow | None = None,
        audio_transform: Transform | None = None,
        bad_samples: str | BadSamplePolicy = BadSamplePolicy.SKIP,
        max_attempts: int = 10,
        backend: str | None = None,
    ):
        if not records:
            raise ConfigError("a dataset needs at least one record")
        self.records = records
        self.reader = ClipReader(
            sampler,
            transform,
            num_frames=num_frames,
            image_frames=image_frames,
            audio=audio,
            audio_transform=audio_transform,
            backend=backend,
        )
        self.seed = seed
        self.policy = BadSamplePolicy.parse(bad_samples)
        self.max_attempts = max_attempts
        self._epoch = SharedEpoch()

    def set_epoch(self, epoch: int) -> None:
        self._epoch.set(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        epoch = self._epoch.get()
        bad: list[BadSample] = []
        current = index
        for attempt in range(self.max_attempts):
            key = (self.seed, epoch, index, attempt)
            if attempt:  # the substitute for a bad record: drawn from its own stream, never from the sample's
                current = int(np.random.default_rng([*key, 1]).integers(len(self.records)))
            record = self.records[current]
            try:
                sample = read_sample(self.reader, record.path, record, key, self.target, self.caption_mode)
            except BAD_SAMPLE_ERRORS as e:
                failure = BadSample.from_error(record.path, e)
                if self.policy is BadSamplePolicy.RAISE:  # evaluation stops at one file: say how to list the others
                    raise BadSampleError(f"{failure.path}: {failure.reason}; {CHECK_HINT}") from e
                bad.append(failure)
                continue
            return {**sample, "index": current, BAD_SAMPLES_KEY: bad}
        listed = "; ".join(f"{b.path}: {b.reason}" for b in bad)
        raise BadSampleError(f"{self.max_attempts} reads in a row failed for sample {index}: {listed}")


class VideoTextDataset(MediaDataset):
    """Video/image-text pairs: adds `caption` (see `target_fields` for `caption_mode`)."""

    target = "caption"

    def __init__(
        self,
        records: Sequence[MediaRecord],
        sampler: Sampler,
        transform: Transform | None = None,
        *,
        caption_mode: CaptionMode = "random",
        **kwargs: Any,
    ):
        check_target("caption", caption_mode)
        uncaptioned = next((r for r in records if not r.captions), None)
        if uncaptioned is not None:
            raise ConfigError(f"{uncaptioned.path} has no caption: a video-text dataset needs a captioned format")
        super().__init__(records, sampler, transform, **kwargs)
        self.caption_mode = caption_mode


class VideoLabelDataset(MediaDataset):
    """Classification: adds the integer `label`."""

    target = "label"

    def __init__(self, records: Sequence[MediaRecord], sampler: Sampler, transform: Transform | None = None, **kwargs: Any):
        unlabelled = next((r for r in records if r.label is None), None)
        if unlabelled is not None:
            raise ConfigError(f"{unlabelled.path} has no label: a classification dataset needs a labelled format")
        super().__init__(records, sampler, transform, **kwargs)


def collate_samples(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch samples: tensors are stacked, numbers become tensors, text and lists stay lists,
    and the bad files met by every sample are concatenated for the `BadSampleTracker`."""
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if key == BAD_SAMPLES_KEY:
            batch[key] = [b for v in values for b in v]
        elif isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            batch[key] = torch.tensor(values)
        else:
            batch[key] = values
    return batch


class CaptionPairDataset(VideoTextDataset):
    """One sample per (media file, caption) pair, as the official training files list them; `idx` numbers
    the media file, so the rows of one file are each other's ITC positives and never each other's ITM negatives.

    `match_by_caption` (official `has_multi_vision_gt`, the SSv2 label / template retrieval tasks, where one
    caption has many ground-truth videos): `idx` numbers the caption text instead, so clips with the same caption
    are positives of each other.
    """

    def __init__(self, records: Sequence[MediaRecord], sampler: Any, transform: Any, match_by_caption: bool = False, **kwargs: Any):
        pairs = [r if len(r.captions) == 1 else replace(r, captions=(c,)) for r in records for c in r.captions]
        keys = [r.captions[0] if match_by_caption else r.path for r in pairs]
        ids: dict[str, int] = {}
        self.match_ids = np.array([ids.setdefault(key, len(ids)) for key in keys], dtype=np.int64)
        super().__init__(pairs, sampler, transform, caption_mode="first", **kwargs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = super().__getitem__(index)
        sample["idx"] = int(self.match_ids[sample["index"]])
        return sample
