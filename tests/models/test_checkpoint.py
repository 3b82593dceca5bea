"""Checkpoint I/O: restricted unpickling, refusal of code-running files, key maps and the strict-load report,
vidlab's own format, image ViT initialisation (timm and Google npz layouts)."""

from __future__ import annotations

import builtins
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from _fit_fixtures import TINY_OFFICIAL_ARGS, official_fit_state_dict

from vidlab.models import create_model, model_config
from vidlab.models.checkpoint import (
    ForeignObject,
    KeyMap,
    load_pickled_checkpoint,
    save_vidlab_checkpoint,
    summarize_keys,
)
from vidlab.models.errors import CheckpointError, StateDictMismatchError, UnsafeCheckpointError
from vidlab.models.fit import official_arch_args

# ---------------------------------------------------------------------------------------------------------
# restricted unpickling


def test_foreign_config_becomes_an_inert_record(official_4f):
    path, state = official_4f
    checkpoint = load_pickled_checkpoint(path)
    config = checkpoint["config"]
    assert isinstance(config, ForeignObject) and config.foreign_class == "parse_config.ConfigParser"
    assert config.state["_config"]["arch"]["args"]["projection_dim"] == 32
    cfg_fname = config.state["cfg_fname"]
    assert isinstance(cfg_fname, ForeignObject) and cfg_fname.foreign_class == "pathlib.PosixPath"
    assert official_arch_args(checkpoint) == TINY_OFFICIAL_ARGS
    assert torch.equal(checkpoint["state_dict"]["module.video_model.cls_token"], state["module.video_model.cls_token"])


