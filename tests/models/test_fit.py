"""Frozen in Time: registry and create_model, official checkpoints, curriculum inflation, text pooling, translation."""

from __future__ import annotations

import pytest
import torch
from _fit_fixtures import TINY_OFFICIAL_ARGS, official_fit_state_dict, save_official_checkpoint

import vidlab
from vidlab.errors import ConfigError
from vidlab.models import create_model, fit_config_from_official, list_models, model_config
from vidlab.models.checkpoint import load_pickled_checkpoint
from vidlab.models.errors import CheckpointError
from vidlab.models.fit import inflate_temporal_embed


def test_registry_lists_and_builds_architectures():
    assert {"fit-base-p16-224", "fit-tiny"} <= set(vidlab.list_models()) == set(list_models())
    base = model_config("fit-base-p16-224")
    assert (base.video.embed_dim, base.video.depth, base.video.num_frames, base.projection_dim) == (768, 12, 4, 256)
    model = vidlab.create_model("fit-tiny", **{"video.num_frames": 2, "projection_dim": 8})
    assert not model.training
    video_embeds = model.encode_video(torch.randn(3, 2, 3, 32, 32))
    text_embeds = model.encode_text(torch.randint(0, 1000, (3, 7)), torch.ones(3, 7, dtype=torch.long))
    assert video_embeds.shape == text_embeds.shape == (3, 8)
    assert model.video_encoder.temporal_embed.shape == (1, 2, 64)


def test_bad_names_and_overrides_are_config_errors():
    with pytest.raises(ConfigError, match="unknown model 'fit-huge'"):
        create_model("fit-huge")
    with pytest.raises(ConfigError, match="video.num_framez"):
        create_model("fit-tiny", **{"video.num_framez": 2})
    with pytest.raises(ConfigError, match="unknown model family"):
        create_model({"family": "nope"})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"video.patch_size": 7}, "video.img_size 32 is not a multiple of patch_size 7"),
        ({"video.time_init": "ones"}, "video.time_init must be 'zeros' or 'rand'"),
        ({"video.num_frames": 0}, "video.num_frames must be >= 1, got 0"),
        ({"video.drop_path_rate": 1.5}, r"video.drop_path_rate must be in \[0, 1\), got 1.5"),
        ({"video.num_heads": 3}, "width 64 is not divisible by num_heads 3"),
        ({"projection_dim": 0}, "projection_dim must be >= 1, got 0"),
    ],
)
def test_out_of_range_architecture_values_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        create_model("fit-tiny", **overrides)


def test_official_checkpoint_keys_land_on_the_right_parameters(official_4f):
    path, state = official_4f
    model = create_model("fit-tiny", checkpoint=path)
    pairs = {
        "video_model.blocks.1.timeattn.qkv.weight": model.video_encoder.blocks[1].time_attn.qkv.weight,
        "video_model.blocks.0.attn.proj.bias": model.video_encoder.blocks[0].space_attn.proj.bias,
        "video_model.blocks.0.norm3.weight": model.video_encoder.blocks[0].time_norm.weight,
        "video_model.blocks.0.norm1.weight": model.video_encoder.blocks[0].space_norm.weight,
        "video_model.blocks.1.norm2.bias": model.video_encoder.blocks[1].mlp_norm.bias,
        "video_model.pos_embed": model.video_encoder.spatial_pos_embed,
        "video_model.patch_embed.proj.weight": model.video_encoder.patch_embed.weight,
        "video_model.norm.weight": model.video_encoder.final_norm.weight,
        "text_model.transformer.layer.1.ffn.lin2.weight": model.text_encoder.backbone.transformer.layer[
            1
        ].ffn.lin2.weight,
        "txt_proj.1.weight": model.text_proj.weight,
        "vid_proj.0.bias": model.video_proj.bias,
    }
    for official, parameter in pairs.items():
        assert torch.equal(parameter, state["module." + official]), official


def test_prefix_free_state_dict_and_old_position_ids_load(official_4f):
    _, state = official_4f
    bare = {k.removeprefix("module."): v for k, v in state.items()}
    bare["text_model.embeddings.position_ids"] = torch.arange(64)[None]
    model = create_model("fit-tiny", checkpoint=bare)
    assert torch.equal(model.video_proj.weight, state["module.vid_proj.0.weight"])


def test_architecture_from_the_checkpoint_alone(official_4f):
    """No config given: the pickled official arch.args, corrected to the tensor shapes."""
    path, state = official_4f
    model = create_model(checkpoint=path)
    assert model.video_encoder.temporal_embed.shape == (1, 4, 64)
    assert model.video_proj.weight.shape == (32, 64) and len(model.video_encoder.blocks) == 2
    assert torch.equal(
        model.text_encoder.backbone.embeddings.word_embeddings.weight,
        state["module.text_model.embeddings.word_embeddings.weight"],
    )


# ---------------------------------------------------------------------------------------------------------
# curriculum: fewer frames in the checkpoint than in the model


