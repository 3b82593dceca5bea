"""The direction probe's parts: frame picking, the readouts' order (in)sensitivity, the template task on a frozen
tower, the choice scores."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from vidlab.data.shapesbench import OPPOSITE
from vidlab.errors import ConfigError
from vidlab.experiments.singularity_direction import (
    TEST_FRAMES,
    DirectionReadout,
    MotionClips,
    TemplateReadout,
    choice_scores,
    draw_batch,
    pick_frames,
    recorded_tokenizer,
    run_direction_probe,
    train_readout,
)
from vidlab.losses.singularity import losses_of_features
from vidlab.models import create_model, model_config
from vidlab.models.checkpoint import save_vidlab_checkpoint
from vidlab.models.factory import apply_overrides
from vidlab.models.singularity import VideoFeatures, encode_across_time

TEMPORAL = {"num_frames": 4, "add_temporal_embed": True, "temporal_vision_encoder.enable": True,
            "temporal_vision_encoder.update_pooler_embed": True}


def test_training_picks_one_frame_of_each_pair_and_testing_the_odd_ones():
    tokens = torch.arange(8.0).view(1, 8, 1, 1).expand(50, 8, 2, 3)
    picked = pick_frames(tokens, torch.Generator().manual_seed(0))[..., 0, 0]
    assert picked.shape == (50, 4)
    assert ((picked // 2) == torch.arange(4)).all()
    assert 0 < (picked % 2).float().mean() < 1
    assert pick_frames(tokens)[0, :, 0, 0].tolist() == list(TEST_FRAMES)


def test_reversal_pairs_follow_each_clip_with_its_time_reversal_and_opposite_motion():
    # every cached frame holds its clip and frame number: token value = 10 * clip + frame
    tokens = (torch.arange(20.0)[:, None] * 10 + torch.arange(8.0)).view(20, 8, 1, 1).expand(20, 8, 2, 3)
    clips = MotionClips(tokens, torch.arange(20) % 8)
    opposite = torch.tensor([1, 0, 3, 2, 5, 4, 7, 6])
    views, labels = draw_batch(clips, opposite, torch.Generator().manual_seed(0), reversal_pairs=True)
    assert views.shape == (32, 4, 2, 3) and labels.shape == (32,)
    first, second = views[:16, :, 0, 0], views[16:, :, 0, 0]
    assert torch.equal(second, first.flip(1))
    assert torch.equal(labels[16:], opposite[labels[:16]])
    assert torch.equal(labels[:16], clips.labels[(first[:, 0] // 10).long()])
    # the reversed view is a training view of the reversed clip: one frame of each pair of its reversed frames
    reversed_frame = 7 - second % 10
    assert ((reversed_frame // 2) == torch.arange(4)).all()
    plain_views, plain_labels = draw_batch(clips, opposite, torch.Generator().manual_seed(0))
    assert plain_views.shape == (32, 4, 2, 3)
    assert torch.equal(plain_labels, clips.labels[(plain_views[:, 0, 0, 0] // 10).long()])


def test_only_the_readouts_with_time_see_the_frame_order():
    torch.manual_seed(0)
    tokens = torch.randn(3, 4, 5, 16)
    reversed_ = tokens.flip(1)
    encoder = torch.nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0)
    for kind, sees_order in (("order", True), ("set", False), ("temporal_embed", True), ("temporal", True)):
        readout = DirectionReadout(kind, 16, 2, 8, encoder if kind == "temporal" else None).eval()
        if kind in ("temporal_embed", "temporal"):
            torch.nn.init.normal_(readout.temporal_embeddings)
        with torch.no_grad():
            same = torch.allclose(readout(tokens), readout(reversed_), atol=1e-5)
        assert same is not sees_order, kind


def test_choice_scores_count_all_classes_and_the_reversed_motion():
    opposite = torch.tensor([1, 0, 3, 2])
    logits = torch.tensor([[3.0, 2.0, 0.0, 0.0], [0.0, 1.0, 2.0, 0.0], [0.0, 0.0, 0.0, 1.0], [5.0, 0.0, 1.0, 2.0]])
    labels = torch.tensor([0, 1, 2, 3])
    # argmax right in row 0 only; the true class beats its reversal in rows 0, 1 and 3
    assert choice_scores(logits, labels, opposite) == (25.0, 75.0)


def test_bad_readouts_and_folders_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown readouts"):
        run_direction_probe(tmp_path, tmp_path, ["order", "sequence"])
    with pytest.raises(ConfigError, match="lr must be positive"):
        run_direction_probe(tmp_path, tmp_path, ["order"], lr=-1.0)
    with pytest.raises(ConfigError, match="not a ShapesBench folder|ShapesBench folder"):
        run_direction_probe(tmp_path, tmp_path, ["order"])


def test_a_model_of_another_family_is_named_before_any_override(tmp_path):
    data = tmp_path / "data"
    (data / "annotations").mkdir(parents=True)
    motion = next(iter(OPPOSITE))
    (data / "annotations" / "motion_classes.json").write_text(json.dumps([motion, OPPOSITE[motion]]))
    save_vidlab_checkpoint(create_model("fit-tiny"), model_config("fit-tiny"), tmp_path / "fit")
    with pytest.raises(ConfigError, match="a frozen_in_time model, not a singularity one"):
        run_direction_probe(tmp_path / "fit", data, ["order"])


def tiny_temporal(**overrides):
    torch.manual_seed(0)
    return create_model(apply_overrides(model_config("singularity-tiny"), {**TEMPORAL, **overrides}))


def test_the_template_readout_trains_all_but_the_tower_on_its_own_matching_losses():
    model = tiny_temporal()
    with torch.no_grad():
        model.temporal_embeddings.normal_()
    captions = torch.tensor([[101, 5, 6, 102], [101, 7, 102, 0], [101, 8, 9, 102]])
    readout = TemplateReadout(model, captions, (captions != 0).long()).train()
    assert readout.temporal_norm() == 0.0  # zero-initialised, as the official temporal stage starts
    torch.manual_seed(1)
    tokens, labels = torch.randn(6, 4, 5, model.vision_width), torch.tensor([0, 0, 1, 1, 2, 2])
    readout.loss(tokens, labels).backward()
    params = dict(model.named_parameters())
    assert all(not p.requires_grad and p.grad is None for name, p in params.items() if name.startswith(("vision_encoder.", "vision_layernorm.")))
    for name in ("temporal_embeddings", "temporal_vision_encoder.layer.0.attention.self.query.weight", "itm_head.weight",
                 "vision_proj.weight", "text_encoder.embeddings.word_embeddings.weight"):
        assert params[name].grad is not None and params[name].grad.abs().sum() > 0, name
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for name, p in params.items() if "crossattention" in name)
    readout.eval()
    with torch.no_grad():
        logits = readout(tokens)
        assert logits.shape == (6, 3)
        for clip in range(3):  # each (clip, caption) logit is the model's ITM score of that pair alone
            alone = model.itm_logits(model.text_features(captions[1:2], (captions[1:2] != 0).long()).states,
                                     (captions[1:2] != 0).long(),
                                     model.add_time(VideoFeatures(tokens[clip : clip + 1], None)).memory)[0, 1]
            torch.testing.assert_close(logits[clip, 1], alone)
        model.temporal_embeddings.normal_()
        assert not torch.allclose(readout(tokens), readout(tokens.flip(1)), atol=1e-5)


def test_the_template_choice_readout_trains_on_the_captions_itm_scores():
    model = tiny_temporal()
    captions = torch.tensor([[101, 5, 6, 102], [101, 7, 102, 0], [101, 8, 9, 102]])
    readout = TemplateReadout(model, captions, (captions != 0).long(), kind="template_choice").train()
    tokens, labels = torch.randn(6, 4, 5, model.vision_width), torch.tensor([0, 0, 1, 1, 2, 2])
    torch.manual_seed(2)
    loss = readout.loss(tokens, labels)
    torch.manual_seed(2)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(readout(tokens), labels))
    loss.backward()
    assert model.itm_head.weight.grad.abs().sum() > 0
    assert model.vision_proj.weight.grad is None  # no ITC in this loss


def test_the_template_readout_needs_the_temporal_itc_path():
    with pytest.raises(ConfigError, match="a template readout is one of"):
        TemplateReadout(tiny_temporal(), torch.ones(2, 3).long(), torch.ones(2, 3).long(), kind="set")
    with pytest.raises(ConfigError, match="a direction readout is one of"):
        DirectionReadout("template", 16, 2, 8)
    with pytest.raises(ConfigError, match="update_pooler_embed"):
        TemplateReadout(tiny_temporal(**{"temporal_vision_encoder.update_pooler_embed": False}), torch.ones(2, 3).long(),
                        torch.ones(2, 3).long())
    model = tiny_temporal(**{"temporal_vision_encoder.update_pooler_embed": False})
    with pytest.raises(ConfigError, match="pooled per-frame features"):
        losses_of_features(model, model.add_time(VideoFeatures(torch.randn(2, 4, 5, model.vision_width), None)),
                              {"input_ids": torch.ones(2, 3).long(), "attention_mask": torch.ones(2, 3).long()})


def test_the_tokenizer_comes_from_the_training_run_or_the_command_line(tmp_path):
    model_dir = tmp_path / "run" / "model"
    model_dir.mkdir(parents=True)
    with pytest.raises(ConfigError, match="pass --tokenizer"):
        recorded_tokenizer(model_dir)
    (tmp_path / "run" / "config.yaml").write_text("text: {tokenizer: my_tokenizer}\n")
    assert recorded_tokenizer(model_dir) == recorded_tokenizer(model_dir / "model.safetensors") == "my_tokenizer"


def test_the_learning_rate_is_the_readouts_own_unless_given():
    torch.manual_seed(0)
    clips = MotionClips(torch.randn(40, 8, 3, 16), torch.arange(40) % 8)
    opposite = torch.tensor([1, 0, 3, 2, 5, 4, 7, 6])
    moved = {}
    for lr in (None, 1e-12):
        torch.manual_seed(0)
        readout = DirectionReadout("order", 16, 2, 8)
        before = [p.detach().clone() for p in readout.parameters()]
        train_readout(readout, clips, clips, opposite, steps=3, eval_at=(), lr=lr)
        moved[lr] = max((p.detach() - b).abs().max().item() for p, b in zip(readout.parameters(), before))
    assert moved[None] > 1e-6 > moved[1e-12]


def trained_temporal_readout(model) -> DirectionReadout:
    """A 'temporal' readout over a copy of the model's temporal encoder, its parts moved off their initialisation."""
    readout = DirectionReadout("temporal", model.vision_width, 2, 3, copy.deepcopy(model.temporal_vision_encoder))
    with torch.no_grad():
        readout.temporal_embeddings.normal_()
        for param in readout.temporal_encoder.parameters():
            param.add_(torch.randn_like(param))
    return readout