class _SystemCall:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Eval:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (builtins.eval, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("payload", [_SystemCall, _Eval])
@pytest.mark.parametrize("container", ["torch-zip", "torch-legacy", "plain-pickle"])
def test_code_running_checkpoint_is_refused_and_runs_nothing(tmp_path, payload, container):
    marker = tmp_path / "executed"
    evil = {"state_dict": {"w": torch.zeros(2)}, "config": payload(marker)}
    path = tmp_path / "model_best.pth"
    if container == "plain-pickle":  # a bare pickle: tensors inside would themselves be refused (see below)
        path.write_bytes(pickle.dumps({**evil, "state_dict": {"w": [0.0]}}, protocol=2))
    else:
        torch.save(evil, path, _use_new_zipfile_serialization=container == "torch-zip")
    with pytest.raises(
        UnsafeCheckpointError, match=r"refusing to unpickle global '(posix|os|builtins)\.(system|eval)'"
    ):
        load_pickled_checkpoint(path)
    with pytest.raises(UnsafeCheckpointError):
        create_model("fit-tiny", checkpoint=path)
    assert not marker.exists()


def test_tensor_pickled_without_torch_save_is_refused(tmp_path):
    """pickle.dumps(tensor) rebuilds through torch.storage._load_from_bytes, an unrestricted torch.load."""
    (tmp_path / "bare.pkl").write_bytes(pickle.dumps({"w": torch.zeros(2)}))
    with pytest.raises(UnsafeCheckpointError, match="torch.storage._load_from_bytes"):
        load_pickled_checkpoint(tmp_path / "bare.pkl")


def test_unreadable_files_give_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="file not found"):
        load_pickled_checkpoint(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_pickled_checkpoint(tmp_path / "junk.pth")
    torch.save({"weights": [1, 2]}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"unrecognized checkpoint \(keys 'weights'\); known formats: vidlab"):
        create_model("fit-tiny", checkpoint=tmp_path / "other.pth")


def test_an_unrecognized_checkpoint_error_says_what_the_file_holds(tmp_path):
    blocks = {f"blocks.{i}.attn.{part}.weight": torch.zeros(1) for i in range(2) for part in "qkv"}
    torch.save({"model": {"foo.weight": torch.zeros(1)}, "epoch": 3}, tmp_path / "wrapped.pth")
    with pytest.raises(CheckpointError, match=r"\(keys 'model', 'epoch'; 'model' holds 1 tensor: foo.weight\)"):
        create_model("fit-tiny", checkpoint=tmp_path / "wrapped.pth")
    torch.save(blocks, tmp_path / "flat.pth")
    expected = r"\(6 tensors: blocks.\{0,1\}.attn.k.weight, blocks.\{0,1\}.attn.q.weight, blocks.\{0,1\}.attn.v.weight\)"
    with pytest.raises(CheckpointError, match=expected):  # without a model name: no vidlab names to load them as
        create_model(checkpoint=tmp_path / "flat.pth")
    torch.save({**blocks, "head.weight": torch.zeros(1)}, tmp_path / "more.pth")
    with pytest.raises(CheckpointError, match=r"attn.v.weight, ... \(1 more groups\)\)"):
        create_model(checkpoint=tmp_path / "more.pth")


# ---------------------------------------------------------------------------------------------------------
# key maps and the strict-load report


def test_key_map_renames_ignores_and_reports_leftovers():
    key_map = KeyMap(rules=((r"enc\.(\d+)\.w", r"blocks.\1.weight"),), ignore=(r"head\..*",))
    mapped = key_map.apply(
        {"enc.0.w": torch.zeros(1), "enc.1.w": torch.ones(1), "head.w": torch.zeros(1), "x": torch.zeros(1)}
    )
    assert sorted(mapped.tensors) == ["blocks.0.weight", "blocks.1.weight"]
    assert mapped.source_of["blocks.1.weight"] == "enc.1.w"
    assert (mapped.ignored, mapped.unmapped) == (["head.w"], ["x"])


def test_summarize_keys_groups_layers_and_leaves():
    keys = ["v.blocks.0.norm.weight", "v.blocks.0.norm.bias", "v.blocks.1.norm.weight", "v.blocks.1.norm.bias", "cls"]
    assert summarize_keys(keys) == ["cls", "v.blocks.{0,1}.norm.{bias,weight}"]


def test_strict_load_failure_lists_every_bad_key(tmp_path):
    state = official_fit_state_dict(num_frames=4)
    del state["module.video_model.blocks.1.norm3.weight"]
    del state["module.video_model.blocks.1.norm3.bias"]
    state["module.video_model.blocks.0.extra_gate"] = torch.zeros(3)
    state["module.vid_proj.0.weight"] = torch.zeros(16, 64)
    with pytest.raises(StateDictMismatchError) as failure:
        create_model("fit-tiny", checkpoint={"state_dict": state})
    message = str(failure.value)
    assert "missing (in the model, not in the checkpoint): 2 keys" in message
    assert "video_encoder.blocks.1.time_norm.{bias,weight}" in message
    assert "video_model.blocks.0.extra_gate" in message
    assert "vid_proj.0.weight (as video_proj.weight): checkpoint (16, 64) vs model (32, 64)" in message
    assert set(failure.value.report.missing) == {
        "video_encoder.blocks.1.time_norm.weight",
        "video_encoder.blocks.1.time_norm.bias",
    }


# ---------------------------------------------------------------------------------------------------------
# vidlab's own format


def test_vidlab_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = create_model("fit-tiny")
    save_vidlab_checkpoint(model, model_config("fit-tiny"), tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.yaml", "model.safetensors"]
    for checkpoint in (tmp_path / "ckpt", tmp_path / "ckpt" / "model.safetensors"):
        loaded = create_model(checkpoint=checkpoint)
        for name, tensor in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[name], tensor), name
    frames = torch.randn(1, 4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_video(frames), model.encode_video(frames), atol=0, rtol=0)


def test_safetensors_without_config_needs_a_model_name(tmp_path):
    model = create_model("fit-tiny")
    save_vidlab_checkpoint(model, model_config("fit-tiny"), tmp_path)
    (tmp_path / "config.yaml").unlink()
    with pytest.raises(CheckpointError, match="no config.yaml"):
        create_model(checkpoint=tmp_path)
    assert torch.equal(create_model("fit-tiny", checkpoint=tmp_path).video_proj.weight, model.video_proj.weight)


def test_a_checkpoint_of_another_family_is_named_as_such(tmp_path):
    save_vidlab_checkpoint(create_model("fit-tiny"), model_config("fit-tiny"), tmp_path)
    with pytest.raises(CheckpointError, match="a 'frozen_in_time' model, but the config builds a 'singularity' one"):
        create_model("singularity-tiny", checkpoint=tmp_path)


# ---------------------------------------------------------------------------------------------------------
# image ViT initialisation


def timm_vit_state_dict(dim: int = 64, depth: int = 2, patch: int = 8, img: int = 32, classes: int = 10) -> dict:
    """Random weights under timm's VisionTransformer names (vit_base_patch16_224 layout, tiny sizes)."""
    g = torch.Generator().manual_seed(3)
    shapes = {
        "cls_token": (1, 1, dim),
        "pos_embed": (1, 1 + (img // patch) ** 2, dim),
        "patch_embed.proj.weight": (dim, 3, patch, patch),
        "patch_embed.proj.bias": (dim,),
        "norm.weight": (dim,),
        "norm.bias": (dim,),
        "head.weight": (classes, dim),
        "head.bias": (classes,),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        shapes.update(
            {
                b + "norm1.weight": (dim,),
                b + "norm1.bias": (dim,),
                b + "attn.qkv.weight": (3 * dim, dim),
                b + "attn.qkv.bias": (3 * dim,),
                b + "attn.proj.weight": (dim, dim),
                b + "attn.proj.bias": (dim,),
                b + "norm2.weight": (dim,),
                b + "norm2.bias": (dim,),
                b + "mlp.fc1.weight": (4 * dim, dim),
                b + "mlp.fc1.bias": (4 * dim,),
                b + "mlp.fc2.weight": (dim, 4 * dim),
                b + "mlp.fc2.bias": (dim,),
            }
        )
    return {name: torch.randn(shape, generator=g) for name, shape in shapes.items()}


def google_npz_arrays(timm: dict, heads: int, big_vision: bool) -> dict[str, np.ndarray]:
    """The same weights in the flax layout of Google's ViT npz files (HWIO conv, per-head q/k/v kernels)."""
    dim = timm["norm.weight"].shape[0]
    head_dim = dim // heads
    mha, mlp, ln2 = (
        ("MultiHeadDotProductAttention_0", "MlpBlock_0", "LayerNorm_1")
        if big_vision
        else ("MultiHeadDotProductAttention_1", "MlpBlock_3", "LayerNorm_2")
    )
    out = {
        "embedding/kernel": timm["patch_embed.proj.weight"].permute(2, 3, 1, 0),
        "embedding/bias": timm["patch_embed.proj.bias"],
        "cls": timm["cls_token"],
        "Transformer/encoder_norm/scale": timm["norm.weight"],
        "Transformer/encoder_norm/bias": timm["norm.bias"],
        "head/kernel": timm["head.weight"].T,
        "head/bias": timm["head.bias"],
    }
    out["pos_embedding" if big_vision else "Transformer/posembed_input/pos_embedding"] = timm["pos_embed"]
    i = 0
    while f"blocks.{i}.norm1.weight" in timm:
        b, t = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        out[b + "LayerNorm_0/scale"], out[b + "LayerNorm_0/bias"] = timm[t + "norm1.weight"], timm[t + "norm1.bias"]
        out[b + f"{ln2}/scale"], out[b + f"{ln2}/bias"] = timm[t + "norm2.weight"], timm[t + "norm2.bias"]
        for j, name in enumerate(("query", "key", "value")):
            rows = slice(j * dim, (j + 1) * dim)
            out[b + f"{mha}/{name}/kernel"] = timm[t + "attn.qkv.weight"][rows].T.reshape(dim, heads, head_dim)
            out[b + f"{mha}/{name}/bias"] = timm[t + "attn.qkv.bias"][rows].reshape(heads, head_dim)
        out[b + f"{mha}/out/kernel"] = timm[t + "attn.proj.weight"].T.reshape(heads, head_dim, dim)
        out[b + f"{mha}/out/bias"] = timm[t + "attn.proj.bias"]
        for r in range(2):
            out[b + f"{mlp}/Dense_{r}/kernel"] = timm[t + f"mlp.fc{r + 1}.weight"].T
            out[b + f"{mlp}/Dense_{r}/bias"] = timm[t + f"mlp.fc{r + 1}.bias"]
        i += 1
    return {k: v.numpy() for k, v in out.items()}


def _assert_spatial_weights_equal(video_encoder, timm: dict) -> None:
    assert torch.equal(video_encoder.spatial_pos_embed, timm["pos_embed"])
    assert torch.equal(video_encoder.cls_token, timm["cls_token"])
    assert torch.equal(video_encoder.patch_embed.weight, timm["patch_embed.proj.weight"])
    assert torch.equal(video_encoder.final_norm.weight, timm["norm.weight"])
    for i, block in enumerate(video_encoder.blocks):
        assert torch.equal(block.space_norm.weight, timm[f"blocks.{i}.norm1.weight"])
        assert torch.equal(block.space_attn.qkv.weight, timm[f"blocks.{i}.attn.qkv.weight"])
        assert torch.equal(block.space_attn.proj.weight, timm[f"blocks.{i}.attn.proj.weight"])
        assert torch.equal(block.mlp_norm.bias, timm[f"blocks.{i}.norm2.bias"])
        assert torch.equal(block.mlp.fc2.weight, timm[f"blocks.{i}.mlp.fc2.weight"])


def test_vit_init_from_timm_state_dict(tmp_path, caplog):
    timm = timm_vit_state_dict()
    torch.save({"model": timm}, tmp_path / "vit.pth")
    with caplog.at_level("INFO", logger="vidlab.models.fit"):
        model = create_model("fit-tiny", **{"init.vit_weights": str(tmp_path / "vit.pth")})
    _assert_spatial_weights_equal(model.video_encoder, timm)
    block = model.video_encoder.blocks[1]
    assert torch.count_nonzero(block.time_attn.qkv.weight) == 0 and torch.equal(
        block.time_attn.proj.weight, torch.ones(64, 64)
    )
    assert torch.count_nonzero(model.video_encoder.temporal_embed) == 0
    assert "ignored on purpose: 2 keys" in caplog.text and "head.{bias,weight}" in caplog.text


@pytest.mark.parametrize("big_vision", [False, True])
def test_vit_init_from_google_npz_equals_timm(tmp_path, big_vision):
    timm = timm_vit_state_dict()
    np.savez(tmp_path / "vit.npz", **google_npz_arrays(timm, heads=4, big_vision=big_vision))
    model = create_model("fit-tiny", **{"init.vit_weights": str(tmp_path / "vit.npz")})
    _assert_spatial_weights_equal(model.video_encoder, timm)


def test_vit_weights_that_do_not_fit_are_reported(tmp_path):
    timm = timm_vit_state_dict(dim=32)
    timm["blocks.0.ls1.gamma"] = torch.ones(32)
    torch.save(timm, tmp_path / "vit.pth")
    with pytest.raises(StateDictMismatchError) as failure:
        create_model("fit-tiny", **{"init.vit_weights": str(tmp_path / "vit.pth")})
    assert "blocks.0.ls1.gamma" in failure.value.report.unexpected
    assert "cls_token: checkpoint (1, 1, 32) vs model (1, 1, 64)" in failure.value.report.shape_mismatch
