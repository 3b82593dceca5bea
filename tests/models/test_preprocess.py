import pytest
import torch

import vidlab


@pytest.mark.parametrize("name, size", [("fit-tiny", 32), ("clip-tiny", 32), ("evl-tiny", 32), ("singularity-tiny", 32)])
def test_transforms_match_the_model_input(name, size):
    frames = torch.randint(0, 256, (3, 3, 48, 64), dtype=torch.uint8)
    for train in (False, True):
        out = vidlab.create_transforms(name, train=train)(frames)
        assert out.shape == (3, 3, size, size) and out.dtype == torch.float32


def test_preset_follows_the_family_and_overrides_apply():
    fit = vidlab.create_transforms("fit-tiny")
    sing = vidlab.create_transforms("singularity-tiny")
    assert fit.config.norm == "imagenet" and sing.config.norm == "half"
    assert vidlab.create_transforms("fit-tiny", train=True, hflip=0.0).config.hflip == 0.0
    # an FiT model's frames go through its encoder after the matching transform
    model = vidlab.create_model("fit-tiny")
    clip = vidlab.create_transforms("fit-tiny")(torch.randint(0, 256, (4, 3, 40, 50), dtype=torch.uint8))
    with torch.no_grad():
        assert model.encode_video(clip[None]).shape == (1, 32)
