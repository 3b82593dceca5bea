"""Map-style datasets: decoded clips match the sampler's frames, padding, images, windows, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _data_fixtures import GOOD_FRAMES, MediaFolder, build_media_folder, noisy, to_float
from torch.utils.data import DataLoader

import vidlab.data.datasets as datasets_module
from vidlab.data.datasets import AudioWindow, MediaDataset, VideoLabelDataset, VideoTextDataset, collate_samples
from vidlab.data.formats import MediaRecord
from vidlab.data.quality import BadSampleError
from vidlab.data.transforms import build_transform
from vidlab.data.workers import loader_kwargs
from vidlab.errors import ConfigError
from vidlab.io import read_audio, read_frames
from vidlab.io.sampling import make_sampler
from vidlab.testing.media import make_video


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> MediaFolder:
    return build_media_folder(tmp_path_factory.mktemp("media"), num_good=2)


def expected_clip(path, indices) -> torch.Tensor:
    """What the dataset must return: the frames at `indices`, as (T,C,H,W) floats."""
    return to_float(read_frames(path, indices).permute(0, 3, 1, 2))


def test_clip_is_the_samplers_frames_permuted_and_transformed(media):
    record = MediaRecord(str(media.good[0]), captions=("a clip",))
    ds = VideoTextDataset([record], make_sampler("fit_uniform", num_frames=4), to_float, num_frames=4)
    sample = ds[0]
    (indices,) = make_sampler("fit_uniform", num_frames=4)(GOOD_FRAMES, 10.0, None)
    assert torch.equal(sample["video"], expected_clip(record.path, indices))
    assert sample["video"].shape == (4, 3, 48, 64)
    assert sample["frame_mask"].tolist() == [True] * 4
    assert (sample["caption"], sample["index"], sample["path"], sample["bad_samples"]) == ("a clip", 0, record.path, [])


def test_short_video_is_zero_padded_after_the_transform_with_a_mask(media):
    ds = VideoTextDataset([MediaRecord(str(media.short), captions=("x",))], make_sampler("fit_uniform", num_frames=8), noisy, num_frames=8)
    sample = ds[0]
    assert sample["video"].shape == (8, 3, 48, 64)
    assert sample["frame_mask"].tolist() == [True] * 3 + [False] * 5
    assert sample["video"][3:].abs().sum() == 0  # FiT: zeros in the transform's output space
    assert (sample["video"][:3] > 0).all()  # the transform ran on the real frames


def test_all_temporal_views_come_from_one_decode_call(media, monkeypatch):
    calls = []

    def counting_read_frames(path, indices, **kwargs):
        calls.append(np.asarray(indices).tolist())
        return read_frames(path, indices, **kwargs)

    monkeypatch.setattr(datasets_module, "read_frames", counting_read_frames)
    sampler = make_sampler("uniform_views", num_frames=4, num_views=3, sampling_rate=2)
    ds = VideoLabelDataset([MediaRecord(str(media.good[1]), label=5)], sampler, to_float, num_frames=4)
    sample = ds[0]
    views = sampler(GOOD_FRAMES, 10.0, None)
    assert len(calls) == 1
    assert sample["video"].shape == (3, 4, 3, 48, 64) and sample["frame_mask"].shape == (3, 4)
    for v, indices in enumerate(views):
        assert torch.equal(sample["video"][v], expected_clip(media.good[1], indices))
    assert sample["label"] == 5


def test_time_window_restricts_the_frames(media):
    def everything(vlen, fps, rng):
        return [np.arange(vlen)]

    record = MediaRecord(str(media.good[0]), captions=("x",), start=0.5, end=1.2)  # 10 fps: frames 5..11
    sample = VideoTextDataset([record], everything, to_float, num_frames=1)[0]
    assert torch.equal(sample["video"], expected_clip(record.path, np.arange(5, 12)))


def test_window_past_the_end_is_a_bad_sample(media):
    record = MediaRecord(str(media.good[0]), captions=("x",), start=5.0, end=6.0)
    ds = VideoTextDataset([record], make_sampler("fit_uniform", num_frames=2), num_frames=2, bad_samples="raise")
    with pytest.raises(BadSampleError, match="out of range .*window 5-6 s outside"):
        ds[0]


@pytest.mark.parametrize("image_frames, frames", [("single", 1), ("repeat", 4)])
def test_images_are_one_frame_videos(media, image_frames, frames):
    ds = VideoTextDataset(
        [MediaRecord(str(media.image), "image", ("a still",))],
        make_sampler("fit_rand", num_frames=4),
        to_float,
        num_frames=4,
        image_frames=image_frames,
    )
    sample = ds[0]
    assert sample["video"].shape == (frames, 3, 48, 64)
    assert torch.equal(sample["video"][-1], expected_clip(media.image, [0])[0])
    assert sample["frame_mask"].all()


def test_randomness_comes_from_seed_epoch_and_index(media):
    records = [MediaRecord(p, captions=("a", "b", "c", "d")) for p in media.good_paths]

    def make(seed):
        return VideoTextDataset(records, make_sampler("fit_rand", num_frames=3), noisy, num_frames=3, seed=seed)

    ds = make(0)
    first = ds[1]
    assert torch.equal(first["video"], make(0)[1]["video"])  # a fresh dataset draws the same
    assert not torch.equal(first["video"], make(1)[1]["video"])
    ds.set_epoch(1)
    assert not torch.equal(first["video"], ds[1]["video"])
    captions = set()
    for epoch in range(12):
        ds.set_epoch(epoch)
        captions.add(ds[1]["caption"])
    assert len(captions) > 1  # training draws a caption per epoch


@pytest.mark.parametrize("mode, caption", [("first", "a"), ("all", ["a", "b"])])
def test_caption_modes(media, mode, caption):
    ds = VideoTextDataset(
        [MediaRecord(media.good_paths[0], captions=("a", "b"))], make_sampler("fit_uniform", num_frames=1), num_frames=1, caption_mode=mode
    )
    assert ds[0]["caption"] == caption


def test_batches_do_not_depend_on_the_number_of_workers(media):
    records = [MediaRecord(p, captions=(f"c{i}", f"d{i}")) for i, p in enumerate(media.good_paths * 2)]
    train_transform = build_transform({"preset": "fit", "size": 32}, train=True)  # random crop and flip
    ds = VideoTextDataset(records, make_sampler("fit_rand", num_frames=3), train_transform, num_frames=3, seed=7)
    ds.set_epoch(2)
    runs = []
    for workers in (0, 2):
        loader = DataLoader(ds, batch_size=2, num_workers=workers, collate_fn=collate_samples, **loader_kwargs(workers))
        runs.append(list(loader))
    for a, b in zip(*runs):
        assert torch.equal(a["video"], b["video"]) and a["caption"] == b["caption"] and torch.equal(a["index"], b["index"])


def test_three_crop_views_are_padded_on_the_frame_axis(media):
    three_crops = build_transform({"preset": "evl", "spatial_views": 3, "size": 32}, train=False)
    ds = VideoLabelDataset([MediaRecord(str(media.short), label=0)], make_sampler("fit_uniform", num_frames=5), three_crops, num_frames=5)
    sample = ds[0]
    assert sample["video"].shape == (3, 5, 3, 32, 32)  # (crops, T, C, H, W)
    assert sample["frame_mask"].tolist() == [True] * 3 + [False] * 2
    assert sample["video"][:, 3:].abs().sum() == 0 and sample["video"][:, :3].abs().sum() > 0


def test_audio_window_per_temporal_view(tmp_path):
    path = str(make_video(tmp_path / "av.mp4", num_frames=20, fps=10, size=(64, 48), audio=True, audio_sample_rate=8000))
    sampler = make_sampler("uniform_views", num_frames=2, num_views=2, sampling_rate=3)
    ds = VideoTextDataset([MediaRecord(path, captions=("x",))], sampler, num_frames=2, audio=AudioWindow(0.5, 8000))
    audio = ds[0]["audio"]
    assert audio.shape == (2, 4000)
    padded = 0
    for view, indices in zip(audio, sampler(20, 10.0, None)):
        start = indices[0] / 10.0
        direct = read_audio(path, start, start + 0.5, sample_rate=8000)
        assert torch.equal(view[: len(direct)], direct) and direct.abs().max() > 0.1  # the test tone
        assert not view[len(direct) :].any()  # a window past the end of the stream is padded with silence
        padded += len(view) - len(direct)
    assert padded > 0  # the last view runs past the 2 s of audio


def test_an_image_with_audio_requested_is_a_bad_sample(media):
    ds = VideoTextDataset(
        [MediaRecord(str(media.image), "image", ("x",))],
        make_sampler("fit_rand", num_frames=1),
        num_frames=1,
        audio=AudioWindow(1.0),
        bad_samples="raise",
    )
    with pytest.raises(BadSampleError, match="no audio stream"):
        ds[0]


def test_qa_entries_pass_their_fields_through(media):
    record = MediaRecord(media.good_paths[0], extra={"question": "what?", "answers": ["dog", "cat"], "question_id": 3})
    batch = collate_samples([MediaDataset([record], make_sampler("fit_uniform", num_frames=2), num_frames=2)[0]] * 2)
    assert batch["question"] == ["what?", "what?"] and batch["answers"] == [["dog", "cat"]] * 2
    assert batch["question_id"].tolist() == [3, 3] and batch["video"].shape == (2, 2, 3, 48, 64)


def test_datasets_reject_records_without_their_target(media):
    sampler = make_sampler("fit_uniform", num_frames=1)
    with pytest.raises(ConfigError, match="has no label"):
        VideoLabelDataset([MediaRecord(media.good_paths[0], captions=("x",))], sampler, num_frames=1)
    with pytest.raises(ConfigError, match="has no caption"):
        VideoTextDataset([MediaRecord(media.good_paths[0], label=1)], sampler, num_frames=1)
    with pytest.raises(ConfigError, match="image_frames"):
        VideoTextDataset([MediaRecord(media.good_paths[0], captions=("x",))], sampler, num_frames=1, image_frames="tile")
