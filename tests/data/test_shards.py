"""WebDataset shards: write records, stream them back split by rank and worker, same samples as map-style."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
import torch
from _data_fixtures import MediaFolder, build_media_folder, to_float
from torch.utils.data import DataLoader

from vidlab.data.datasets import VideoTextDataset, collate_samples
from vidlab.data.formats import MediaRecord
from vidlab.data.quality import BadSampleError, BadSampleTracker
from vidlab.data.shards import ShardDataset, expand_shards, write_shards
from vidlab.data.workers import loader_kwargs
from vidlab.errors import ConfigError
from vidlab.io import VideoReadError
from vidlab.io.sampling import make_sampler

NUM_FRAMES = 3


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> MediaFolder:
    return build_media_folder(tmp_path_factory.mktemp("shard_media"), num_good=3)


@pytest.fixture(scope="module")
def records(media) -> list[MediaRecord]:
    paths = media.good_paths + [str(media.image), str(media.short)]
    return [MediaRecord(p, "image" if p.endswith(".jpg") else "video", (f"caption {i}",), extra={"n": i}) for i, p in enumerate(paths)]


@pytest.fixture(scope="module")
def shards(records, tmp_path_factory):
    return write_shards(records, tmp_path_factory.mktemp("shards"), maxcount=2)


def shard_dataset(shards, **kwargs) -> ShardDataset:
    return ShardDataset(shards, make_sampler("fit_uniform", num_frames=NUM_FRAMES), to_float, num_frames=NUM_FRAMES, **kwargs)


def test_writer_packs_maxcount_samples_of_media_bytes_and_json(records, shards):
    assert [p.name for p in shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    with tarfile.open(shards[0]) as tar:
        assert sorted(tar.getnames()) == ["000000000.json", "000000000.mp4", "000000001.json", "000000001.mp4"]
        assert tar.extractfile("000000000.mp4").read() == Path(records[0].path).read_bytes()
    with tarfile.open(shards[1]) as tar:
        assert "000000003.jpg" in tar.getnames()


def test_streamed_samples_equal_the_map_style_dataset(records, shards):
    streamed = sorted(shard_dataset(shards[0].parent, caption_mode="first"), key=lambda s: s["index"])
    mapped = VideoTextDataset(
        records, make_sampler("fit_uniform", num_frames=NUM_FRAMES), to_float, num_frames=NUM_FRAMES, caption_mode="first"
    )
    assert [s["index"] for s in streamed] == list(range(len(records)))
    for s in streamed:
        m = mapped[s["index"]]
        assert torch.equal(s["video"], m["video"]) and torch.equal(s["frame_mask"], m["frame_mask"])
        assert (s["caption"], s["n"]) == (m["caption"], m["n"])
    assert streamed[4]["frame_mask"].tolist() == [True, True, True]  # short.mp4 has exactly 3 frames
    assert streamed[3]["video"].shape == (1, 3, 48, 64)  # the image: one frame


def test_ranks_read_disjoint_shards_covering_all(shards):
    seen = [sorted(s["index"] for s in shard_dataset(shards, rank=r, world_size=2, shuffle=True)) for r in range(2)]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == [0, 1, 2, 3, 4]


def test_workers_split_a_ranks_shards_and_every_sample_arrives_once(shards):
    loader = DataLoader(shard_dataset(shards, image_frames="repeat"), batch_size=2, num_workers=2, collate_fn=collate_samples, **loader_kwargs(2))
    indices = sorted(i for batch in loader for i in batch["index"].tolist())
    assert indices == [0, 1, 2, 3, 4]


def test_shard_order_is_shuffled_per_epoch_identically_on_all_ranks(tmp_path, records):
    many = write_shards(records * 4, tmp_path, maxcount=1)  # 20 one-sample shards
    rank0, rank1 = (shard_dataset(many, rank=r, world_size=2, shuffle=True, seed=1) for r in range(2))
    orders = [[i for i, _ in rank0.assigned_shards(epoch)] for epoch in (0, 1)]
    assert orders[0] != orders[1]
    for epoch in (0, 1):  # both ranks cut the same permutation
        assert sorted([i for i, _ in rank0.assigned_shards(epoch)] + [i for i, _ in rank1.assigned_shards(epoch)]) == list(range(20))


def test_bad_sample_in_a_shard_is_skipped_and_reported(tmp_path, media, records):
    bad_record = MediaRecord(str(media.bad["not a video"]), captions=("text",))
    shards = write_shards([records[0], bad_record, records[1]], tmp_path, maxcount=10)
    tracker = BadSampleTracker(max_bad_fraction=0.5, min_samples=1)
    batches = list(tracker.wrap(DataLoader(shard_dataset(shards), batch_size=3, collate_fn=collate_samples)))
    assert batches[0]["index"].tolist() == [0, 2]
    assert list(tracker.files) == [f"{shards[0]}:000000001"]
    assert tracker.files[f"{shards[0]}:000000001"][0].startswith("not a video")
    with pytest.raises(BadSampleError, match="000000001: not a video"):
        list(shard_dataset(shards, bad_samples="raise"))


def test_writer_and_reader_errors(tmp_path, media):
    with pytest.raises(VideoReadError, match="missing"):
        write_shards([MediaRecord(str(media.bad["missing"]))], tmp_path / "out")
    with pytest.raises(ConfigError, match="no shards found"):
        expand_shards(str(tmp_path / "nothing-*.tar"))
    assert expand_shards(str(tmp_path / "d-{000..002}.tar")) == [str(tmp_path / f"d-00{i}.tar") for i in range(3)]
