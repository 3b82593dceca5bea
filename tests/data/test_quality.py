"""Bad-sample policy on a folder mixing good, missing, empty, corrupt and text-as-video files."""

from __future__ import annotations

import logging

import pytest
import torch
from _data_fixtures import MediaFolder, build_media_folder, noisy
from torch.utils.data import DataLoader

from vidlab.data.datasets import CHECK_HINT, VideoLabelDataset, collate_samples
from vidlab.data.formats import MediaRecord
from vidlab.data.quality import BadSample, BadSampleError, BadSampleTracker, check_media
from vidlab.data.workers import loader_kwargs
from vidlab.io import probe, read_frames
from vidlab.io.index import frame_index
from vidlab.io.sampling import make_sampler
from vidlab.testing.media import make_truncated


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> MediaFolder:
    return build_media_folder(tmp_path_factory.mktemp("mixed"), num_good=3)


def mixed_dataset(media: MediaFolder, **kwargs) -> VideoLabelDataset:
    """Good files at even indices, each bad file once, 10 records."""
    paths = [media.good_paths[0], str(media.bad["missing"]), media.good_paths[1], str(media.bad["empty"]), media.good_paths[2]]
    paths += [str(media.bad["corrupt"]), media.good_paths[0], str(media.bad["not a video"]), media.good_paths[1], media.good_paths[2]]
    records = [MediaRecord(p, label=i) for i, p in enumerate(paths)]
    return VideoLabelDataset(records, make_sampler("fit_rand", num_frames=2), noisy, num_frames=2, **kwargs)


def run_epochs(ds, tracker: BadSampleTracker, workers: int, epochs: int = 1) -> list[dict]:
    loader = tracker.wrap(DataLoader(ds, batch_size=5, num_workers=workers, collate_fn=collate_samples, **loader_kwargs(workers)))
    batches = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        batches += list(loader)
    return batches


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_substitutes_counts_and_logs_each_bad_file_once(media, workers, caplog):
    tracker = BadSampleTracker(max_bad_fraction=0.9, min_samples=1)
    with caplog.at_level(logging.WARNING, logger="vidlab.data.quality"):
        batches = run_epochs(mixed_dataset(media), tracker, workers, epochs=2)
    assert [len(b["index"]) for b in batches] == [5, 5, 5, 5]  # every batch full despite the bad files
    assert all(b["video"].shape == (5, 2, 3, 48, 64) for b in batches)
    delivered = torch.cat([b["index"] for b in batches]).tolist()
    assert not {1, 3, 5, 7} & set(delivered)  # bad records were replaced by good ones
    assert {path: reason.split(" (")[0] for path, (reason, _) in tracker.files.items()} == {str(p): r for r, p in media.bad.items()}
    # each bad record is met once per epoch, and a substitute may be a bad record too
    assert tracker.delivered == 20 and tracker.bad == sum(len(b["bad_samples"]) for b in batches) >= 8
    assert all(count >= 2 for _, count in tracker.files.values())
    logged = [r.getMessage() for r in caplog.records if "bad sample skipped" in r.getMessage()]
    assert len(logged) == 4 and all(any(str(p) in m for m in logged) for p in media.bad.values())
    summary = tracker.summary()
    assert summary.startswith(f"bad samples: {tracker.bad} of {tracker.bad + 20} reads ({tracker.bad_fraction:.1%}) from 4 files")
    assert all(f"{p}: {r}" in summary for r, p in media.bad.items())


def test_substitutes_are_the_same_with_and_without_workers(media):
    runs = [run_epochs(mixed_dataset(media, seed=4), BadSampleTracker(1.0), workers) for workers in (0, 2)]
    for a, b in zip(*runs):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["video"], b["video"])
        assert a["bad_samples"] == b["bad_samples"]


