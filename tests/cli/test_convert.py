"""`vidlab convert`: official FiT checkpoint or a vidlab run's .ckpt -> vidlab format -> create_model gives identical outputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from vidlab.cli.main import main
from vidlab.golden import golden_dir
from vidlab.models import create_model

OFFICIAL = golden_dir(Path(__file__).resolve().parents[2]) / "files" / "fit_spacetime" / "model_best.pth"
needs_official = pytest.mark.skipif(not OFFICIAL.is_file(), reason=f"no official FiT checkpoint at {OFFICIAL}")


@needs_official
def test_convert_round_trip_gives_identical_embeddings(tmp_path, caplog):
    with caplog.at_level("INFO"):
        assert main(["convert", str(OFFICIAL), str(tmp_path / "ckpt"), "--model", "fit-tiny"]) == 0
    assert "83 tensors loaded" in caplog.text
    converted = create_model(checkpoint=tmp_path / "ckpt")
    direct = create_model("fit-tiny", checkpoint=OFFICIAL)
    torch.manual_seed(0)
    frames = torch.randn(2, 3, 3, 32, 32)
    ids, mask = torch.randint(0, 1000, (2, 9)), torch.ones(2, 9, dtype=torch.long)
    with torch.no_grad():
        assert torch.equal(converted.encode_video(frames), direct.encode_video(frames))
        assert torch.equal(converted.encode_text(ids, mask), direct.encode_text(ids, mask))


@needs_official
def test_convert_takes_overrides_and_keeps_existing_output(tmp_path, capsys):
    assert main(["convert", "--model", "fit-tiny", str(OFFICIAL), str(tmp_path), "video.num_frames=8"]) == 0
    assert create_model(checkpoint=tmp_path).video_encoder.temporal_embed.shape == (1, 8, 64)
    assert main(["convert", str(OFFICIAL), str(tmp_path), "--model", "fit-tiny"]) == 2
    assert "already holds model.safetensors" in capsys.readouterr().err


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_convert_refuses_a_code_running_file(tmp_path, capsys):
    marker = tmp_path / "executed"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "config": _Payload(marker)}, tmp_path / "evil.pth")
    assert main(["convert", str(tmp_path / "evil.pth"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vidlab: error:") and "refusing to unpickle global" in err and len(err.splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "out").exists()


CLIP_ARCHIVE = OFFICIAL.parents[1] / "clip_visual" / "ViT-tiny.pt"


@pytest.mark.skipif(not CLIP_ARCHIVE.is_file(), reason=f"no official CLIP archive at {CLIP_ARCHIVE}")
def test_convert_clip_torchscript_archive(tmp_path):
    assert main(["convert", str(CLIP_ARCHIVE), str(tmp_path / "clip")]) == 0
    converted, direct = create_model(checkpoint=tmp_path / "clip"), create_model(checkpoint=CLIP_ARCHIVE)
    size = converted.visual.image_size
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.equal(converted.encode_image(images), direct.encode_image(images))


def test_convert_takes_a_vidlab_training_checkpoint(evl_dummy_config, tmp_path, caplog, capsys):
    from vidlab.engine.config import load_train_config
    from vidlab.engine.runner import train

    result = train(load_train_config(evl_dummy_config()))
    checkpoints = result.stage_dirs[0] / "checkpoints"
    with caplog.at_level("INFO"):
        assert main(["convert", str(checkpoints / "last.ckpt"), str(tmp_path / "converted")]) == 0
    assert "a vidlab training checkpoint" in caplog.text and "tensors loaded" in caplog.text  # the strict load's report
    converted, final = create_model(checkpoint=tmp_path / "converted"), create_model(checkpoint=result.model_dir)
    assert converted.state_dict().keys() == final.state_dict().keys()
    clips = torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(converted(clips), final(clips))
    # a periodic checkpoint: its own tensors, under the model's names
    periodic = next(checkpoints.glob("step*.ckpt"))
    assert main(["convert", str(periodic), str(tmp_path / "periodic")]) == 0
    saved = torch.load(periodic, weights_only=True)["state_dict"]
    for name, tensor in create_model(checkpoint=tmp_path / "periodic").state_dict().items():
        assert torch.equal(tensor, saved[f"model.{name}"]), name
    # away from its run, the checkpoint has no config to rebuild its model from: one line says so
    alone = tmp_path / "alone" / "x" / "last.ckpt"
    alone.parent.mkdir(parents=True)
    (checkpoints / "last.ckpt").rename(alone)
    capsys.readouterr()
    assert main(["convert", str(alone), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "a vidlab training checkpoint, but no" in err and "config.yaml" in err
