"""Singularity: official checkpoints load strictly (from memory and from an official-layout file read by the
restricted unpickler), reproduce the official outputs, and every conversion is in the load report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from vidlab import golden
from vidlab.errors import ConfigError
from vidlab.models import create_model, create_model_with_report, model_config, save_vidlab_checkpoint
from vidlab.models.beit import beit_relative_position_index
from vidlab.models.errors import StateDictMismatchError
from vidlab.models.factory import apply_overrides
from vidlab.models.singularity_weights import (
    hub_vision_sizes,
    interpolate_relative_bias_table,
    not_a_knot_spline_matrix,
    singularity_config_from_official,
)
from vidlab.tasks.qa import rank_answers

GOLDEN_DIR = golden.golden_dir(Path(__file__).resolve().parents[2])
ATOL, RTOL = 2e-5, 1e-4
TABLE = "vision_encoder.encoder.layer.{}.attention.attention.relative_position_bias.relative_position_bias_table"


def load_golden(name: str) -> dict:
    if not (GOLDEN_DIR / f"{name}.json").is_file():
        pytest.skip(f"golden case {name} not found under {GOLDEN_DIR} (set {golden.GOLDEN_DIR_ENV})")
    case = golden.load_case(GOLDEN_DIR, name)
    tensors = case.tensors()
    constructor = case.spec["constructor"]
    return {
        "official_config": constructor["config"],
        "cfg": singularity_config_from_official(
            constructor["config"], constructor["bert_config"], constructor["beit_config"]
        ),
        "state": {k.removeprefix("state_dict."): v for k, v in tensors.items() if k.startswith("state_dict.")},
        "tensors": tensors,
    }


@pytest.fixture(scope="module")
def retrieval_case() -> dict:
    return load_golden("singularity_model")


@pytest.fixture(scope="module")
def temporal_case() -> dict:
    return load_golden("singularity_temporal")


@pytest.fixture(scope="module")
def qa_case() -> dict:
    return load_golden("singularity_qa")


def save_official(path: Path, case: dict, state: dict | None = None, omegaconf: bool = False) -> Path:
    """The official trainer layout, {'model': state_dict, 'config': ..., 'epoch': ...}, with torch.save; the
    config as the pickled OmegaConf object the official trainer writes, or as plain containers."""
    config = OmegaConf.create(case["official_config"]) if omegaconf else dict(case["official_config"])
    torch.save({"model": state or case["state"], "config": config, "epoch": 4}, path)
    return path


def itm_logits(model, tensors) -> torch.Tensor:
    video, ids, mask = tensors["input.video"], tensors["input.text_input_ids"], tensors["input.text_attention_mask"]
    with torch.no_grad():
        memory = model.video_features(video).memory
        text = model.text_features(ids, mask)
        num_videos, num_texts = video.shape[0], ids.shape[0]
        logits = model.itm_logits(
            text.states.repeat(num_videos, 1, 1),
            text.mask.repeat(num_videos, 1),
            memory.repeat_interleave(num_texts, 0),
        )
    return logits.view(num_videos, num_texts, 2)


def pretrain_format(state: dict, vocab_size: int, width: int) -> dict:
    """The same weights as the official pre-training model saves them: `text_encoder.bert.*` plus an MLM head."""
    converted = {
        (k.replace("text_encoder.", "text_encoder.bert.", 1) if k.startswith("text_encoder.") else k): v
        for k, v in state.items()
    }
    generator = torch.Generator().manual_seed(3)
    head = {
        "predictions.bias": torch.randn(vocab_size, generator=generator),
        "predictions.transform.dense.weight": torch.randn(width, width, generator=generator),
        "predictions.transform.dense.bias": torch.randn(width, generator=generator),
        "predictions.transform.LayerNorm.weight": torch.ones(width),
        "predictions.transform.LayerNorm.bias": torch.zeros(width),
    }
    head["predictions.decoder.weight"] = state["text_encoder.embeddings.word_embeddings.weight"]
    head["predictions.decoder.bias"] = head["predictions.bias"]
    converted.update({f"text_encoder.cls.{k}": v for k, v in head.items()})
    return converted


@pytest.mark.parametrize("case_fixture", ["retrieval_case", "temporal_case"])
def test_official_file_loads_strictly_and_reproduces_itm_logits(request, tmp_path, case_fixture):
    case = request.getfixturevalue(case_fixture)
    path = save_official(tmp_path / "ckpt_best.pth", case)
    created = create_model_with_report(case["cfg"], checkpoint=path)
    assert created.report.ok and created.report.loaded == len(case["state"]) - 1  # position_ids: ignored buffer
    assert created.report.ignored == ["text_encoder.embeddings.position_ids"]
    torch.testing.assert_close(
        itm_logits(created.model, case["tensors"]), case["tensors"]["output.itm_logits"], atol=ATOL, rtol=RTOL
    )


def test_official_qa_file_reproduces_the_answer_ranking(qa_case, tmp_path):
    tensors = qa_case["tensors"]
    model = create_model(qa_case["cfg"], checkpoint=save_official(tmp_path / "ckpt_best.pth", qa_case))
    ids, probs = rank_answers(
        model,
        tensors["input.video"],
        tensors["input.question_input_ids"],
        tensors["input.question_attention_mask"],
        tensors["input.answer_input_ids"],
        tensors["input.answer_attention_mask"],
        k=3,
    )
    assert torch.equal(ids, tensors["output.concat.k3.topk_ids"])
    torch.testing.assert_close(probs, tensors["output.concat.k3.topk_probs"], atol=ATOL, rtol=RTOL)
    # the decoder's LM head is tied to its own word embeddings, as in the official BertLMHeadModel
    head = model.text_decoder.cls.predictions.decoder.weight
    assert head.data_ptr() == model.text_decoder.embeddings.word_embeddings.weight.data_ptr()


def test_architecture_comes_from_the_checkpoints_official_config_and_the_tensors(temporal_case, tmp_path):
    created = create_model_with_report(checkpoint=save_official(tmp_path / "ckpt.pth", temporal_case))
    cfg = created.config
    assert created.report.ok
    assert (cfg.task, cfg.num_frames, cfg.add_temporal_embed) == ("retrieval", 4, True)
    assert (cfg.text.num_hidden_layers, cfg.text.fusion_layer, cfg.text.vocab_size, cfg.text.hidden_size) == (
        4,
        2,
        1000,
        64,
    )
    assert (cfg.vision.image_size, cfg.vision.patch_size, cfg.vision.num_attention_heads) == (32, 8, 2)
    assert cfg.temporal_vision_encoder.enable and cfg.temporal_vision_encoder.num_layers == 1
    assert cfg.eval.k_test == 3 and cfg.embed_dim == 32


def test_official_file_with_its_pickled_omegaconf_config(temporal_case, tmp_path):
    created = create_model_with_report(checkpoint=save_official(tmp_path / "ckpt.pth", temporal_case, omegaconf=True))
    assert created.report.ok and created.config.num_frames == 4 and created.config.temporal_vision_encoder.enable


def test_pretraining_checkpoint_into_a_retrieval_model_keeps_the_text_encoder(retrieval_case, tmp_path):
    """The official zero-shot path (evaluate=True) silently loses every text-encoder weight of a pre-training
    checkpoint; vidlab strips `bert.` and says what it dropped."""
    cfg = retrieval_case["cfg"]
    pretrain = pretrain_format(retrieval_case["state"], cfg.text.vocab_size, cfg.text.hidden_size)
    created = create_model_with_report(
        cfg, checkpoint=save_official(tmp_path / "ckpt_09.pth", retrieval_case, pretrain)
    )
    report = created.report
    assert report.ok and not report.missing and not report.unexpected
    assert report.ignored == ["text_encoder.bert.embeddings.position_ids"]
    dropped = [note for note in report.adapted if "MLM head" in note]
    assert (
        len(dropped) == 1
        and dropped[0].startswith("dropped 7 tensors")
        and "text_encoder.cls.predictions" in dropped[0]
    )
    assert "dropped 7 tensors (MLM head; this model has none)" in report.format()
    torch.testing.assert_close(
        itm_logits(created.model, retrieval_case["tensors"]),
        retrieval_case["tensors"]["output.itm_logits"],
        atol=ATOL,
        rtol=RTOL,
    )


def test_pretraining_checkpoint_loads_into_a_pretraining_model_with_its_mlm_head(retrieval_case):
    cfg = apply_overrides(retrieval_case["cfg"], {"task": "pretrain"})
    pretrain = pretrain_format(retrieval_case["state"], cfg.text.vocab_size, cfg.text.hidden_size)
    created = create_model_with_report(cfg, checkpoint={"model": pretrain})
    assert created.report.ok and not created.report.adapted
    torch.testing.assert_close(
        created.model.text_encoder.cls.predictions.bias, pretrain["text_encoder.cls.predictions.bias"]
    )


def test_qa_model_from_a_pretraining_checkpoint_gets_its_decoder_from_the_fusion_layers(retrieval_case):
    cfg = apply_overrides(retrieval_case["cfg"], {"task": "qa", "qa.decoder_layers": 2})
    pretrain = pretrain_format(retrieval_case["state"], cfg.text.vocab_size, cfg.text.hidden_size)
    created = create_model_with_report(cfg, checkpoint={"model": pretrain})
    report, decoder, encoder = created.report, created.model.text_decoder, created.model.text_encoder
    assert report.ok
    assert any("layers 2..3 -> decoder layers 0..1" in note for note in report.adapted)
    assert any("ITC/ITM heads" in note and "vision_proj" in note and "temp" in note for note in report.adapted)
    assert any("BEiT pooler" in note for note in report.adapted)
    for j in range(2):
        torch.testing.assert_close(decoder.encoder.layer[j].state_dict(), encoder.encoder.layer[2 + j].state_dict())
    torch.testing.assert_close(decoder.cls.predictions.bias, pretrain["text_encoder.cls.predictions.bias"])


def test_a_decoder_from_fusion_layers_of_narrower_frames_keeps_its_own_memory_projections():
    """The fusion layers' cross-attention reads 32-wide frames, the decoder's reads 64-wide question states:
    those key/value projections keep their init (reported); everything else is copied."""
    retrieval = create_model("singularity-tiny", **{"vision.hidden_size": 32})
    cfg = apply_overrides(model_config("singularity-tiny"), {"vision.hidden_size": 32, "task": "qa", "qa.decoder_layers": 2})
    created = create_model_with_report(cfg, checkpoint=retrieval.state_dict())
    assert created.report.ok
    assert any("key/value projections keep their init" in note and "32-wide frames" in note for note in created.report.adapted)
    source, decoder = retrieval.text_encoder.encoder.layer, created.model.text_decoder.encoder.layer
    for j in range(2):
        copied, own = source[2 + j].state_dict(), decoder[j].state_dict()
        assert own["crossattention.self.key.weight"].shape == (64, 64) and copied["crossattention.self.key.weight"].shape == (64, 32)
        for name, tensor in own.items():
            if not name.startswith(("crossattention.self.key.", "crossattention.self.value.")):
                torch.testing.assert_close(tensor, copied[name])


def test_temporal_checkpoint_into_a_single_frame_model_is_an_error_listing_the_temporal_keys(temporal_case):
    """Official issue #17: evaluating a temporal checkpoint without the temporal flags silently drops the
    temporal encoder; vidlab refuses and names it."""
    cfg = apply_overrides(temporal_case["cfg"], {"temporal_vision_encoder.enable": False, "add_temporal_embed": False})
    with pytest.raises(StateDictMismatchError, match=r"temporal_vision_encoder\.layer\.0\.") as error:
        create_model(cfg, checkpoint={"model": temporal_case["state"]})
    assert all(key.startswith("temporal_vision_encoder.") for key in error.value.report.unexpected)


def test_single_frame_checkpoint_starts_a_temporal_model(retrieval_case):
    cfg = apply_overrides(
        retrieval_case["cfg"], {"num_frames": 4, "temporal_vision_encoder.enable": True, "add_temporal_embed": True}
    )
    state = dict(retrieval_case["state"])
    state["temporal_embeddings"] = state["temporal_embeddings"][:, :1]  # a 1-frame model's embedding
    created = create_model_with_report(cfg, checkpoint={"model": state})
    report = created.report
    assert (
        report.ok
        and report.kept_from_init
        and all(k.startswith("temporal_vision_encoder.") for k in report.kept_from_init)
    )
    assert any("temporal_embeddings (1, 1, 1, 64) -> (1, 4, 1, 64), zero-padded" in note for note in report.adapted)
    loaded = created.model.temporal_embeddings
    torch.testing.assert_close(loaded[:, :1], state["temporal_embeddings"])
    assert torch.count_nonzero(loaded[:, 1:]) == 0


def test_resolution_change_interpolates_every_relative_position_bias_table(retrieval_case):
    cfg = apply_overrides(retrieval_case["cfg"], {"vision.image_size": 48})  # 4x4 -> 6x6 patch grid
    created = create_model_with_report(cfg, checkpoint={"model": retrieval_case["state"]})
    assert created.report.ok
    assert "2 relative position bias tables interpolated to a 6x6 patch grid" in created.report.adapted
    for layer in range(2):
        old, new = retrieval_case["state"][TABLE.format(layer)], created.model.state_dict()[TABLE.format(layer)]
        assert new.shape == (11 * 11 + 3, 2)
        torch.testing.assert_close(new[-3:], old[-3:])  # cls->token, token->cls, cls->cls copied
        # the zero offset sits at the centre of both grids and is a sample point of the spline
        torch.testing.assert_close(new[(11 * 11) // 2], old[(7 * 7) // 2], atol=1e-5, rtol=0)
    video = torch.randn(1, 2, 3, 48, 48)
    assert created.model.video_features(video).memory.shape == (1, 2 * 37, 64)


def test_legacy_relative_position_index_matches_the_official_buffer(retrieval_case):
    assert torch.equal(
        beit_relative_position_index(4), retrieval_case["tensors"]["debug.legacy_relative_position_index"]
    )


def test_vidlab_checkpoint_round_trip(retrieval_case, tmp_path):
    model = create_model(retrieval_case["cfg"], checkpoint={"model": retrieval_case["state"]})
    folder = save_vidlab_checkpoint(model, retrieval_case["cfg"], tmp_path / "vidlab")
    reloaded = create_model_with_report(checkpoint=folder)
    assert reloaded.report.ok and not reloaded.report.ignored
    torch.testing.assert_close(
        itm_logits(reloaded.model, retrieval_case["tensors"]),
        retrieval_case["tensors"]["output.itm_logits"],
        atol=ATOL,
        rtol=RTOL,
    )


def test_spline_matrix_reproduces_cubics_and_clamps_outside_the_grid():
    x_src = np.array([-4.0, -2.5, -1.0, 0.0, 1.0, 2.5, 4.0])
    x_dst = np.linspace(-4.0, 4.0, 11)

    def cubic(x):
        return 0.3 * x**3 - x**2 + 2 * x - 1

    np.testing.assert_allclose(not_a_knot_spline_matrix(x_src, x_dst) @ cubic(x_src), cubic(x_dst), atol=1e-9)
    outside = not_a_knot_spline_matrix(x_src, np.array([-6.0, 6.0])) @ cubic(x_src)
    np.testing.assert_allclose(outside, cubic(np.array([-4.0, 4.0])), atol=1e-9)


def test_relative_bias_interpolation_matches_the_official_interp2d_algorithm():
    interpolate = pytest.importorskip("scipy.interpolate", reason="the FITPACK reference comes from SciPy")
    table = torch.randn(7 * 7 + 3, 2, generator=torch.Generator().manual_seed(0))
    got = interpolate_relative_bias_table(table, dst_grid=6)
    # official interpolate_pos_relative_bias_beit with interp2d(kind='cubic') = FITPACK's s=0 grid spline
    left, right = 1.01, 1.5
    while right - left > 1e-6:
        q = (left + right) / 2.0
        right, left = (q, left) if (1.0 - q**3) / (1.0 - q) > 5 else (right, q)
    steps = np.cumsum([1.0] + [q ** (i + 1) for i in range(2)])
    x = np.concatenate([-steps[::-1], [0.0], steps])
    dx = np.clip(np.arange(-5.0, 5.1, 1.0), x[0], x[-1])
    columns = []
    for head in range(2):
        spline = interpolate.RectBivariateSpline(x, x, table[:-3, head].view(7, 7).numpy().T, kx=3, ky=3, s=0)
        columns.append(torch.tensor(spline(dx, dx).T.reshape(-1), dtype=torch.float32))
    torch.testing.assert_close(got, torch.cat([torch.stack(columns, 1), table[-3:]]), atol=1e-5, rtol=1e-5)


def test_a_hub_image_tower_config_gives_every_size_but_the_image_size():
    """As the official model builds its tower: the folder's config.json with the config's own `image_res`."""
    from transformers import BeitConfig, ViTConfig

    beit = hub_vision_sizes(BeitConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=2, patch_size=8).to_dict())
    assert (beit["arch"], beit["hidden_size"], beit["num_hidden_layers"], beit["patch_size"]) == ("beit", 48, 2, 8)
    assert "image_size" not in beit
    vit = hub_vision_sizes(ViTConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=2).to_dict())
    assert (vit["arch"], vit["use_relative_position_bias"], vit["use_absolute_position_embeddings"]) == ("vit", False, True)
    with pytest.raises(ConfigError, match="a 'swin' model; Singularity's image tower is a BEiT or a ViT/DeiT"):
        hub_vision_sizes({"model_type": "swin"})
    with pytest.raises(ConfigError, match="shared relative position bias"):
        hub_vision_sizes(BeitConfig(use_shared_relative_position_bias=True).to_dict())
