"""CLIP towers and CLIP weights: the four file formats (OpenAI TorchScript archive, OpenAI state dict, open_clip,
HF CLIPModel), TorchScript reading without execution, strict-load reports, per-block q/k, input checks."""

from __future__ import annotations

import math
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vidlab import golden
from vidlab.errors import ConfigError
from vidlab.models import create_model, create_model_with_report, model_config
from vidlab.models.clip_weights import load_clip_weights
from vidlab.models.errors import CheckpointError, ModelInputError, StateDictMismatchError, UnsafeCheckpointError
from vidlab.models.torchscript import read_torchscript_state_dict

GOLDEN_DIR = golden.golden_dir(Path(__file__).resolve().parents[2])


@pytest.fixture(scope="module")
def clip_case() -> dict:
    """The golden clip_visual case: official files, the OpenAI-named state dict, inputs and outputs."""
    folder = GOLDEN_DIR / "files" / "clip_visual"
    if not folder.is_dir():
        pytest.skip(f"golden CLIP files not found under {GOLDEN_DIR} (set {golden.GOLDEN_DIR_ENV})")
    tensors = golden.load_case(GOLDEN_DIR, "clip_visual").tensors()
    return {
        "torchscript": folder / "ViT-tiny.pt",
        "state_dict_file": folder / "clip_state_dict.pt",
        "openai": {k.removeprefix("state_dict."): v for k, v in tensors.items() if k.startswith("state_dict.")},
        "tensors": tensors,
    }


