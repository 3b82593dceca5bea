"""Singularity's `has_multi_vision_gt` (SSv2 label / template retrieval): one caption, many ground-truth videos.
Training gives clips of one caption one ITC `idx`; evaluation ranks each distinct caption once (t2v: its
best-ranked gt video) and v2t ranks the distinct captions, in either eval-file layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from _singularity_setup import make_text_folder, tiny_config

from vidlab.data.formats import read_annotations
from vidlab.engine.config import load_train_config
from vidlab.engine.recipe import get_recipe, in_dataset_order
from vidlab.engine.runner import evaluate
from vidlab.errors import AnnotationError
from vidlab.models.checkpoint import save_vidlab_checkpoint
from vidlab.tasks.rerank import RetrievalTables
from vidlab.tasks.retrieval import invert_ground_truth

# Three template captions in ShapesBench's words (the tiny text tower's vocabulary)
TEMPLATES = ("a pink square shrinks", "a large pink triangle spins anticlockwise", "a video of a pink box shrinking")


# ---------------------------------------------------------------------------------------------------------
# The metric on hand-made scores


def _outputs(video_index: list[int], row_owner: list[int], row_temporal: list[bool]) -> dict[str, torch.Tensor]:
    """Evaluation outputs of one caption per row; each row's text state holds its row number."""
    rows, videos = len(row_owner), len(video_index)
    return {
        "video_index": torch.tensor(video_index),
        "video_memory": torch.arange(videos, dtype=torch.float32).view(videos, 1, 1, 1),
        "video_pooled": torch.zeros(videos, 1, 2),
        "text_video_index": torch.tensor(row_owner),
        "text_slot": torch.zeros(rows, dtype=torch.long),
        "text_temporal": torch.tensor(row_temporal),
        "text_states": torch.arange(rows, dtype=torch.float32).view(rows, 1, 1).expand(rows, 3, 2).clone(),
        "text_mask": torch.ones(rows, 3, dtype=torch.long),
    }


def test_invert_ground_truth_lists_the_queries_of_each_candidate():
    assert invert_ground_truth(torch.tensor([[0, 1, 2], [3, 4, 5]]), 6).flatten().tolist() == [0, 0, 0, 1, 1, 1]
    ragged = invert_ground_truth(torch.tensor([[2, -1], [0, 2]]), 4)
    assert ragged.tolist() == [[1, -1], [-1, -1], [0, 1], [-1, -1]]


def test_identical_captions_become_one_text_with_all_their_videos():
    # videos arrive out of dataset order; dataset videos 0-2 say caption A, 3-5 caption B; only row of video 4 is temporal
    outputs = in_dataset_order(_outputs([3, 0, 5, 1, 4, 2], [4, 1, 0, 3, 5, 2], [True, False, False, False, False, False]))
    keys = ["A" if owner < 3 else "B" for owner in outputs["text_video_index"].tolist()]

    grouped = RetrievalTables.from_outputs(outputs, keys)
    assert grouped.text_videos.tolist() == [[0, 1, 2], [3, 4, 5]]  # texts in dataset order, videos by dataset index
    assert grouped.temporal.tolist() == [False, True]  # B is temporal through one of its rows
    # each text keeps the state of its first row in dataset order: A of video 0 (gathered row 2), B of video 3 (row 3)
    assert grouped.text_states[:, 0, 0].tolist() == [2.0, 3.0]

    plain = RetrievalTables.from_outputs(outputs)
    assert plain.text_videos.tolist() == [[v] for v in range(6)]
    assert plain.text_to_video.tolist() == list(range(6))


# ---------------------------------------------------------------------------------------------------------
# Annotation layouts


def _test_videos(shapes_root: Path) -> list[str]:
    return [entry["video"] for entry in json.loads((shapes_root / "annotations" / "captions_test.json").read_text())]