def test_a_trained_memory_is_transplanted_frozen_and_the_rest_trains():
    model = tiny_temporal()
    memory = trained_temporal_readout(model)
    captions = torch.tensor([[101, 5, 6, 102], [101, 7, 102, 0], [101, 8, 9, 102]])
    readout = TemplateReadout(model, captions, (captions != 0).long(), memory=memory).train()
    torch.testing.assert_close(model.temporal_embeddings, memory.temporal_embeddings)
    tokens, labels = torch.randn(6, 4, 5, model.vision_width), torch.tensor([0, 0, 1, 1, 2, 2])
    with torch.no_grad():  # without dropout, the model's temporal parts are the readout's
        torch.testing.assert_close(readout.eval()._video(tokens).tokens,
                                   encode_across_time(memory.eval().temporal_encoder, tokens + memory.temporal_embeddings))
    readout.train()
    readout.loss(tokens, labels).backward()
    params = dict(model.named_parameters())
    frozen = [name for name in params if name.startswith(("vision_encoder.", "vision_layernorm.", "temporal_"))]
    assert "temporal_embeddings" in frozen and any(name.startswith("temporal_vision_encoder.") for name in frozen)
    assert all(not params[name].requires_grad and params[name].grad is None for name in frozen)
    assert params["itm_head.weight"].grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for name, p in params.items() if "crossattention" in name)