def openai_to_hf(openai: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenAI CLIP names -> transformers CLIPModel names, written by hand from the two layouts."""
    hf: dict[str, torch.Tensor] = {"logit_scale": openai["logit_scale"]}

    def blocks(source: str, target: str) -> None:
        layers = {int(k.split(".")[len(source.split("."))]) for k in openai if k.startswith(source + ".")}
        for i in layers:
            src, dst = f"{source}.{i}.", f"{target}.{i}."
            for kind in ("weight", "bias"):
                for part, tensor in zip("qkv", openai[f"{src}attn.in_proj_{kind}"].chunk(3)):
                    hf[f"{dst}self_attn.{part}_proj.{kind}"] = tensor.clone()
                hf[f"{dst}self_attn.out_proj.{kind}"] = openai[f"{src}attn.out_proj.{kind}"]
                hf[f"{dst}layer_norm1.{kind}"] = openai[f"{src}ln_1.{kind}"]
                hf[f"{dst}layer_norm2.{kind}"] = openai[f"{src}ln_2.{kind}"]
                hf[f"{dst}mlp.fc1.{kind}"] = openai[f"{src}mlp.c_fc.{kind}"]
                hf[f"{dst}mlp.fc2.{kind}"] = openai[f"{src}mlp.c_proj.{kind}"]

    hf["vision_model.embeddings.class_embedding"] = openai["visual.class_embedding"]
    hf["vision_model.embeddings.patch_embedding.weight"] = openai["visual.conv1.weight"]
    hf["vision_model.embeddings.position_embedding.weight"] = openai["visual.positional_embedding"]
    for kind in ("weight", "bias"):
        hf[f"vision_model.pre_layrnorm.{kind}"] = openai[f"visual.ln_pre.{kind}"]
        hf[f"vision_model.post_layernorm.{kind}"] = openai[f"visual.ln_post.{kind}"]
        hf[f"text_model.final_layer_norm.{kind}"] = openai[f"ln_final.{kind}"]
    blocks("visual.transformer.resblocks", "vision_model.encoder.layers")
    blocks("transformer.resblocks", "text_model.encoder.layers")
    hf["visual_projection.weight"] = openai["visual.proj"].T.contiguous()
    hf["text_model.embeddings.token_embedding.weight"] = openai["token_embedding.weight"]
    hf["text_model.embeddings.position_embedding.weight"] = openai["positional_embedding"]
    hf["text_projection.weight"] = openai["text_projection"].T.contiguous()
    return hf


def _tiny_hf_config(**overrides):
    from transformers import CLIPConfig

    text = dict(
        vocab_size=1000,
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=998,
        eos_token_id=999,
        pad_token_id=0,
    )
    vision = dict(
        hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
    )
    text.update(overrides.pop("text", {}))
    vision.update(overrides.pop("vision", {}))
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=overrides.pop("projection_dim", 64))


def _outputs(model, images, token_ids) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model.encode_image(images), model.encode_text(token_ids), *model(images, token_ids)]


def test_four_clip_formats_load_to_identical_outputs(clip_case, tmp_path):
    from transformers import CLIPModel

    openai = clip_case["openai"]
    open_clip_file = tmp_path / "open_clip_epoch_3.pt"  # open_clip trainer layout: DDP prefix, no build_model scalars
    state = {f"module.{k}": v for k, v in openai.items() if v.dtype != torch.int64}
    torch.save({"epoch": 3, "name": "tiny", "state_dict": state}, open_clip_file)
    hf_model = CLIPModel(_tiny_hf_config())
    hf_model.load_state_dict(openai_to_hf(openai), strict=True)
    hf_model.save_pretrained(tmp_path / "hf")

    tensors = clip_case["tensors"]
    images, token_ids = tensors["input.image"], tensors["input.text_tokens"]
    sources = {
        "torchscript": clip_case["torchscript"],
        "openai state dict": clip_case["state_dict_file"],
        "open_clip": open_clip_file,
        "hf": tmp_path / "hf",
    }
    outputs = {
        name: _outputs(create_model("clip-tiny", checkpoint=src), images, token_ids) for name, src in sources.items()
    }
    for name, result in outputs.items():
        for got, want in zip(result, outputs["torchscript"]):
            assert torch.equal(got, want), name
    golden_names = ["output.image_embed", "output.text_embed", "output.logits_per_image", "output.logits_per_text"]
    for got, name in zip(outputs["torchscript"], golden_names):
        torch.testing.assert_close(got, tensors[name], atol=1e-4, rtol=1e-4)
    # the HF model itself, fed the same weights, agrees (its own implementation as a second oracle)
    with torch.no_grad():
        hf_out = hf_model(input_ids=token_ids, pixel_values=images)
    torch.testing.assert_close(hf_out.logits_per_image, outputs["hf"][2], atol=1e-4, rtol=1e-4)


def test_random_hf_clip_model_matches_transformers(tmp_path):
    """An independent HF CLIPModel (other sizes, mlp ratio 2, 3 heads) saved by transformers loads and agrees."""
    from transformers import CLIPModel

    torch.manual_seed(0)
    config = _tiny_hf_config(
        text=dict(
            vocab_size=99,
            hidden_size=64,
            intermediate_size=128,
            max_position_embeddings=16,
            num_attention_heads=4,
            bos_token_id=97,
            eos_token_id=98,
        ),
        vision=dict(hidden_size=48, intermediate_size=96, num_attention_heads=3, image_size=24),
        projection_dim=32,
    )
    hf_model = CLIPModel(config).eval()
    with torch.no_grad():  # HF initialises LayerNorms to identity: perturb them so that they are checked too
        for name, param in hf_model.named_parameters():
            if "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    hf_model.save_pretrained(tmp_path)
    cfg = dict(
        family="clip",
        embed_dim=32,
        vision=dict(image_size=24, patch_size=8, width=48, layers=2, heads=3, mlp_ratio=2.0),
        text=dict(context_length=16, vocab_size=99, width=64, layers=2, heads=4, mlp_ratio=2.0),
    )
    created = create_model_with_report(cfg, checkpoint=tmp_path / "model.safetensors")
    assert created.report.ok and created.report.loaded == len(created.model.state_dict())
    token_ids = torch.randint(1, 97, (3, 12))
    token_ids[:, 0] = 97
    for row, end in enumerate((5, 9, 11)):
        token_ids[row, end], token_ids[row, end + 1 :] = 98, 0
    images = torch.randn(3, 3, 24, 24)
    with torch.no_grad():
        hf_out = hf_model(input_ids=token_ids, pixel_values=images)
        image_embeds, text_embeds, logits_per_image, _ = _outputs(created.model, images, token_ids)
    torch.testing.assert_close(F.normalize(image_embeds, dim=-1), hf_out.image_embeds, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(F.normalize(text_embeds, dim=-1), hf_out.text_embeds, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits_per_image, hf_out.logits_per_image, atol=1e-4, rtol=1e-4)


def test_architecture_is_inferred_from_the_torchscript_archive(clip_case):
    created = create_model_with_report(checkpoint=clip_case["torchscript"])
    cfg = created.config
    assert (cfg.embed_dim, cfg.vision.image_size, cfg.vision.patch_size, cfg.vision.layers) == (64, 32, 8, 2)
    assert (cfg.text.vocab_size, cfg.text.context_length, cfg.text.heads, cfg.logit_bias) == (1000, 77, 2, False)
    assert sorted(created.report.ignored) == ["context_length", "input_resolution", "vocab_size"]
    tensors = clip_case["tensors"]
    with torch.no_grad():
        image_embed = created.model.encode_image(tensors["input.image"])
    torch.testing.assert_close(image_embed, tensors["output.image_embed"], atol=1e-5, rtol=1e-4)


def test_open_clip_logit_bias_is_loaded_and_added(clip_case):
    state = {f"module.{k}": v for k, v in clip_case["openai"].items()}
    state["module.logit_bias"] = torch.tensor(-2.5)
    created = create_model_with_report(checkpoint={"state_dict": state})
    assert created.config.logit_bias is True
    model, tensors = created.model, clip_case["tensors"]
    with torch.no_grad():
        logits, _ = model(tensors["input.image"], tensors["input.text_tokens"])
    torch.testing.assert_close(logits, tensors["output.logits_per_image"] - 2.5, atol=1e-4, rtol=1e-4)


def test_strict_load_report_lists_unmapped_and_missing_keys(clip_case):
    state = dict(clip_case["openai"])
    state["visual.transformer.resblocks.0.attn.gate"] = torch.zeros(1)
    del state["ln_final.bias"]
    with pytest.raises(StateDictMismatchError) as raised:
        create_model("clip-tiny", checkpoint=state)
    report = raised.value.report
    assert report.unexpected == ["visual.transformer.resblocks.0.attn.gate"]
    assert report.missing == ["text.ln_final.bias"]
    assert "visual.transformer.resblocks.0.attn.gate" in str(raised.value)


def test_incomplete_hf_qkv_is_reported_under_its_own_names(clip_case):
    hf = openai_to_hf(clip_case["openai"])
    del hf["vision_model.encoder.layers.1.self_attn.k_proj.bias"]
    with pytest.raises(StateDictMismatchError) as raised:
        create_model("clip-tiny", checkpoint=hf)
    report = raised.value.report
    assert sorted(report.unexpected) == [
        "vision_model.encoder.layers.1.self_attn.q_proj.bias",
        "vision_model.encoder.layers.1.self_attn.v_proj.bias",
    ]
    assert report.missing == ["visual.blocks.1.attn.qkv.bias"]


def test_resnet_clip_is_refused_with_a_clear_error(clip_case):
    state = {k: v for k, v in clip_case["openai"].items() if k != "visual.class_embedding"}
    state["visual.layer1.0.conv1.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="ResNet"):
        create_model("clip-tiny", checkpoint=state)


def test_block_features_equal_a_manual_recomputation(clip_case):
    model = create_model("clip-tiny", checkpoint=clip_case["openai"])
    tower, images = model.visual, clip_case["tensors"]["input.image"]
    with torch.no_grad():
        features = tower.block_features(images)
        last_one = tower.block_features(images, last=1)
        width, heads = tower.width, tower.blocks[0].attn.num_heads
        head_dim = width // heads
        patches = F.conv2d(images, tower.patch_embed.weight, stride=tower.patch_size).flatten(2).transpose(1, 2)
        tokens = torch.cat([tower.cls_token.expand(len(images), 1, width), patches], 1) + tower.pos_embed
        tokens = F.layer_norm(tokens, (width,), tower.ln_pre.weight, tower.ln_pre.bias, 1e-5)
        for block, got in zip(tower.blocks, features):
            normed = F.layer_norm(tokens, (width,), block.norm1.weight, block.norm1.bias, 1e-5)
            qkv = normed @ block.attn.qkv.weight.T + block.attn.qkv.bias
            query, key, value = (t.view(len(images), -1, heads, head_dim).transpose(1, 2) for t in qkv.split(width, -1))
            torch.testing.assert_close(got.query, query)
            torch.testing.assert_close(got.key, key)
            weights = (query @ key.transpose(-1, -2) / math.sqrt(head_dim)).softmax(-1)
            mixed = (weights @ value).transpose(1, 2).reshape(len(images), -1, width)
            tokens = tokens + mixed @ block.attn.proj.weight.T + block.attn.proj.bias
            normed = F.layer_norm(tokens, (width,), block.norm2.weight, block.norm2.bias, 1e-5)
            hidden = normed @ block.mlp.fc1.weight.T + block.mlp.fc1.bias
            hidden = hidden * torch.sigmoid(1.702 * hidden)
            tokens = tokens + hidden @ block.mlp.fc2.weight.T + block.mlp.fc2.bias
            torch.testing.assert_close(got.tokens, tokens, atol=1e-5, rtol=1e-4)
    assert len(last_one) == 1 and torch.equal(last_one[0].tokens, features[-1].tokens)


def test_text_tower_pools_end_of_text_and_accepts_shorter_contexts(clip_case):
    model = create_model("clip-tiny", checkpoint=clip_case["openai"])
    token_ids = clip_case["tensors"]["input.text_tokens"]
    last_end = int(token_ids.argmax(-1).max())
    with torch.no_grad():
        full, short = model.encode_text(token_ids), model.encode_text(token_ids[:, : last_end + 1])
        moved = token_ids.clone()
        moved[0, 1] = 5  # changing a token before the EOT changes the embedding, after it changes nothing
        changed = model.encode_text(moved)
        after = token_ids.clone()
        after[0, -1] = 5
        unchanged = model.encode_text(after)
    torch.testing.assert_close(short, full, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(changed[0], full[0]) and torch.equal(changed[1], full[1])
    torch.testing.assert_close(unchanged, full, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda m: m.encode_image(torch.zeros(1, 3, 24, 24)), r"images must be \(B, 3, 32, 32\)"),
        (lambda m: m.encode_text(torch.full((1, 5), 1000)), r"\[0, 1000\)"),
        (lambda m: m.encode_text(torch.zeros(1, 78, dtype=torch.long)), "78 tokens given, the context holds 77"),
        (lambda m: m.encode_text(torch.zeros(5)), r"\(B, L\) integers"),
    ],
)
def test_bad_inputs_raise_model_input_errors(bad, match):
    with pytest.raises(ModelInputError, match=match):
        bad(create_model("clip-tiny"))


def test_a_zero_wide_embedding_is_a_config_error():
    with pytest.raises(ConfigError, match="embed_dim must be >= 1, got 0"):
        create_model("clip-tiny", embed_dim=0)


def test_load_clip_weights_reports_what_was_dropped(clip_case):
    model = create_model("clip-tiny")
    report = load_clip_weights(model, clip_case["state_dict_file"])
    assert report.ok and report.loaded == len(model.state_dict())
    assert sorted(report.ignored) == ["context_length", "input_resolution", "vocab_size"]
    assert torch.equal(model.visual.patch_embed.weight, clip_case["openai"]["visual.conv1.weight"])


def test_official_configs_have_the_openai_sizes():
    with torch.device("meta"):  # sizes only: no memory, no init cost
        vit_b16 = create_model("clip-vit-b16")
    assert sum(p.numel() for p in vit_b16.parameters()) == 149_620_737  # OpenAI ViT-B/16, logit_scale included
    l14_336 = model_config("clip-vit-l14-336")
    assert (l14_336.vision.image_size, l14_336.vision.width, l14_336.text.width, l14_336.embed_dim) == (
        336,
        1024,
        768,
        768,
    )


# ---------------------------------------------------------------------------------------------------------
# TorchScript archives


class _Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.register_buffer("steps", torch.tensor(7))
        self.scale = torch.full((2,), 0.5)  # a plain tensor attribute: not part of the state dict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * self.scale


class _Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(2.0))
        self.inner = _Inner()
        self.table = nn.Parameter(torch.randn(4, 3).half())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * self.gain + self.table.float().sum()


def test_torchscript_state_dict_equals_torch_jit_load(tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(_Outer()), str(path))
    expected = torch.jit.load(str(path)).state_dict()
    state = read_torchscript_state_dict(path)
    assert list(state) == list(expected) == ["gain", "table", "inner.steps", "inner.lin.weight", "inner.lin.bias"]
    for name, tensor in expected.items():
        assert state[name].dtype == tensor.dtype and torch.equal(state[name], tensor), name


def test_clip_torchscript_archive_is_read_exactly(clip_case):
    state = read_torchscript_state_dict(clip_case["torchscript"])
    assert state.keys() == clip_case["openai"].keys()
    for name, tensor in clip_case["openai"].items():
        assert state[name].dtype == tensor.dtype and torch.equal(state[name], tensor), name


class _SystemCall:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_torchscript_archive_with_code_running_pickle_is_refused(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps({"weights": _SystemCall(marker)}, protocol=2))
        archive.writestr("evil/constants.pkl", pickle.dumps((), protocol=2))
        archive.writestr(
            "evil/code/__torch__/model.py", "class M(Module):\n  __parameters__ = []\n  __buffers__ = []\n"
        )
        archive.writestr("evil/version", "3\n")
    with pytest.raises(UnsafeCheckpointError, match=r"refusing to unpickle global '(posix|os)\.system'"):
        read_torchscript_state_dict(path)
    with pytest.raises(UnsafeCheckpointError):
        create_model("clip-tiny", checkpoint=path)
    assert not marker.exists()