def _template_files(shapes_root: Path, folder: Path) -> tuple[Path, Path, Path]:
    """Template captions (video i gets TEMPLATES[i % 3]) in both layouts for the test clips, and per-video training
    captions for the training clips."""
    videos = _test_videos(shapes_root)
    per_video = folder / "ssv2_like_test.json"
    per_video.write_text(json.dumps([{"video": v, "caption": TEMPLATES[i % 3]} for i, v in enumerate(videos)]))
    per_caption = folder / "ssv2_like_test_per_caption.json"
    per_caption.write_text(json.dumps([{"caption": t, "image": videos[j::3]} for j, t in enumerate(TEMPLATES)]))
    train_videos = [entry["video"] for entry in json.loads((shapes_root / "annotations" / "captions_train.json").read_text())]
    train = folder / "ssv2_like_train.json"
    train.write_text(json.dumps([{"video": v, "caption": TEMPLATES[i % 3]} for i, v in enumerate(train_videos)]))
    return per_video, per_caption, train


def test_the_per_caption_layout_gives_one_record_per_video(tmp_path: Path):
    path = tmp_path / "per_caption.json"
    path.write_text(json.dumps([{"caption": "a spins", "image": ["v/1.mp4", "v/2.mp4"]}, {"caption": "b", "image": "v/3.mp4"}]))
    records = read_annotations("singularity", path, tmp_path, kind="video")
    assert [(Path(r.path).name, r.captions, r.kind) for r in records] == [
        ("1.mp4", ("a spins",), "video"),
        ("2.mp4", ("a spins",), "video"),
        ("3.mp4", ("b",), "video"),
    ]
    path.write_text(json.dumps([{"caption": "a", "image": []}]))
    with pytest.raises(AnnotationError, match="empty list of media paths"):
        read_annotations("singularity", path, tmp_path)


# ---------------------------------------------------------------------------------------------------------
# Through the recipe


@pytest.fixture(scope="module")
def setup(shapes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("singularity_multi_gt")
    per_video, per_caption, train = _template_files(shapes_root, folder)
    text = make_text_folder(shapes_root, folder / "bert")
    config = tiny_config(shapes_root, text, folder / "runs")
    config["data"].update(train=[{"name": "ssv2_like", "annotations": str(train), "batch_size": 8}], test={"annotations": str(per_video)})
    config["data"]["has_multi_vision_gt"] = True
    config["eval"].update(k_test=8, checkpoint=str(folder / "model"), output_dir=str(folder / "eval"))
    config_file = folder / "multi_gt.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    recipe = get_recipe(load_train_config(config_file))
    model, model_cfg = recipe.build_model(None)
    save_vidlab_checkpoint(model, model_cfg, folder / "model")
    return {"config": config_file, "per_caption": per_caption, "eval": folder / "eval"}


def test_training_clips_with_the_same_caption_share_their_idx(setup: dict[str, Path]):
    for multi_gt in (True, False):
        recipe = get_recipe(load_train_config(setup["config"], [f"data.has_multi_vision_gt={multi_gt}"]))
        train_set = recipe.train_sets()[0]
        batch = train_set.collate([train_set.dataset[i] for i in (0, 3, 1)])  # captions A, A, B
        idx = batch["idx"].tolist()
        assert (idx[0] == idx[1]) is multi_gt  # by caption with the flag, by file without
        assert idx[0] != idx[2]


def test_eval_ranks_each_distinct_caption_once_in_either_layout(setup: dict[str, Path], shapes_root: Path):
    num_videos = len(_test_videos(shapes_root))
    per_video = evaluate(setup["config"])
    protocol = json.loads((setup["eval"] / "eval_test.json").read_text())["protocol"]
    assert f"{num_videos} videos x 3 texts" in protocol
    assert f"{num_videos} (video, caption) rows hold 3 distinct captions, each with its gt videos" in protocol
    assert "t2v counts the best-ranked gt video" in protocol
    for scoring in ("itm", "itc"):
        for k in (1, 5, 10):  # 3 t2v queries: every recall is a multiple of a third
            thirds = per_video[f"{scoring}/all/t2v_R{k}"] * 3 / 100
            assert thirds == pytest.approx(round(thirds))
        assert per_video[f"{scoring}/all/v2t_R5"] == 100.0  # a gallery of 3 captions: every rank is below 3

    # the official file, {caption, image: [paths]} with `image` read as video: the same clips, the same numbers
    per_caption = evaluate(setup["config"], [f"data.test.annotations={setup['per_caption']}", "data.test.options.kind=video"])
    assert per_caption == pytest.approx(per_video)
