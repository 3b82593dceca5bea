"""The CLIP recipe: tokenizer adapter, still-frame records, CLIP's loss, evaluation metrics, a tiny training
run whose `model/` folder EVL reads as its backbone."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from _fit_setup import write_config
from omegaconf import OmegaConf

from vidlab.data.formats import MediaRecord
from vidlab.engine.config import load_train_config
from vidlab.engine.recipe import EvalContext, in_dataset_order
from vidlab.engine.runner import train
from vidlab.errors import ConfigError
from vidlab.models import create_model
from vidlab.models.clip import CLIPTextTower
from vidlab.models.errors import StateDictMismatchError
from vidlab.recipes.clip import (
    ClipRecipe,
    ClipTokenizer,
    ClipTrainConfig,
    contrastive_loss,
    still_records,
)

ZERO_SHOT = [
    {"name": "appearance", "classes": "annotations/appearance_classes.json", "templates": ["a {} circle", "a {} square"]},
    {"name": "shape", "classes": "annotations/shape_classes.json", "templates": ["a red {}", "a blue {}"]},
]


def clip_tiny_config(shapes_root: Path, text_folder: Path, output_dir: Path) -> dict[str, Any]:
    """Images and one frame per video, 2 steps of 8 frames at 32 px, a 2-block 32-wide ViT."""
    return {
        "recipe": "clip",
        "name": "clip_tiny",
        "seed": 0,
        "output_dir": str(output_dir),
        "model": {
            "base": "clip-tiny",
            "embed_dim": 16,
            "vision": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "heads": 1},
            "text": {"context_length": 16, "width": 32, "layers": 1, "heads": 1},
        },
        "text": {"tokenizer": str(text_folder)},
        "data": {
            "root": str(shapes_root),
            "train": [{"name": "images", "annotations": "annotations/images_train.json", "batch_size": 4}],
            "video_frames": {"name": "video_frames", "annotations": "annotations/captions_train.json", "batch_size": 8},
            "mixing": "schedule",
            "test": [{"annotations": "annotations/images_test.json"}, {"annotations": "annotations/captions_test.json"}],
            "transform": {"norm": "clip", "size": 32, "hflip": 0.0},
            "num_workers": 0,
            "steps_per_epoch": 2,
        },
        "trainer": {"accelerator": "cpu", "max_epochs": 1},
        "optim": {"lr": 1.0e-3},
        "logging": {"tensorboard": False, "progress_bar": False},
        "eval": {"batch_size": 16, "zero_shot": ZERO_SHOT},
    }


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models on a shared CPU: a second intra-op thread only spin-waits (see vidlab.experiments.measure)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _recipe(shapes_root: Path, text_folder: Path, tmp_path: Path) -> ClipRecipe:
    raw = clip_tiny_config(shapes_root, text_folder, tmp_path)
    return ClipRecipe(OmegaConf.merge(OmegaConf.structured(ClipTrainConfig), raw))


@pytest.fixture(scope="module")
def trained_run(shapes_root: Path, text_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("clip_run")
    config = write_config(out / "clip.yaml", clip_tiny_config(shapes_root, text_folder, out / "runs"))
    return train(load_train_config(config))


# -- tokenizer adapter ---------------------------------------------------------------------------------


def test_tokenizer_adapter_follows_clip_conventions(text_folder):
    from vidlab.models.text import load_tokenizer

    wrapped = load_tokenizer(str(text_folder))
    tokenizer = ClipTokenizer(wrapped, context_length=8)
    ids = tokenizer(["a red circle", "the big blue square slides to the left on a noisy background"])
    vocab = len(wrapped)
    assert tokenizer.vocab_size == vocab + 2
    assert ids.dtype == torch.int64 and ids.shape == (2, 8)  # the long text is cut to the context
    assert ids[:, 0].tolist() == [vocab, vocab]  # start marker first
    assert ids.argmax(-1).tolist() == [4, 7]  # the end marker is the highest id: after 3 words, and kept when cut
    assert int(ids[0, 4]) == vocab + 1 and ids[0, 5:].eq(0).all()  # padding after the end
    pieces = wrapped("a red circle", add_special_tokens=False)["input_ids"]
    assert ids[0, 1:4].tolist() == pieces  # the wrapped tokenizer's own [CLS]/[SEP] are left out
    with pytest.raises(ConfigError, match="at least 3"):
        ClipTokenizer(wrapped, context_length=2)


def test_padding_does_not_change_a_text_embedding(text_folder):
    from vidlab.models.text import load_tokenizer

    tokenizer = ClipTokenizer(load_tokenizer(str(text_folder)), context_length=16)
    torch.manual_seed(0)
    tower = CLIPTextTower(context_length=16, vocab_size=tokenizer.vocab_size, width=32, layers=1, heads=1, embed_dim=8)
    alone = tower(tokenizer(["a red circle"]))
    padded = tower(tokenizer(["a red circle", "a small green star on a plain background next to a blue box"]))[:1]
    assert torch.allclose(alone, padded, atol=1e-5)


# -- records and loss ----------------------------------------------------------------------------------


def test_still_records_keep_only_the_captions_one_frame_shows():
    image = MediaRecord("a.png", "image", ("a red circle",))
    video = MediaRecord("v.mp4", "video", ("it moves left", "a red circle", "it slides"), extra={"temporal": [True, False, True]})
    only_action = MediaRecord("w.mp4", "video", ("it moves left",), extra={"temporal": [True]})
    stills = still_records([image, video, only_action])
    assert [r.path for r in stills] == ["a.png", "v.mp4"]
    assert stills[0] is image and stills[1].captions == ("a red circle",)
    assert list(stills[1].extra["temporal"]) == [False]


def test_contrastive_loss_is_clip_symmetric_cross_entropy_capped_at_100():
    generator = torch.Generator().manual_seed(0)
    images, texts = torch.randn(5, 8, generator=generator), torch.randn(5, 8, generator=generator)
    scale = torch.tensor(math.log(1 / 0.07))
    logits = scale.exp() * F.normalize(images, dim=-1) @ F.normalize(texts, dim=-1).T
    target = torch.arange(5)
    expected = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    assert contrastive_loss(images, texts, scale) == pytest.approx(expected.item(), rel=1e-5)
    high = torch.tensor(math.log(1000.0), requires_grad=True)
    capped = contrastive_loss(images, texts, high)
    capped.backward()
    assert capped.item() == pytest.approx(contrastive_loss(images, texts, torch.tensor(math.log(100.0))).item(), rel=1e-5)
    assert high.grad == 0  # beyond the cap the scale no longer learns


def test_loss_decreases_on_a_fixed_batch(shapes_root, text_folder, tmp_path):
    recipe = _recipe(shapes_root, text_folder, tmp_path)
    model, model_cfg = recipe.build_model(None)
    assert model_cfg.text.vocab_size == recipe.tokenizer.vocab_size  # the tower's vocabulary is the adapter's
    video_frames = recipe.train_sets()[1]
    batch = video_frames.collate([video_frames.dataset[i] for i in range(8)])
    assert batch["images"].shape == (8, 3, 32, 32)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.train().parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = recipe.training_loss(model, batch, lambda t: t)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_video_frames_carry_only_static_captions(shapes_root, text_folder, tmp_path):
    recipe = _recipe(shapes_root, text_folder, tmp_path)
    _, frames = recipe.train_sets()
    annotations = json.loads((shapes_root / "annotations/captions_train.json").read_text())
    static = {e["video"]: {c for c, t in zip(e["caption"], e["temporal"]) if not t} for e in annotations}
    assert len(frames.dataset) == len(annotations)
    for record in frames.dataset.records:
        assert set(record.captions) == static[str(Path(record.path).relative_to(shapes_root))]
    assert frames.dataset[0]["video"].shape == (1, 3, 32, 32)  # one frame per video


# -- evaluation ----------------------------------------------------------------------------------------


def test_eval_metrics_score_zero_shot_and_retrieval(shapes_root, text_folder, tmp_path):
    recipe = _recipe(shapes_root, text_folder, tmp_path)
    frames = torch.eye(4)
    # rows arrive out of order (as gathered from processes); frame 3 has no appearance label
    outputs = {
        "index": torch.tensor([2, 0, 3, 1]),
        "image_embeds": frames[[2, 0, 3, 1]],
        "is_video": torch.tensor([True, False, True, False]),
        "label/appearance": torch.tensor([1, 0, -1, 5]),
        "zero_shot/appearance": F.one_hot(torch.tensor([1, 0, 2, 4]), 8).float(),  # frames 2 and 0 right, 1 wrong
        "label/shape": torch.tensor([3, 3, 3, 3]),
        "zero_shot/shape": F.one_hot(torch.tensor([3, 3, 3, 3]), 6).float(),
        # two captions of frame 0 (one matches it), one of frame 1 (matches frame 2 better)
        "text_embeds": torch.stack([frames[0], frames[3], frames[2]]),
        "text_video_index": torch.tensor([0, 0, 1]),
        "text_slot": torch.tensor([0, 1, 0]),
    }
    outputs = in_dataset_order(outputs)
    metrics = recipe.eval_metrics(outputs, EvalContext("test"))
    assert metrics["zero_shot_appearance_top1"] == pytest.approx(200 / 3)
    assert metrics["zero_shot_shape_top1"] == 100.0
    assert metrics["t2i_R1"] == pytest.approx(100 / 3)  # caption 0 finds frame 0; the others do not
    assert metrics["i2t_R1"] == pytest.approx(50.0)  # frame 0's best caption is first; frame 1's is not
    assert "frames: 2 images and the middle frame of 2 videos" in recipe.describe_eval(outputs, EvalContext("test"))


def test_eval_set_labels_frames_from_the_metadata(shapes_root, text_folder, tmp_path):
    recipe = _recipe(shapes_root, text_folder, tmp_path)
    eval_set = recipe.eval_set("test")
    batch = eval_set.collate([eval_set.dataset[i] for i in range(len(eval_set.dataset))])
    metadata = {m["path"]: m["labels"] for m in map(json.loads, (shapes_root / "metadata.jsonl").read_text().splitlines())}
    shapes = recipe.class_names()["shape"]
    for path, label, is_video in zip([eval_set.dataset.records[i].path for i in batch["index"]], batch["label/shape"], batch["is_video"]):
        rel = str(Path(path).relative_to(shapes_root))
        assert shapes[int(label)] == metadata[rel]["shape"]
        assert bool(is_video) == rel.startswith("videos/")
    assert batch["is_video"].any() and not batch["is_video"].all()
    assert (batch["label/appearance"] == -1).any()  # colour-changing clips have no colour label


# -- a run and its checkpoint ----------------------------------------------------------------------------


def test_training_run_evaluates_and_its_model_folder_is_an_evl_backbone(trained_run):
    metrics = trained_run.metrics
    assert {"zero_shot_appearance_top1", "zero_shot_shape_top1", "t2i_R1", "i2t_R1", "rsum"} <= metrics.keys()
    assert all(0.0 <= metrics[k] <= 100.0 for k in metrics if k != "rsum")
    clip_weights = create_model(checkpoint=trained_run.model_dir).visual.state_dict()
    evl = create_model(
        "evl-tiny",
        **{
            "backbone.weights": str(trained_run.model_dir),
            "backbone.image_size": 32,
            "backbone.patch_size": 8,
            "backbone.width": 32,
            "backbone.layers": 2,
            "backbone.heads": 1,
            "decoder.num_layers": 2,
            "decoder.qkv_dim": 32,
            "decoder.num_heads": 1,
        },
    )
    backbone = evl.backbone.state_dict()
    assert backbone.keys() - clip_weights.keys() == {"patch_embed.bias"}  # EVL's Linear patch embedding
    assert all(torch.equal(backbone[k], clip_weights[k]) for k in clip_weights if k in backbone)
    with pytest.raises(StateDictMismatchError) as mismatch:  # strict: another tower size is refused, not adapted
        create_model("evl-tiny", **{"backbone.weights": str(trained_run.model_dir), "backbone.image_size": 32, "backbone.patch_size": 8})
    assert mismatch.value.report.shape_mismatch
