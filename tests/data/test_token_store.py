"""VIMPAC token stores: the official value and folder formats, the crop/flip sets, atomic batches, clip sampling."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from vidlab.data.token_store import (
    ClipSampling,
    TokenClipDataset,
    TokenStore,
    TokenStoreError,
    decode_entry,
    encode_entry,
    pretrain_spec,
    store_name,
    video_key,
    view_specs,
)
from vidlab.data.video_tokens import TokenFrameSpec


def test_entry_is_the_official_npz():
    tokens = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    value = encode_entry(tokens, 7)
    npz = np.load(io.BytesIO(value))  # the official load_npz_from_lmdb
    assert npz["tokens"].dtype == np.int16 and npz["label"].dtype == np.int16
    assert (npz["tokens"] == tokens).all() and int(npz["label"]) == 7
    back, label = decode_entry(value)
    assert (back == tokens).all() and label == 7
    with pytest.raises(TokenStoreError, match="int16"):
        encode_entry(np.full((1, 1, 1), 40000), 0)


def test_official_names_and_view_sets():
    spec = TokenFrameSpec(fps=16, short_side=128, output_size=128, crop="center", hflip=False)
    assert store_name("dalle", "ucf101", "train_test", spec) == "dalle_ucf101_train_test_fps16_hflip0_128center128"
    assert store_name("dalle", "k400", "train", pretrain_spec(2, 256)) == "dalle_k400_train_fps2_hflip0_256center256"
    assert video_key("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi") == "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01"
    train = view_specs(16, 128, train_aug=True)
    assert len(train) == 12 and {s.short_side for s in train} == {128, 160} and {s.hflip for s in train} == {False, True}
    assert len(view_specs(16, 128, train_aug=True, flip=False)) == 6  # SSv2
    test = view_specs(16, 128, train_aug=False)
    assert [s.crop for s in test] == ["top", "center", "bottom"] and not any(s.hflip for s in test)


def make_store(path, videos: dict[str, tuple[np.ndarray, int]]) -> TokenStore:
    store = TokenStore(path, writable=True)
    store.put_many((key, tokens, label) for key, (tokens, label) in videos.items())
    store.close()
    return TokenStore(path)


def test_store_roundtrip_and_missing(tmp_path):
    videos = {"a/x": (np.zeros((4, 2, 2), np.int64), 1), "b/y": (np.ones((6, 2, 2), np.int64), 2)}
    store = make_store(tmp_path / "s", videos)
    assert store.keys() == ["a/x", "b/y"] and len(store) == 2 and "a/x" in store and "zz" not in store
    assert store.get("b/y")[1] == 2
    assert sorted(k for k, _, _ in store) == ["a/x", "b/y"]
    with pytest.raises(TokenStoreError, match="no entry"):
        store.get("zz")
    with pytest.raises(TokenStoreError, match="no token store"):
        TokenStore(tmp_path / "absent")


def test_failed_batch_writes_nothing(tmp_path):
    store = TokenStore(tmp_path / "s", writable=True)
    store.put_many([("ok", np.zeros((1, 2, 2)), 0)])
    with pytest.raises(TokenStoreError):  # the second entry cannot be encoded: the first is not written either
        store.put_many([("first", np.zeros((1, 2, 2)), 0), ("bad", np.zeros((2, 2)), 0)])
    assert store.keys() == ["ok"]


def test_clip_sampling(tmp_path):
    frames = np.arange(5)[:, None, None] * np.ones((1, 2, 2), np.int64)  # frame t holds t
    crops = [make_store(tmp_path / f"s{i}", {"v": (frames + 100 * i, 3)}).path for i in range(3)]
    pad = 99
    train = TokenClipDataset(crops, ClipSampling(num_frames=3, train_clips=2), pad, train=True, seed=0)
    item = train[0]
    assert item["tokens"].shape == (2, 3, 2, 2) and item["label"] == 3
    first = item["tokens"][:, :, 0, 0]
    assert (first // 100 == first[0, 0] // 100).all(), "both clips come from the same crop store"
    assert ((first[:, 1:] - first[:, :-1]) == 1).all()
    test = TokenClipDataset(crops, ClipSampling(num_frames=3, test_clips=2), pad, train=False)
    views = test[0]["tokens"][:, :, 0, 0]
    assert views.tolist() == [[0, 1, 2], [2, 3, 4], [100, 101, 102], [102, 103, 104], [200, 201, 202], [202, 203, 204]]
    long = TokenClipDataset(crops[:1], ClipSampling(num_frames=4, stride=2), pad, train=False)
    assert long[0]["tokens"][0, :, 0, 0].tolist() == [0, 2, 4, pad]  # short videos end in [PAD] frames
    again = TokenClipDataset(crops, ClipSampling(num_frames=3, train_clips=2), pad, train=True, seed=0)
    assert torch.equal(again[0]["tokens"], item["tokens"]), "a pure function of (seed, epoch, index)"
