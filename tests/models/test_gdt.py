"""GDT / STiCA models: official checkpoints (GDT trainer file with its pickled Namespace, STiCA's 'module.' state
dict) load strictly through the key map with a report, the transformer pooling follows the official formula,
the word2vec tower and tokenisation, feature-map crop draws, one-line config errors."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vidlab import golden
from vidlab.errors import ConfigError
from vidlab.models import create_model, create_model_with_report, model_config, save_vidlab_checkpoint
from vidlab.models.checkpoint import load_pickled_checkpoint
from vidlab.models.errors import ModelInputError, StateDictMismatchError
from vidlab.models.factory import apply_overrides
from vidlab.models.gdt import GDT, FeatureCrops, TransformerPooling, draw_feature_crops
from vidlab.models.interface import VideoTextModel
from vidlab.models.word2vec import Word2VecTextEncoder, Word2VecTokenizer

GOLDEN_DIR = golden.golden_dir(Path(__file__).resolve().parents[2])
STICA_TINY = {"pooling.num_layers": 2, "pooling.ffn_dim": 64, "pooling.num_heads": 4}


def to_official(key: str) -> str:
    """A vidlab GDT key -> the official facebookresearch/GDT name (the inverse of the key map, for the tests)."""
    rules = (
        (r"video_encoder\.(.+)", r"video_network.base.\1"),
        (r"audio_encoder\.(.+)", r"audio_network.base.\1"),
        (r"(video|audio|text)_head\.hidden\.weight", r"mlp_\1.block_forward.2.weight"),
        (r"(video|audio|text)_head\.norm\.(.+)", r"mlp_\1.block_forward.4.\2"),
        (r"(video|audio|text)_head\.out\.(.+)", r"mlp_\1.block_forward.8.\2"),
        (r"text_encoder\.word_embedding\.weight", "text_network.word_embd.weight"),
        (r"text_encoder\.fc\.(.+)", r"text_network.fc1.\1"),
        (r"video_pooling\.layers\.(\d+)\.(q|k|v|out)\.(.+)", r"video_pooling.2.transformer.\1.mha.\2_lin.\3"),
        (r"video_pooling\.layers\.(\d+)\.ffn\.fc(\d)\.(.+)", r"video_pooling.2.transformer.\1.ffn.lin\2.\3"),
        (r"video_pooling\.layers\.(\d+)\.(norm\d)\.(.+)", r"video_pooling.2.transformer.\1.\2.\3"),
        (r"video_pooling\.positions\.weight", "video_pooling.2.pos_embs.0.weight"),
        (r"video_pooling\.position_ids", "video_pooling.2.pos_ids"),
    )
    for pattern, target in rules:
        if re.fullmatch(pattern, key):
            official = re.sub(pattern, target, key)
            return re.sub(r"mlp_(video|audio|text)", lambda m: f"mlp_{m.group(1)[0]}", official)
    raise AssertionError(f"no official name for {key}")


def official_state(model: GDT) -> dict[str, torch.Tensor]:
    return {to_official(k): v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def gdt_file() -> Path:
    path = GOLDEN_DIR / "files" / "gdt_model" / "checkpoint.pth"
    if not path.is_file():
        pytest.skip(f"golden GDT files not found under {GOLDEN_DIR} (set {golden.GOLDEN_DIR_ENV})")
    return path


def inputs(batch: int = 2, frames: int = 8, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, frames, 3, size, size, generator=generator), torch.randn(batch, 1, 40, 99, generator=generator)


def test_official_gdt_checkpoint_loads_strictly_with_its_namespace_read_as_data(gdt_file):
    created = create_model_with_report(checkpoint=gdt_file)  # architecture from the shapes, norm_feat from args
    report = created.report
    assert report.ok and report.loaded == 310
    assert sorted(report.ignored) == ["audio_network.base.fc.bias", "audio_network.base.fc.weight"]
    assert list(created.config.video.layers) == [2, 2, 2, 2] and created.config.modality == "audio"
    assert created.config.normalize is True and created.config.pooling.num_layers == 0
    args = load_pickled_checkpoint(gdt_file)["args"]
    assert type(args).__module__ == "vidlab.models.checkpoint" and args.state["hypothesis"] == 1  # inert record


def test_strict_load_report_names_the_unexpected_and_the_missing_keys(gdt_file):
    official = dict(load_pickled_checkpoint(gdt_file)["model"])
    official["mlp_v.block_forward.9.weight"] = torch.zeros(1)
    del official["mlp_a.block_forward.8.bias"]
    with pytest.raises(StateDictMismatchError) as raised:
        create_model("gdt-r2plus1d-18", checkpoint={"model": official})
    assert raised.value.report.unexpected == ["mlp_v.block_forward.9.weight"]
    assert raised.value.report.missing == ["audio_head.out.bias"]


@pytest.mark.parametrize("prefix", ["", "module."])
def test_stica_state_dict_round_trips_through_the_key_map(prefix):
    model = create_model("gdt-tiny", **STICA_TINY, **{"pooling.qkv_projections": True, "pooling.positional_embedding": True})
    state = {f"{prefix}{k}": v for k, v in official_state(model).items()}
    state[f"{prefix}audio_network.base.fc.weight"] = torch.zeros(1000, 128)  # the official ResNet's unused classifier
    created = create_model_with_report(checkpoint={"epoch": 3, "state_dict": state, "optimizer": {}})
    cfg = created.config
    assert created.report.ok and len(created.report.ignored) == 1
    assert (cfg.pooling.num_layers, cfg.pooling.ffn_dim, cfg.pooling.qkv_projections, cfg.pooling.positional_embedding) == (2, 64, True, True)
    assert list(cfg.video.widths) == [16, 32, 64, 128] and cfg.embed_dim == 32 and cfg.head.hidden_dim == 64
    video, audio = inputs()
    model.eval()
    with torch.no_grad():
        for ours, theirs in zip(model(video, audio), created.model(video, audio)):
            torch.testing.assert_close(ours, theirs, atol=0, rtol=0)


def test_linear_heads_and_a_vidlab_checkpoint_round_trip(tmp_path):
    cfg = apply_overrides(model_config("gdt-tiny"), {"head.hidden_dim": None, "normalize": False})
    model = create_model(cfg)
    assert [k for k in official_state(model) if k.startswith("mlp_v")] == ["mlp_v.block_forward.8.weight", "mlp_v.block_forward.8.bias"]
    state = {re.sub(r"block_forward\.8\.", "", k): v for k, v in official_state(model).items()}  # use_mlp=False keys
    loaded = create_model(checkpoint={"model": state})
    assert loaded.cfg.head.hidden_dim is None and loaded.cfg.normalize is True  # no args: norm_feat's default
    reloaded = create_model(checkpoint=save_vidlab_checkpoint(model, cfg, tmp_path / "ckpt"))
    video, audio = inputs()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(video, audio)[0], model.eval()(video, audio)[0], atol=0, rtol=0)
        assert not torch.allclose(model(video, audio)[0].norm(dim=1), torch.ones(2))  # normalize: false


def reference_pooling(layer_weights: list[dict[str, torch.Tensor]], x: torch.Tensor, heads: int) -> torch.Tensor:
    """The official post-LN layer written out per head: q = W_q x / sqrt(d), k = W_k x, v = x (Identity)."""
    for w in layer_weights:
        batch, length, dim = x.shape
        d = dim // heads
        context = torch.empty_like(x)
        for h in range(heads):
            cols = slice(h * d, (h + 1) * d)
            q = (x @ w["q.weight"].T + w["q.bias"])[..., cols] / math.sqrt(d)
            k = (x @ w["k.weight"].T + w["k.bias"])[..., cols]
            context[..., cols] = torch.softmax(q @ k.transpose(1, 2), dim=-1) @ x[..., cols]
        x = F.layer_norm(x + context, (dim,), w["norm1.weight"], w["norm1.bias"], eps=1e-12)
        hidden = F.gelu(x @ w["ffn.fc1.weight"].T + w["ffn.fc1.bias"])
        x = F.layer_norm(x + hidden @ w["ffn.fc2.weight"].T + w["ffn.fc2.bias"], (dim,), w["norm2.weight"], w["norm2.bias"], eps=1e-12)
    return x


def test_transformer_pooling_follows_the_official_formula_and_returns_token_zero():
    torch.manual_seed(0)
    pooling = TransformerPooling(32, num_layers=2, num_heads=4, ffn_dim=48).eval()
    for p in pooling.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(3, 5, 32)
    layers = [{k: v for k, v in layer.state_dict().items()} for layer in pooling.layers]
    expected = reference_pooling(layers, x, heads=4)
    assert pooling.layers[0].v is None and pooling.layers[0].out is None  # Identity value / output
    with torch.no_grad():
        torch.testing.assert_close(pooling(x, all_states=True), expected, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(pooling(x), expected[:, 0], atol=1e-5, rtol=1e-4)
    positional = TransformerPooling(32, num_layers=2, num_heads=4, ffn_dim=48, positional_embedding=True).eval()
    positional.load_state_dict({**pooling.state_dict(), "positions.weight": torch.randn(64, 32), "position_ids": torch.arange(64)[None]})
    with torch.no_grad():
        shifted = reference_pooling(layers, x + positional.positions.weight[:5], heads=4)
        torch.testing.assert_close(positional(x), shifted[:, 0], atol=1e-5, rtol=1e-4)


def test_zero_layers_is_average_pooling_and_stica_pools_time_steps():
    gdt = create_model("gdt-tiny")
    assert gdt.video_pooling is None
    feature_map = torch.randn(2, 128, 3, 4, 4)
    torch.testing.assert_close(gdt.pool_video(feature_map), feature_map.mean(dim=(2, 3, 4)))
    stica = create_model("gdt-tiny", **STICA_TINY)
    sequence = stica.pooling_sequence(feature_map)  # 3 frames -> 4 overlapping adaptive windows
    assert sequence.shape == (2, 4, 128)
    torch.testing.assert_close(sequence[:, 1], feature_map[:, :, :2].mean(dim=(2, 3, 4)))
    torch.testing.assert_close(sequence[:, 0], feature_map[:, :, 0].mean(dim=(2, 3)))


def test_video_layout_and_feature_map_sizes():
    model = create_model("gdt-tiny")
    video, audio = inputs(frames=8, size=32)
    with torch.no_grad():
        assert model.video_feature_map(video).shape == (2, 128, 1, 2, 2)
        assert model.encode_audio(audio).shape == (2, 32)
    with pytest.raises(ModelInputError, match=r"\(B, T, 3, H, W\)"):
        model.video_feature_map(video.transpose(1, 2))  # the official (B, 3, T, H, W) layout
    with pytest.raises(ModelInputError, match="audio tower, not a text one"):
        create_model("gdt-tiny").text_features(torch.zeros(2, 4, dtype=torch.long))


def test_tokenizer_keeps_case_drops_unknown_words_and_takes_a_repeated_words_last_id():
    tokenizer = Word2VecTokenizer(["the", "Pepper", "don't", "salt", "the"], max_words=4)
    ids = tokenizer(["Add the Pepper, pepper and salt!", "don't", "nothing known", "the the the the the"])
    assert ids.tolist() == [[5, 2, 4, 0], [3, 0, 0, 0], [0, 0, 0, 0], [5, 5, 5, 5]]


def tokenizer_with_vocabulary(model: GDT, folder: Path):
    with_vocabulary = create_model(apply_overrides(model.cfg, {"text.vocabulary": str(folder / "dict.npy")}))
    return with_vocabulary.tokenizer()


def test_word2vec_tower_is_frozen_and_its_max_sees_the_padding_row(tmp_path):
    vectors = torch.randn(6, 300)
    torch.save(vectors, tmp_path / "word2vec.pth")
    text = {"modality": "text", "text.vocab_size": 6, "text.output_dim": 16, "text.word2vec": str(tmp_path / "word2vec.pth")}
    model = create_model("gdt-tiny", **text)
    assert isinstance(model, VideoTextModel)
    encoder: Word2VecTextEncoder = model.text_encoder
    assert torch.equal(encoder.word_embedding.weight, vectors)
    ids = torch.tensor([[3, 1, 0, 0]])
    expected = torch.relu(vectors[[3, 1, 0, 0]] @ encoder.fc.weight.T + encoder.fc.bias).max(dim=0).values
    torch.testing.assert_close(model.text_features(ids)[0], expected)
    model.train()
    model.encode_text(torch.tensor([[1, 2], [3, 4]]), normalize=True).sum().backward()
    assert encoder.word_embedding.weight.grad is None and encoder.fc.weight.grad is not None
    np.save(tmp_path / "dict.npy", np.array(["a", "b", "c"]))
    tokenizer = tokenizer_with_vocabulary(model, tmp_path)
    assert tokenizer(["c a x"]).tolist() == [[3, 1] + [0] * 18]
    with pytest.raises(ConfigError, match="text.vocabulary"):
        model.tokenizer()
    with pytest.raises(ConfigError, match=r"^text.word2vec holds a \(6, 300\) matrix.*set text.vocab_size=6 text.word_dim=300$"):
        create_model("gdt-tiny", **{**text, "text.vocab_size": 7})


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"modality": "video"}, "modality must be one of audio, text, got 'video'"),
        ({"video.layers": [2, 2, 2]}, r"video.layers and video.widths need 4 entries each"),
        ({"audio.widths": [64, 0, 256, 512]}, r"audio.layers and audio.widths must be >= 1"),
        ({"pooling.num_layers": 1, "pooling.num_heads": 3}, "width 128 is not divisible by pooling.num_heads 3"),
        ({"head.dropout": 1.5}, "head.dropout"),
        ({"embed_dim": 0}, "embed_dim must be >= 1"),
    ],
)
def test_bad_configs_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message) as raised:
        create_model("gdt-tiny", **overrides)
    assert "\n" not in str(raised.value)


def test_feature_crop_draws_follow_the_official_layout_and_bounds():
    crops = draw_feature_crops(np.random.RandomState(3), duration=4, spatial_large=2, spatial_small=3, temporal_large=1, temporal_small=2)
    assert len(crops.spatial_large) == 2 and len(crops.spatial_small) == 6  # small crops after EACH large one
    assert len(crops.temporal_large) == 1 and len(crops.temporal_small) == 2
    assert all(c == (0, 6, 0, 6) for c in crops.spatial_large) and crops.temporal_large == ((0, 3),)
    assert all(h1 - h0 == 4 == w1 - w0 and h1 <= 6 and w1 <= 6 for h0, h1, w0, w1 in crops.spatial_small)  # never the last row
    assert draw_feature_crops(np.random.RandomState(0), spatial_large=1) == FeatureCrops()  # nothing to contrast
    eight = draw_feature_crops(np.random.RandomState(0), duration=8, spatial_large=0, temporal_large=2)
    assert all(t1 - t0 == 6 for t0, t1 in eight.temporal_large)
    with pytest.raises(ConfigError, match="0-2 large crops"):
        draw_feature_crops(np.random.RandomState(0), spatial_large=3)


def test_crop_embeddings_are_the_pooled_crops_through_the_video_head():
    model = create_model("gdt-tiny", **STICA_TINY).eval()
    feature_map = torch.randn(2, 128, 4, 7, 7)
    crops = FeatureCrops(spatial_large=((0, 6, 1, 7),), temporal_small=((1, 3),))
    with torch.no_grad():
        embedded = model.crop_embeddings(feature_map, crops)
        torch.testing.assert_close(embedded.spatial_large[0], model.project(model.pool_video(feature_map[..., 0:6, 1:7]), "video", True))
        torch.testing.assert_close(embedded.temporal_small[0], model.project(model.pool_video(feature_map[:, :, 1:3]), "video", True))
    assert embedded.spatial_small == [] and embedded.temporal_large == []