def test_inflation_modes_by_hand():
    e0, e1 = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 7.0])
    two_frames = torch.stack([e0, e1])[None]
    zeros = inflate_temporal_embed(two_frames, 4, "zeros")[0]
    nearest = inflate_temporal_embed(two_frames, 4, "interp")[0]
    bilinear = inflate_temporal_embed(two_frames, 4, "bilinear")[0]
    torch.testing.assert_close(zeros, torch.stack([e0, e1, torch.zeros(2), torch.zeros(2)]))
    torch.testing.assert_close(nearest, torch.stack([e0, e0, e1, e1]))
    # align_corners=False: output frame i samples source position (i + 0.5) / 2 - 0.5, clamped to [0, 1].
    torch.testing.assert_close(bilinear, torch.stack([e0, 0.75 * e0 + 0.25 * e1, 0.25 * e0 + 0.75 * e1, e1]))
    torch.testing.assert_close(inflate_temporal_embed(two_frames, 1, "bilinear")[0], e0[None])


@pytest.mark.parametrize("mode", ["zeros", "interp", "bilinear"])
def test_one_frame_checkpoint_into_four_frame_model(tmp_path, mode):
    state = official_fit_state_dict(num_frames=1, seed=5)
    args = {**TINY_OFFICIAL_ARGS, "video_params": {**TINY_OFFICIAL_ARGS["video_params"], "num_frames": 1}}
    path = save_official_checkpoint(tmp_path / "one_frame.pth", state, args)
    model = create_model("fit-tiny", checkpoint=path, **{"init.temporal_inflation": mode})
    temporal = model.video_encoder.temporal_embed[0]
    source = state["module.video_model.temporal_embed"][0, 0]
    assert temporal.shape == (4, 64)
    torch.testing.assert_close(temporal[0], source)
    if mode == "zeros":
        assert torch.count_nonzero(temporal[1:]) == 0
    else:  # one source frame: nearest and bilinear both replicate it
        torch.testing.assert_close(temporal[1:], source.expand(3, 64))
    assert torch.equal(
        model.video_encoder.blocks[0].time_attn.qkv.weight, state["module.video_model.blocks.0.timeattn.qkv.weight"]
    )


def test_longer_checkpoint_is_truncated_and_other_resolution_refused(official_4f):
    path, state = official_4f
    model = create_model("fit-tiny", checkpoint=path, **{"video.num_frames": 2})
    torch.testing.assert_close(model.video_encoder.temporal_embed, state["module.video_model.temporal_embed"][:, :2])
    with pytest.raises(CheckpointError, match="spatial positions"):
        create_model("fit-tiny", checkpoint=path, **{"video.img_size": 48})


# ---------------------------------------------------------------------------------------------------------
# text towers and the translation of official configs


def test_text_pooling_rule():
    ids, mask = torch.randint(0, 1000, (2, 6)), torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    distil = create_model("fit-tiny")
    with torch.no_grad():
        hidden = distil.text_encoder.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        torch.testing.assert_close(distil.text_encoder(ids, mask), hidden[:, 0])
        torch.testing.assert_close(distil.encode_text(ids, mask), distil.text_proj(torch.relu(hidden[:, 0])))
    bert_config = dict(
        vocab_size=1000,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
    )
    cfg = fit_config_from_official(
        {"text_params": {"model": "bert-base-uncased"}},
        vit_kwargs=dict(img_size=32, patch_size=8, embed_dim=64, depth=1, num_heads=4),
        text_config=bert_config,
    )
    assert (cfg.text.arch, cfg.text.pooling) == ("bert", "pooler")
    bert = create_model(cfg)
    with torch.no_grad():
        pooled = bert.text_encoder.backbone(input_ids=ids, attention_mask=mask).pooler_output
        torch.testing.assert_close(bert.text_encoder(ids, mask), pooled)


def test_official_kwargs_translate_to_a_vidlab_config():
    cfg = fit_config_from_official(
        {
            "video_params": {"model": "SpaceTimeTransformer", "num_frames": 8, "time_init": "rand"},
            "text_params": {"model": "distilbert-base-uncased", "pretrained": True},
            "projection": "",
            "projection_dim": 512,
            "load_temporal_fix": "bilinear",
        }
    )
    assert (cfg.video.num_frames, cfg.video.time_init, cfg.video.embed_dim, cfg.video.depth) == (8, "rand", 768, 12)
    assert (cfg.projection, cfg.projection_dim, cfg.init.temporal_inflation) == ("none", 512, "bilinear")
    assert (cfg.text.arch, cfg.text.pooling, cfg.text.hf_config["n_layers"]) == ("distilbert", "cls", 6)
    assert fit_config_from_official(TINY_OFFICIAL_ARGS, vit_kwargs={"depth": 3}).video.depth == 3
    with pytest.raises(ConfigError, match="roberta-base"):
        fit_config_from_official({"text_params": {"model": "roberta-base"}})
    with pytest.raises(ConfigError, match="attention_style"):
        fit_config_from_official({"video_params": {"attention_style": "timesformer"}})
    with pytest.raises(ConfigError, match="unknown SpaceTimeTransformer argument 'hybrid_backbone'"):
        fit_config_from_official({}, vit_kwargs={"hybrid_backbone": None})


def test_projection_none_returns_pooled_features(official_4f):
    cfg = fit_config_from_official(
        {**TINY_OFFICIAL_ARGS, "projection": ""},
        vit_kwargs=dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4),
        text_config=dict(vocab_size=1000, max_position_embeddings=64, dim=64, n_layers=2, n_heads=4, hidden_dim=128),
    )
    official = load_pickled_checkpoint(official_4f[0])["state_dict"]
    without_proj = {k: v for k, v in official.items() if "_proj." not in k}
    model = create_model(cfg, checkpoint={"state_dict": without_proj})
    frames = torch.randn(1, 4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_video(frames), model.video_encoder(frames))
