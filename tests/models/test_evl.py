"""EVL: the official checkpoint loads strictly, the frozen backbone stays out of training and checkpoints, each
ablation switch removes its module, the temporal cross attention follows the official formula, dtypes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vidlab import golden
from vidlab.errors import ConfigError
from vidlab.models import create_model, create_model_with_report, model_config, save_vidlab_checkpoint
from vidlab.models.checkpoint import load_pickled_checkpoint
from vidlab.models.errors import CheckpointError, ModelInputError, StateDictMismatchError
from vidlab.models.evl import EVL, TemporalCrossAttention, evl_config_from_official
from vidlab.models.factory import apply_overrides
from vidlab.models.layers import QuickGELU

GOLDEN_DIR = golden.golden_dir(Path(__file__).resolve().parents[2])
# Official checkpoint keys of each temporal module (after 'module.'), and the switch that removes it.
SWITCHES = {
    "temporal_conv": "decoder.temporal_conv.",
    "temporal_pos_embed": "decoder.temporal_pos_embed.",
    "temporal_cross_attention": "decoder.cross_attention.",
}


@pytest.fixture(scope="module")
def evl_case() -> dict:
    folder = GOLDEN_DIR / "files" / "evl"
    if not folder.is_dir():
        pytest.skip(f"golden EVL files not found under {GOLDEN_DIR} (set {golden.GOLDEN_DIR_ENV})")
    tensors = golden.load_case(GOLDEN_DIR, "evl").tensors()
    return {
        "backbone_file": folder / "ViT-tiny.pt",
        "checkpoint_file": folder / "checkpoint-5000.pth",
        "official": load_pickled_checkpoint(folder / "checkpoint-5000.pth")["model"],
        "video": tensors["input.video"].permute(0, 2, 1, 3, 4).contiguous(),  # to vidlab's (B, T, C, H, W)
        "tensors": tensors,
    }


def tiny_config(evl_case, **overrides):
    return apply_overrides(model_config("evl-tiny"), {"backbone.weights": str(evl_case["backbone_file"]), **overrides})


def test_official_checkpoint_loads_strictly_and_reproduces_the_logits(evl_case):
    created = create_model_with_report(tiny_config(evl_case), checkpoint=evl_case["checkpoint_file"])
    assert created.report.ok and created.report.loaded == 51 == len(evl_case["official"])
    with torch.no_grad():
        logits = created.model(evl_case["video"])
    torch.testing.assert_close(logits, evl_case["tensors"]["output.logits"], atol=1e-5, rtol=1e-4)


def test_strict_load_report_lists_unmapped_and_missing_keys(evl_case):
    official = dict(evl_case["official"])
    official["module.decoder.gate"] = torch.zeros(1)
    del official["module.proj.2.bias"]
    with pytest.raises(StateDictMismatchError) as raised:
        create_model(tiny_config(evl_case), checkpoint={"model": official})
    assert raised.value.report.unexpected == ["decoder.gate"]
    assert raised.value.report.missing == ["head.fc.bias"]


def test_architecture_of_an_unknown_width_is_not_guessed(evl_case):
    with pytest.raises(CheckpointError, match="decoder width 128 matches no official backbone preset"):
        create_model(checkpoint=evl_case["checkpoint_file"])


def test_frozen_backbone_has_no_grads_no_optimizer_group_and_no_checkpoint_entry(evl_case, tmp_path):
    model = create_model(tiny_config(evl_case)).train()
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    assert not model.backbone.training and model.decoder.training
    model(evl_case["video"]).logsumexp(-1).sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.decoder.layers.parameters())
    grouped = [p for group in model.param_groups() for p in group["params"]]
    assert not backbone_ids & {id(p) for p in grouped}
    assert {id(p) for p in grouped} == {id(p) for p in model.parameters() if p.requires_grad}
    torch.optim.AdamW(model.param_groups(), lr=1e-3).step()

    assert not any(k.startswith("backbone.") for k in model.state_dict())
    config = apply_overrides(model_config("evl-tiny"), {"backbone.weights": str(evl_case["backbone_file"])})
    folder = save_vidlab_checkpoint(model, config, tmp_path / "ckpt")
    saved = load_file(folder / "model.safetensors")
    assert saved and not any(k.startswith("backbone.") for k in saved)
    reloaded = create_model(checkpoint=folder)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(evl_case["video"]), model(evl_case["video"]), atol=0, rtol=0)


def test_fine_tuned_backbone_trains_and_is_saved(evl_case, tmp_path):
    cfg = tiny_config(evl_case, **{"backbone.freeze": False})
    model = create_model(cfg).train()
    assert model.backbone.training
    model(evl_case["video"]).logsumexp(-1).sum().backward()
    assert all(p.grad is not None for p in model.backbone.parameters())
    names = [group["name"] for group in model.param_groups()]
    assert names == ["decoder", "backbone"]
    with torch.no_grad():
        model.backbone.cls_token.add_(1.0)  # a change that only the checkpoint, not the CLIP file, carries
    assert "backbone.cls_token" in model.state_dict()
    folder = save_vidlab_checkpoint(model, cfg, tmp_path / "ckpt")
    reloaded = create_model(checkpoint=folder)
    assert torch.equal(reloaded.backbone.cls_token, model.backbone.cls_token)


def test_official_finetune_checkpoint_with_backbone_in_evl_names(evl_case):
    """--finetune_backbone checkpoints hold module.backbone.* in EVL's names: Linear patch embedding over
    (C, ph, pw) pixels with a bias, separate q/k/v projections; converted here by hand from the CLIP tensors."""
    clip = {k.removeprefix("backbone_clip.visual."): v for k, v in evl_case["tensors"].items() if "clip.visual." in k}
    backbone = {
        "cls_token": clip["class_embedding"],
        "pos_embed": clip["positional_embedding"],
        "patch_embed.proj.weight": clip["conv1.weight"].flatten(1),
        "patch_embed.proj.bias": torch.zeros(clip["conv1.weight"].shape[0]),
        "ln_pre.weight": clip["ln_pre.weight"],
        "ln_pre.bias": clip["ln_pre.bias"],
    }
    for i in range(3):
        src, dst = f"transformer.resblocks.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            for part, tensor in zip("qkv", clip[f"{src}attn.in_proj_{kind}"].chunk(3)):
                backbone[f"{dst}attn.{part}_proj.{kind}"] = tensor
            backbone[f"{dst}attn.out_proj.{kind}"] = clip[f"{src}attn.out_proj.{kind}"]
            backbone[f"{dst}mlp.fc1.{kind}"] = clip[f"{src}mlp.c_fc.{kind}"]
            backbone[f"{dst}mlp.fc2.{kind}"] = clip[f"{src}mlp.c_proj.{kind}"]
            backbone[f"{dst}norm1.{kind}"] = clip[f"{src}ln_1.{kind}"]
            backbone[f"{dst}norm2.{kind}"] = clip[f"{src}ln_2.{kind}"]
    checkpoint = {"model": {**evl_case["official"], **{f"module.backbone.{k}": v for k, v in backbone.items()}}}
    cfg = apply_overrides(model_config("evl-tiny"), {"backbone.freeze": False})  # no CLIP file: all from the checkpoint
    created = create_model_with_report(cfg, checkpoint=checkpoint)
    assert created.report.ok and created.report.loaded == 51 + 3 * 12 + 6
    with torch.no_grad():
        logits = created.model(evl_case["video"])
    torch.testing.assert_close(logits, evl_case["tensors"]["output.logits"], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("switch", sorted(SWITCHES))
def test_each_ablation_switch_removes_its_module(evl_case, switch):
    prefix = SWITCHES[switch]
    reduced = {k: v for k, v in evl_case["official"].items() if not k.startswith("module." + prefix)}
    assert len(reduced) < len(evl_case["official"])
    created = create_model_with_report(
        tiny_config(evl_case, **{f"decoder.{switch}": False}), checkpoint={"model": reduced}
    )
    model = created.model
    assert created.report.ok
    assert getattr(model.decoder, prefix.split(".")[1]) is None
    assert not any(name.startswith(prefix) for name in model.state_dict())
    with torch.no_grad():
        logits = model(evl_case["video"])
    assert logits.shape == (2, 10)
    assert not torch.allclose(logits, evl_case["tensors"]["output.logits"], atol=1e-3)
    with pytest.raises(StateDictMismatchError) as raised:  # the module is expected when its switch is on
        create_model(tiny_config(evl_case), checkpoint={"model": reduced})
    assert raised.value.report.missing and all(k.startswith(prefix) for k in raised.value.report.missing)


def test_temporal_cross_attention_follows_the_official_formula():
    """A loop over frames, query patches and key patches with the official offset index, against vidlab's."""
    torch.manual_seed(0)
    batch, frames, heads, grid, head_dim, dim = 2, 3, 2, 3, 4, 5
    patches = grid * grid
    module = TemporalCrossAttention(grid, dim)
    with torch.no_grad():
        module.prev_frame_table.normal_()
        module.next_frame_table.normal_()
    query = torch.randn(batch, frames, heads, 1 + patches, head_dim)
    key = torch.randn(batch, frames, heads, 1 + patches, head_dim)
    expected = torch.zeros(batch, frames, 1 + patches, dim)
    for n in range(batch):
        for t in range(frames):
            for other, table in ((t - 1, module.prev_frame_table), (t + 1, module.next_frame_table)):
                if not 0 <= other < frames:
                    continue
                q, k = query[n, t, :, 1:], key[n, other, :, 1:]
                weights = (q @ k.transpose(-1, -2) / head_dim**0.5).softmax(-1).mean(0)
                for qp in range(patches):
                    for kp in range(patches):
                        offset = (
                            (qp // grid - kp // grid + grid - 1) * (2 * grid - 1) + qp % grid - kp % grid + grid - 1
                        )
                        expected[n, t, 1 + qp] += weights[qp, kp] * table[offset].detach()
    with torch.no_grad():
        got = module(query, key)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert "offset_index" not in module.state_dict()  # rebuilt from the grid, never saved (as the official code)


@pytest.mark.parametrize("dtype, torch_dtype", [("float16", torch.float16), ("bfloat16", torch.bfloat16)])
def test_frozen_backbone_runs_in_half_precision_with_float32_layer_norms(evl_case, dtype, torch_dtype):
    model = create_model(tiny_config(evl_case, **{"backbone.dtype": dtype}), checkpoint=evl_case["checkpoint_file"])
    with torch.no_grad():
        logits = model(evl_case["video"])
    assert model.backbone.blocks[0].attn.qkv.weight.dtype == torch_dtype
    assert model.backbone.patch_embed.weight.dtype == torch_dtype and model.backbone.pos_embed.dtype == torch_dtype
    assert model.backbone.blocks[0].norm1.weight.dtype == torch.float32
    assert model.decoder.layers[0].attn.q_proj.weight.dtype == torch.float32 and logits.dtype == torch.float32
    reference = evl_case["tensors"]["output.logits"]
    torch.testing.assert_close(logits, reference, atol=0.05, rtol=0)
    assert not torch.equal(logits, reference)


def test_auto_dtype_is_float32_on_cpu_and_fine_tuning_refuses_half(evl_case):
    model = create_model(tiny_config(evl_case))
    assert model.backbone_compute_dtype(torch.device("cpu")) == torch.float32
    assert model.backbone_compute_dtype(torch.device("cuda")) == torch.float16
    with pytest.raises(ConfigError, match="fine-tuned backbone"):
        create_model(tiny_config(evl_case, **{"backbone.freeze": False, "backbone.dtype": "float16"}))


def test_video_with_another_frame_count_is_refused(evl_case):
    model = create_model(tiny_config(evl_case))
    with pytest.raises(ModelInputError, match="3 frames given"):
        model(evl_case["video"][:, :3])


def test_decoder_mlp_drops_hidden_units_only():
    model = create_model("evl-tiny")
    mlp = model.decoder.layers[0].mlp
    assert isinstance(mlp.act, QuickGELU) and mlp.drop.p == 0.5 and mlp.out_drop.p == 0.0
    assert model.head.dropout.p == 0.5


@pytest.mark.parametrize("name", ["evl-vit-b16-8x16", "evl-vit-b16-32x8", "evl-vit-l14-16x16"])
def test_registered_configs_equal_the_official_settings(name):
    backbone, frames, _stride = name.removeprefix("evl-vit-").split("-")[0], *name.split("-")[-1].split("x")
    width = 768 if backbone == "b16" else 1024
    official = evl_config_from_official(
        dict(
            num_frames=int(frames),
            backbone_name="ViT-B/16-lnpre" if backbone == "b16" else "ViT-L/14-lnpre",
            backbone_mode="freeze_fp16",
            decoder_qkv_dim=width,
            decoder_num_heads=width // 64,
        )
    )
    assert apply_overrides(official, {"backbone.dtype": "auto"}) == model_config(name)


def test_model_without_temporal_modules_still_builds_and_runs():
    cfg = apply_overrides(model_config("evl-tiny"), {f"decoder.{s}": False for s in SWITCHES})
    model = create_model(cfg)
    assert isinstance(model, EVL)
    assert all(getattr(model.decoder, prefix.split(".")[1]) is None for prefix in SWITCHES.values())
    with torch.no_grad():
        assert model(torch.randn(1, 4, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"decoder.num_layers": 9}, r"decoder.num_layers must be in \[1, 3\], got 9"),
        ({"decoder.qkv_dim": 0}, "decoder.qkv_dim must be >= 1, got 0"),
        ({"decoder.num_heads": 5}, "decoder.qkv_dim 128 is not divisible by decoder.num_heads 5"),
        ({"decoder.mlp_dropout": 1.5}, r"decoder.mlp_dropout must be in \[0, 1\), got 1.5"),
        ({"cls_dropout": -1.0}, r"cls_dropout must be in \[0, 1\), got -1.0"),
    ],
)
def test_out_of_range_decoder_values_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        create_model("evl-tiny", **overrides)
