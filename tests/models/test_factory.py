"""`resolve_model_config`: the one way every recipe turns its `model` section into a typed model config."""

import pytest
from omegaconf import OmegaConf

from vidlab.errors import ConfigError
from vidlab.models.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from vidlab.models.factory import Decided, model_config, recorded_sizes, resolve_model_config


@pytest.fixture
def recorded_run(tmp_path):
    """A vidlab checkpoint folder whose config records a 3-block, 48-wide video tower."""
    cfg = model_config("fit-tiny")
    cfg.video.depth, cfg.video.embed_dim, cfg.projection_dim = 3, 48, 24
    (tmp_path / WEIGHTS_FILE).write_bytes(b"")  # only the recorded config is read
    OmegaConf.save(cfg, tmp_path / CONFIG_FILE)
    return str(tmp_path)


def test_recorded_sizes_are_the_familys_size_keys(recorded_run):
    sizes = recorded_sizes(recorded_run, "frozen_in_time")
    assert (sizes["video.depth"], sizes["video.embed_dim"], sizes["projection_dim"]) == (3, 48, 24)
    assert "video.num_frames" not in sizes  # a frame count is not a size the model adopts
    assert recorded_sizes(recorded_run, "clip") == {}  # another family's checkpoint records nothing for it


def test_precedence_base_derived_recorded_stated_decided(recorded_run):
    base = model_config("fit-tiny")
    section = {"base": "fit-tiny", "video": {"embed_dim": 64}, "video.num_heads": 2}

    def derived(requested):
        assert requested.video.embed_dim == 64  # the requested config: base with the stated keys over it
        return [("a text folder", {"projection_dim": 16, "video.depth": 5, "video.embed_dim": 32})]

    mc = resolve_model_config(
        section, "frozen_in_time", derived=derived, start=recorded_run, decided={"video.num_frames": Decided(3, "data")}
    )
    assert mc.video.embed_dim == 64  # stated beats recorded and derived
    assert mc.video.depth == 3 and mc.projection_dim == 24  # recorded beats derived
    assert mc.video.num_heads == 2 and mc.video.num_frames == 3  # a dotted stated key; a decided one
    assert mc.video.patch_size == base.video.patch_size  # untouched: the base's


def test_a_stated_key_that_contradicts_a_decided_one_is_a_one_line_error():
    decided = {"video.num_frames": Decided(3, "the data's frame count")}
    with pytest.raises(ConfigError, match=r"model.video.num_frames=4 contradicts the recipe \(the data's frame count: 3\)"):
        resolve_model_config({"base": "fit-tiny", "video": {"num_frames": 4}}, "frozen_in_time", decided=decided)
    assert resolve_model_config({"base": "fit-tiny", "video": {"num_frames": 3}}, "frozen_in_time", decided=decided)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"base": "clip-tiny"}, "is a 'clip' model; this recipe trains 'frozen_in_time' models"),
        ({"base": "no-such-model"}, "unknown model 'no-such-model'"),
        ({"base": "fit-tiny", "video": {"depth": "deep"}}, "could not be converted to Integer"),
    ],
)
def test_bad_sections_are_config_errors(section, message):
    with pytest.raises(ConfigError, match=message):
        resolve_model_config(section, "frozen_in_time")
