"""The shipped configs of the official settings, run on data laid out as the official projects lay it out.

Each test copies ShapesBench tiny into one project's layout under a fresh `data.root` (FiT's WebVid / CC3M /
MSR-VTT folders, Singularity's `anno_pretrain/` + `videos_images/` with hub model folders, EVL's Kinetics list
files) and trains the config for a few steps with only `data.root`, model files, sizes and step counts
overridden: the paths the config names must all resolve under `data.root`, whatever the working directory.
"""

from __future__ import annotations

import csv
import json
import pickle
import shutil
import zlib
from pathlib import Path

import pytest
import torch
from _evl_setup import make_clip_folder
from _text_setup import make_text_folder

from vidlab.cli.main import main
from vidlab.config import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RUN_CHEAPLY = ["trainer.accelerator=cpu", "trainer.strategy=auto", "trainer.precision=32", "data.num_workers=0"]


def _entries(shapes_root: Path, name: str) -> list[dict]:
    return json.loads((shapes_root / "annotations" / name).read_text())


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dst)


def _fit_layout(shapes_root: Path, root: Path) -> int:
    """WebVid CSVs with page folders, CC3M's TSV with crc32 file names, MSR-VTT's json + jsfusion list and caption
    index (one fixed caption per test video); returns how many captions MSR_VTT.json holds."""
    for split, name in (("train", "captions_train.json"), ("val", "captions_val.json")):
        meta = root / "webvid/metadata"
        meta.mkdir(parents=True, exist_ok=True)
        with open(meta / f"results_2M_{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["videoid", "contentUrl", "duration", "page_dir", "name"])
            for i, entry in enumerate(_entries(shapes_root, name)):
                video_id, page = f"{split}{i}", f"{i % 3:06d}_{i % 3:06d}"
                _copy(shapes_root / entry["video"], root / f"webvid/videos/{page}/{video_id}.mp4")
                writer.writerow([video_id, "http://v", "PT00H00M02S", page, entry["caption"][0]])
    (root / "cc3m").mkdir()
    with open(root / "cc3m/cc3m_training_success_full.tsv", "w") as f:
        f.write("caption\tthumbnailUrl\n")
        for i, entry in enumerate(_entries(shapes_root, "images_train.json")):
            url = f"http://img/{i}.jpg"
            _copy(shapes_root / entry["image"], root / "cc3m/training" / str(zlib.crc32(url.encode()) & 0xFFFFFFFF))
            f.write(f"{entry['caption'][0]}\t{url}\n")
    lists, annotations, ids = root / "msrvtt/high-quality/structured-symlinks", [], []
    for i, entry in enumerate(_entries(shapes_root, "captions_test.json")):
        ids.append(f"video{7010 + i}")
        _copy(shapes_root / entry["video"], root / f"msrvtt/videos/all/{ids[-1]}.mp4")
        annotations += [{"image_id": ids[-1], "caption": caption} for caption in entry["caption"]]
    (root / "msrvtt/annotation").mkdir(parents=True)
    (root / "msrvtt/annotation/MSR_VTT.json").write_text(json.dumps({"annotations": annotations}))
    lists.mkdir(parents=True)
    (lists / "val_list_jsfusion.txt").write_text("\n".join(ids) + "\n")
    (lists / "jsfusion_val_caption_idx.pkl").write_bytes(pickle.dumps(dict.fromkeys(ids, 1)))
    return len(annotations)


def test_fit_webvid_cc3m_config_on_fits_own_layout(shapes_root, tmp_path, monkeypatch, capsys):
    """Both stages on FiT's layout; then the same config again from that run's model, stating no model size: the
    sizes come from the ones its model folder records."""
    root = tmp_path / "data"
    all_captions = _fit_layout(shapes_root, root)
    text = make_text_folder(shapes_root, tmp_path / "distilbert")
    monkeypatch.chdir(tmp_path)  # nothing may resolve against the working directory: data.root is absolute
    common = [
        f"data.root={root}",
        f"text.tokenizer={text}",
        f"text.weights={text}",
        "text.max_length=24",
        "data.transform={preset: fit, size: 32, test_short_side: 32, test_crop: 32}",
        *RUN_CHEAPLY,
        "data.steps_per_epoch=1",
        "checkpoint.monitor=null",
        "eval.batch_size=8",
        *(f"{stage}data.train.{i}.batch_size=4" for stage in ("", "stages.1.") for i in (0, 1)),
        "stages.0.trainer.max_epochs=1",
        "stages.1.trainer.max_epochs=1",
    ]
    config = str(CONFIGS / "fit/webvid_cc3m.yaml")
    code = main(["train", config, *common, f"output_dir={tmp_path / 'runs'}", "model.base=fit-tiny", "model.projection_dim=32"])
    out = capsys.readouterr().out
    assert code == 0
    # 1k-A as FiT tests it: the split list's videos, each with the one caption the index fixes
    assert all_captions > 8 and "captions: all 8 captions of the 8 videos; no caption is flagged temporal" in out
    (run,) = (tmp_path / "runs/fit_webvid_cc3m").iterdir()
    assert sorted(p.name for p in run.iterdir() if p.is_dir()) == ["0-1frame", "1-4frames"]

    assert main(["train", config, *common, f"output_dir={tmp_path / 'again'}", f"init_from={run / '1-4frames/model'}"]) == 0
    (again,) = (tmp_path / "again/fit_webvid_cc3m").iterdir()
    model = load_config(again / "1-4frames/model/config.yaml")
    assert (model.video.embed_dim, model.video.depth, model.projection_dim) == (64, 2, 32)


def _hub_beit_folder(out: Path) -> Path:
    from transformers import BeitConfig, BeitModel

    torch.manual_seed(0)
    config = BeitConfig(
        hidden_size=48, num_hidden_layers=2, num_attention_heads=2, intermediate_size=96, image_size=224, patch_size=8,
        use_relative_position_bias=True, use_mean_pooling=True, layer_scale_init_value=0.1,
    )
    BeitModel(config, add_pooling_layer=True).save_pretrained(out)
    return out


def test_singularity_pretraining_then_fine_tuning_with_the_official_configs(shapes_root, tmp_path, monkeypatch, capsys):
    """pretrain_5m.yaml with the official layout: the BEiT's sizes come from the hub folder's config.json, its
    image size from the config (the official model takes `image_res` and resizes the bias tables). Then
    ret_msrvtt.yaml from that run, stating no size: they come from the sizes its model folder records."""
    root = tmp_path / "data"
    for entry in _entries(shapes_root, "captions_train.json"):
        _copy(shapes_root / entry["video"], root / "videos_images/webvid_2fps_224" / Path(entry["video"]).name)
    for entry in _entries(shapes_root, "images_train.json"):
        _copy(shapes_root / entry["image"], root / "videos_images/cc3m_224" / Path(entry["image"]).name)
    for entry in _entries(shapes_root, "captions_test.json"):
        _copy(shapes_root / entry["video"], root / "videos_images/msrvtt_2fps_224" / Path(entry["video"]).name)
    pairs = {
        "anno_pretrain/webvid_train.json": [{"video": Path(e["video"]).name, "caption": e["caption"][0]} for e in _entries(shapes_root, "captions_train.json")],
        "anno_pretrain/cc3m_train.json": [{"image": Path(e["image"]).name, "caption": e["caption"][0]} for e in _entries(shapes_root, "images_train.json")],
        "anno_downstream/msrvtt_test1k.json": [{"video": Path(e["video"]).name, "caption": e["caption"][0]} for e in _entries(shapes_root, "captions_test.json")],
        "anno_downstream/msrvtt_ret_train7k.json": [{"video": Path(e["video"]).name, "caption": c} for e in _entries(shapes_root, "captions_test.json") for c in e["caption"]],
    }
    pairs["anno_downstream/msrvtt_ret_test1k.json"] = pairs["anno_downstream/msrvtt_test1k.json"]
    for rel, entries in pairs.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(json.dumps(entries))
    beit = _hub_beit_folder(tmp_path / "beit")
    bert = make_text_folder(shapes_root, tmp_path / "bert", layers=2)
    monkeypatch.chdir(tmp_path)
    overrides = [
        f"data.root={root}",
        f"text.tokenizer={bert}",
        f"text.weights={bert}",
        f"model.init.vision_weights={beit}",
        f"output_dir={tmp_path / 'runs'}",
        "model.vision.image_size=32",
        "data.transform.size=32",
        "model.text.fusion_layer=1",
        "model.embed_dim=16",
        *RUN_CHEAPLY,
        "data.train.0.batch_size=4",
        "data.train.1.batch_size=4",
        "data.steps_per_epoch=2",
        "trainer.max_epochs=1",
        "eval.batch_size=4",
        "eval.k_test=4",
    ]
    assert main(["train", str(CONFIGS / "singularity/pretrain_5m.yaml"), *overrides]) == 0
    assert "subsets: all 8 captions (no caption is flagged temporal)" in capsys.readouterr().out
    (run,) = (tmp_path / "runs/singularity_pretrain_5m").iterdir()
    vision = load_config(run / "0-train/model/config.yaml").vision
    assert (vision.hidden_size, vision.num_hidden_layers, vision.intermediate_size, vision.patch_size) == (48, 2, 96, 8)
    assert vision.image_size == 32

    fine_tune = [
        f"init_from={run / '0-train/model'}",
        f"data.root={root}",
        f"text.tokenizer={bert}",
        f"output_dir={tmp_path / 'runs'}",
        "data.transform.size=32",
        *RUN_CHEAPLY,
        "data.train.0.batch_size=4",
        "data.steps_per_epoch=2",
        "eval.batch_size=4",
        "eval.k_test=4",
    ]
    assert main(["train", str(CONFIGS / "singularity/ret_msrvtt.yaml"), *fine_tune]) == 0
    (fine_tuned,) = (tmp_path / "runs/singularity_ret_msrvtt").iterdir()
    model = load_config(fine_tuned / "0-train/model/config.yaml")
    assert (model.task, model.vision.hidden_size, model.text.hidden_size, model.embed_dim) == ("retrieval", 48, 32, 16)
    run.rename(tmp_path / "moved")  # the run evaluates from the sizes its own model folder records
    capsys.readouterr()
    assert main(["eval", str(fine_tuned)]) == 0
    assert "itm all t2v" in capsys.readouterr().out


def test_evl_kinetics_config_on_list_files_under_the_data_root(shapes_root, tmp_path, monkeypatch):
    root = tmp_path / "k400"
    classes = json.loads((shapes_root / "annotations/motion_classes.json").read_text())
    (root / "lists").mkdir(parents=True)
    for split, name in (("train", "motion_train.txt"), ("val", "motion_test.txt")):
        lines = []
        for line in (shapes_root / "annotations" / name).read_text().split("\n"):
            if line.strip():
                rel, label = line.rsplit(" ", 1)
                target = Path(split) / classes[int(label)] / Path(rel).name
                _copy(shapes_root / rel, root / target)
                lines.append(f"{target} {label}")
        (root / "lists" / f"{split}.txt").write_text("\n".join(lines) + "\n")
    (root / "k400_class_mappings.json").write_text(json.dumps(classes))
    clip = make_clip_folder(tmp_path / "clip")
    monkeypatch.chdir(tmp_path)
    overrides = [
        f"data.root={root}",
        f"model.backbone.weights={clip}",
        f"output_dir={tmp_path / 'runs'}",
        f"model.num_classes={len(classes)}",
        "model.base=evl-tiny",
        "data.transform.size=32",
        *RUN_CHEAPLY,
        "data.batch_size=4",
        "data.num_frames=4",
        "data.sampling_rate=4",
        "trainer.max_steps=2",
        "eval.batch_size=2",
    ]
    assert main(["train", str(CONFIGS / "evl/k400_vitb16_8x16.yaml"), *overrides]) == 0
    (run,) = (tmp_path / "runs/evl_k400_vitb16_8x16").iterdir()
    assert (run / "confusion_val.png").is_file()


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("data.train.0.media_root=videos_2fps", "data.train[0].media_root: "),
        ("data.test.annotations=anno_downstream/none.json", "data.test.annotations: "),
    ],
)
def test_a_path_missing_under_the_data_root_is_named_before_a_run_folder_exists(shapes_root, tmp_path, override, named, capsys):
    args = ["train", str(CONFIGS / "singularity/shapes_tiny.yaml"), f"data.root={shapes_root}", f"output_dir={tmp_path / 'runs'}", override]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert named in err and f"relative paths are under data.root '{shapes_root}'" in err
    assert not (tmp_path / "runs").exists()