def test_too_many_bad_samples_stop_the_run_with_a_summary(media):
    tracker = BadSampleTracker(max_bad_fraction=0.2, min_samples=5)
    with pytest.raises(BadSampleError, match=r"% of samples were bad \(limit 20.0%\); bad samples: \d+ of \d+ reads") as info:
        run_epochs(mixed_dataset(media), tracker, workers=0)
    assert tracker.delivered == 5 and tracker.bad_fraction > 0.2  # stopped at the first batch
    assert f"{media.bad['missing']}: missing" in str(info.value)


@pytest.mark.parametrize("workers", [0, 2])
def test_raise_policy_stops_at_the_first_bad_file_with_a_one_line_typed_error(media, workers):
    ds = mixed_dataset(media, bad_samples="raise")
    with pytest.raises(BadSampleError) as info:
        run_epochs(ds, BadSampleTracker(), workers)
    assert str(info.value) == f"{media.bad['missing']}: missing; {CHECK_HINT}"


def test_evaluation_of_a_truncated_file_names_the_frames_it_has_in_one_line(tmp_path):
    """The README's promise: a truncated file serves the frames it has to read_frames, and to a dataset it is a bad
    sample (evaluation samples over the header's count) whose error says so and how to find the others."""
    truncated = str(make_truncated(tmp_path / "cut.mp4", num_frames=60, gop=10, keep_fraction=0.5))
    readable = frame_index(truncated).num_frames
    assert 0 < readable < probe(truncated).num_frames
    assert read_frames(truncated, list(range(readable))).shape[0] == readable
    sampler = make_sampler("fit_uniform", num_frames=4)  # the last of 4 segments lies past the readable frames
    ds = VideoLabelDataset([MediaRecord(truncated, label=0)], sampler, num_frames=4, bad_samples="raise")
    with pytest.raises(BadSampleError) as info:
        ds[0]
    message = str(info.value)
    assert len(message.splitlines()) == 1 and message.startswith(f"{truncated}: corrupt")
    assert f"only {readable} of the header's {probe(truncated).num_frames} frames can be read" in message
    assert message.endswith(CHECK_HINT)


def test_all_attempts_failing_is_an_error(media):
    records = [MediaRecord(str(p), label=0) for p in media.bad.values()]
    ds = VideoLabelDataset(records, make_sampler("fit_rand", num_frames=2), num_frames=2, max_attempts=3)
    with pytest.raises(BadSampleError, match="3 reads in a row failed for sample 0"):
        ds[0]


def test_skip_policy_replaces_a_record_whose_path_holds_a_nul_byte(media):
    """Records built in code skip the readers' check: the io layer's typed error lets the policy handle them."""
    records = [MediaRecord(media.good_paths[0], label=0), MediaRecord(media.good_paths[1] + "\0", label=1)]
    tracker = BadSampleTracker(max_bad_fraction=0.9, min_samples=1)
    ds = VideoLabelDataset(records, make_sampler("fit_rand", num_frames=2), noisy, num_frames=2)
    (batch,) = run_epochs(ds, tracker, workers=0)
    assert batch["index"].tolist() == [0, 0]
    assert {path: reason for path, (reason, _) in tracker.files.items()} == {records[1].path: "missing (NUL byte in the path)"}
    assert check_media(media.good_paths[1] + "\0") == "missing (NUL byte in the path)"


def test_check_media_reasons(media):
    assert check_media(media.good_paths[0]) is None
    assert check_media(str(media.image), "image") is None
    for reason, path in media.bad.items():
        assert check_media(str(path)).startswith(reason)
    assert check_media(str(media.bad["corrupt"]), decode=False) is None  # exists: only decoding finds it


def test_tracker_accepts_bad_samples_from_collated_batches():
    tracker = BadSampleTracker(max_bad_fraction=0.5, min_samples=1)
    tracker.update({"index": [0, 1, 2], "bad_samples": [BadSample("a.mp4", "missing")]})
    assert (tracker.delivered, tracker.bad, tracker.bad_fraction) == (3, 1, 0.25)