def test_a_tuned_memory_trains_on_from_the_transplant():
    model = tiny_temporal()
    memory = trained_temporal_readout(model)
    captions = torch.tensor([[101, 5, 6, 102], [101, 7, 102, 0], [101, 8, 9, 102]])
    readout = TemplateReadout(model, captions, (captions != 0).long(), memory=memory, tune_memory=True).train()
    torch.testing.assert_close(model.temporal_embeddings, memory.temporal_embeddings)
    assert model.temporal_embeddings is not memory.temporal_embeddings  # a copy: the memory readout stays as trained
    readout.loss(torch.randn(6, 4, 5, model.vision_width), torch.tensor([0, 0, 1, 1, 2, 2])).backward()
    params = dict(model.named_parameters())
    for name in ("temporal_embeddings", "temporal_vision_encoder.layer.0.attention.self.query.weight"):
        assert params[name].grad is not None and params[name].grad.abs().sum() > 0, name
    assert all(p.grad is None for name, p in params.items() if name.startswith(("vision_encoder.", "vision_layernorm.")))


def test_only_a_temporal_readout_can_be_transplanted():
    model = tiny_temporal()
    captions = torch.ones(2, 3).long()
    with pytest.raises(ConfigError, match="from the 'temporal' readout"):
        TemplateReadout(model, captions, captions, memory=DirectionReadout("temporal_embed", model.vision_width, 2, 3))
    other_width = DirectionReadout("temporal", 8, 2, 3, torch.nn.Identity())
    with pytest.raises(ConfigError, match="the temporal readout's embeddings are"):
        TemplateReadout(model, captions, captions, memory=other_width)


def test_reversal_pairs_need_a_template_readout(tmp_path):
    with pytest.raises(ConfigError, match="add a template readout"):
        run_direction_probe(tmp_path, tmp_path, ["temporal"], reversal_pairs=True)


def test_a_trained_template_memory_needs_its_readouts(tmp_path):
    with pytest.raises(ConfigError, match="template_memory must be one of"):
        run_direction_probe(tmp_path, tmp_path, ["temporal", "template"], template_memory="old")
    for readouts in (["template"], ["temporal", "order"]):
        with pytest.raises(ConfigError, match="needs the 'temporal' readout and a template readout"):
            run_direction_probe(tmp_path, tmp_path, readouts, template_memory="trained")
