"""Singularity's training entry points (ITC + ITM + MLM, QA loss, gathered negatives) and input checks, on
the tiny registered config with random weights."""

from __future__ import annotations

import math

import pytest
import torch

from vidlab.errors import ConfigError
from vidlab.losses.singularity import matching_losses, qa_loss
from vidlab.models import create_model, create_model_with_report, model_config
from vidlab.models.errors import ModelInputError
from vidlab.models.factory import apply_overrides


def tiny(**overrides):
    torch.manual_seed(0)
    return create_model(apply_overrides(model_config("singularity-tiny"), overrides)).train()


def retrieval_batch(batch_size: int = 4, frames: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, (batch_size, 8), generator=generator)
    ids[:, 0] = 101
    mask = torch.ones(batch_size, 8, dtype=torch.long)
    mask[1, 5:] = 0
    ids[1, 5:] = 0
    return {
        "video": torch.randn(batch_size, frames, 3, 32, 32, generator=generator),
        "input_ids": ids,
        "attention_mask": mask,
        "idx": torch.tensor([0, 0, 1, 2])[:batch_size],
    }


def test_pretraining_step_returns_weighted_itc_itm_mlm_and_trains_every_part():
    model = tiny(task="pretrain", **{"losses.mlm_weight": 0.5})
    with torch.no_grad():
        model.temp.fill_(1.0)
    losses = matching_losses(model, retrieval_batch(), generator=torch.Generator().manual_seed(0))
    assert set(losses) == {"loss_itc", "loss_itm", "loss_mlm"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    assert model.temp.item() == 0.5  # clamped to the official [0.001, 0.5] before the step
    sum(losses.values()).backward()
    for name in (
        "vision_encoder.encoder.layer.0.attention.attention.query.weight",
        "text_encoder.encoder.layer.3.crossattention.self.key.weight",
        "text_encoder.cls.predictions.transform.dense.weight",
        "itm_head.weight",
        "temp",
    ):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_retrieval_fine_tuning_has_no_mlm_loss():
    losses = matching_losses(tiny(), retrieval_batch())
    assert set(losses) == {"loss_itc", "loss_itm"}


def test_gathered_negatives_widen_the_itc_columns():
    """Two processes holding the same batch: every column appears twice, so each soft cross-entropy gains
    exactly log 2 over the local loss."""
    model = tiny(**{"losses.gather_negatives": True}).eval()
    batch = retrieval_batch()
    with torch.no_grad():
        local = matching_losses(model, batch)
        gathered = matching_losses(model, batch, gather=lambda t: torch.cat([t, t]))
    torch.testing.assert_close(gathered["loss_itc"], local["loss_itc"] + math.log(2))
    with pytest.raises(ConfigError, match="needs batch\\['idx'\\]"):
        matching_losses(model, {k: v for k, v in batch.items() if k != "idx"}, gather=lambda t: torch.cat([t, t]))


def test_gather_is_ignored_unless_asked_as_in_the_official_code():
    model = tiny().eval()
    batch = retrieval_batch()
    with torch.no_grad():
        local = matching_losses(model, batch)["loss_itc"]
        offered = matching_losses(model, batch, gather=lambda t: torch.cat([t, t]))["loss_itc"]
    torch.testing.assert_close(local, offered)


def test_qa_loss_is_the_weighted_answer_nll_over_the_questions():
    model = tiny(task="qa", **{"qa.decoder_layers": 2}).eval()
    generator = torch.Generator().manual_seed(2)
    answers = torch.tensor([[101, 7, 8, 102, 0], [101, 9, 102, 0, 0], [101, 5, 6, 7, 102]])
    batch = {
        "video": torch.randn(2, 1, 3, 32, 32, generator=generator),
        "question_ids": torch.randint(200, 900, (2, 6), generator=generator),
        "question_mask": torch.ones(2, 6, dtype=torch.long),
        "answer_ids": answers,
        "answer_mask": (answers != 0).long(),
        "answers_per_question": torch.tensor([2, 1]),
        "answer_weights": torch.tensor([0.5, 0.5, 1.0]),
    }
    with torch.no_grad():
        loss = qa_loss(model, batch)
        states = model.question_states(
            model.video_features(batch["video"]).memory, batch["question_ids"], batch["question_mask"]
        )
        nll = torch.stack(
            [
                model.answer_nll(
                    states[q : q + 1],
                    batch["question_mask"][q : q + 1],
                    answers[a : a + 1],
                    batch["answer_mask"][a : a + 1],
                )[0]
                for q, a in ((0, 0), (0, 1), (1, 2))
            ]
        )
        logits = model.decoder_logits(states[:1], batch["question_mask"][:1], answers[:1], batch["answer_mask"][:1])
    torch.testing.assert_close(loss, (batch["answer_weights"] * nll).sum() / 2)
    # the NLL of answer 0 is the cross-entropy of its 3 tokens after [CLS] ([SEP] included, pad ignored)
    log_probs = logits[0].log_softmax(-1)
    torch.testing.assert_close(nll[0], -(log_probs[0, 7] + log_probs[1, 8] + log_probs[2, 102]))


def test_per_frame_ensembles_need_a_single_frame_model():
    model = tiny(num_frames=4, add_temporal_embed=True).eval()
    video = torch.randn(1, 4, 3, 32, 32)
    with torch.no_grad():
        memory, pooled = model.encode_clips(video, "concat")
    assert memory.shape == (1, 1, 4 * 17, 64) and pooled.shape == (1, 4, 64)
    with pytest.raises(ConfigError, match="single-frame-trained"):
        model.encode_clips(video, "mean")
    with pytest.raises(ConfigError, match="frame ensemble must be one of"):
        model.encode_clips(video, "median")


def test_bad_video_input_is_a_typed_error():
    model = tiny().eval()
    with pytest.raises(ModelInputError, match=r"\(B, T, C, H, W\)"):
        model.video_features(torch.randn(2, 3, 32, 32))
    with pytest.raises(ModelInputError, match="32x32"):
        model.video_features(torch.randn(1, 2, 3, 48, 48))


def test_unknown_task_is_a_config_error():
    with pytest.raises(ConfigError, match="task must be one of"):
        tiny(task="captioning")


def hub_files(folder, source) -> tuple:
    """A BEiT classification file and a bert-base-uncased style file holding `source`'s towers."""
    from safetensors.torch import save_file

    vision = {f"beit.{k}": v.clone() for k, v in source.vision_encoder.state_dict().items()}
    vision["classifier.weight"] = torch.zeros(10, 64)
    vision["beit.encoder.layer.0.attention.attention.relative_position_bias.relative_position_index"] = torch.zeros(
        17, 17, dtype=torch.long
    )
    text = {}
    for key, tensor in source.text_encoder.state_dict().items():
        if "crossattention" in key or key == "cls.predictions.decoder.weight":
            continue  # a plain BERT file has no cross-attention; the tied decoder copy is often omitted
        name = key if key.startswith("cls.") else f"bert.{key}"
        text[name.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")] = (
            tensor.clone()
        )
    text["bert.pooler.dense.weight"] = torch.zeros(64, 64)
    text["cls.seq_relationship.weight"] = torch.zeros(2, 64)
    save_file(vision, str(folder / "beit.safetensors"))
    save_file(text, str(folder / "bert.safetensors"))
    return folder / "beit.safetensors", folder / "bert.safetensors"


def test_towers_initialise_from_hub_format_files(tmp_path):
    source = tiny(task="pretrain")
    vision_file, text_file = hub_files(tmp_path, source)
    model = tiny(
        task="qa",
        **{"qa.decoder_layers": 2, "init.vision_weights": str(vision_file), "init.text_weights": str(text_file)},
    )
    for key, tensor in model.vision_encoder.state_dict().items():
        torch.testing.assert_close(tensor, source.vision_encoder.state_dict()[key], msg=key)
    encoder, reference = model.text_encoder.state_dict(), source.text_encoder.state_dict()
    for key, tensor in encoder.items():
        if "crossattention" not in key:
            torch.testing.assert_close(tensor, reference[key], msg=key)
    decoder = model.text_decoder
    torch.testing.assert_close(
        decoder.encoder.layer[1].output.dense.weight, source.text_encoder.encoder.layer[1].output.dense.weight
    )
    torch.testing.assert_close(decoder.cls.predictions.decoder.weight, reference["embeddings.word_embeddings.weight"])
    torch.testing.assert_close(decoder.cls.predictions.bias, reference["cls.predictions.bias"])


def test_vit_layout_pools_the_cls_token_and_resizes_its_position_embeddings():
    vit = {
        "vision.arch": "vit",
        "vision.use_relative_position_bias": False,
        "vision.use_absolute_position_embeddings": True,
        "vision.use_mean_pooling": False,
        "vision.layer_scale_init_value": 0.0,
    }
    model = tiny(**vit).eval()
    state = model.state_dict()
    assert "vision_encoder.embeddings.position_embeddings" in state and "vision_layernorm.weight" not in state
    assert "vision_encoder.encoder.layer.0.attention.attention.key.bias" in state  # ViT keys have a bias
    assert not any(k.endswith(("lambda_1", "relative_position_bias_table")) for k in state)
    with torch.no_grad():
        features = model.video_features(torch.randn(2, 2, 3, 32, 32))
    torch.testing.assert_close(features.pooled, features.tokens[:, :, 0])
    created = create_model_with_report(apply_overrides(model.cfg, {"vision.image_size": 48}), checkpoint=state)
    assert created.report.ok
    assert "vision_encoder.embeddings.position_embeddings (1, 17, 64) -> (1, 37, 64), bicubic" in created.report.adapted


def test_a_temporal_encoder_needs_the_vision_width_to_split_into_the_text_heads():
    sizes = {"text.num_attention_heads": 32, "vision.hidden_size": 48}  # 64-wide text: 32 heads of 2
    with pytest.raises(ConfigError, match="vision width 48 is not a multiple of the text's 32 attention heads"):
        tiny(**sizes, **{"temporal_vision_encoder.enable": True})
    assert tiny(**sizes).temporal_vision_encoder is None  # without a temporal encoder the widths are free


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"embed_dim": 0}, "embed_dim must be >= 1, got 0"),
        ({"text.max_length": 0}, "text.max_length must be >= 1, got 0"),
        ({"losses.mlm_prob": 1.5}, r"losses.mlm_prob must be in \(0, 1\], got 1.5"),
        ({"vision.drop_path_rate": 1.0}, r"vision.drop_path_rate must be in \[0, 1\), got 1.0"),
        ({"vision.attention_probs_dropout_prob": -0.1}, r"vision.attention_probs_dropout_prob must be in \[0, 1\)"),
    ],
)
def test_out_of_range_sizes_and_rates_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        tiny(**overrides)
