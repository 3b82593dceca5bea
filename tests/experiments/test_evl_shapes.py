"""`vidlab experiment evl-shapes --quick` on ShapesBench tiny: every stage runs, every row reaches the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from vidlab.cli.main import main
from vidlab.experiments.evl_shapes import VARIANTS, Variant, backbone_overrides
from vidlab.models import create_model, model_config
from vidlab.models.checkpoint import save_vidlab_checkpoint
from vidlab.models.factory import apply_overrides


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The whole quick experiment, once: (its folder, what it printed)."""
    import contextlib
    import io

    root = tmp_path_factory.mktemp("evl_shapes")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["experiment", "evl-shapes", "--size", "tiny", "--quick", "--data", str(root / "data"), "--out", str(root / "out")])
    assert code == 0
    return root / "out", printed.getvalue()


def test_quick_experiment_reports_every_variant(quick_run):
    out, printed = quick_run
    results = json.loads((out / "results.json").read_text())
    assert [r["variant"] for r in results["runs"]] == [v.name for v in VARIANTS]
    assert results["chance"] == {"motion": 12.5, "appearance": 12.5}
    runs = {r["variant"]: r for r in results["runs"]}
    for run in runs.values():
        assert 0.0 <= run["metrics"]["top1"] <= 100.0 and "mean_class_acc" in run["metrics"]
        assert run["peak_rss_mib"] > run["start_rss_mib"] > 0 and run["train_time_s"] > 0
        assert Path(run["run_dir"], "measurement.json").is_file()
    frozen, no_temporal, finetuned = runs["motion-temporal"], runs["motion-no_temporal"], runs["motion-temporal-finetune"]
    assert no_temporal["trainable_params"] < frozen["trainable_params"] < finetuned["trainable_params"]
    assert frozen["total_params"] == finetuned["total_params"]  # the same model, only what trains differs
    assert finetuned["lr"] == VARIANTS[-1].lr and frozen["lr"] != finetuned["lr"]
    assert {"zero_shot_appearance_top1", "zero_shot_shape_top1", "t2i_R1"} <= results["clip"]["metrics"].keys()

    report = (out / "report.html").read_text()
    # EVL header + rows, CLIP header + row, runs header + a row per EVL run and the CLIP run
    assert report.count("<tr>") == (1 + len(VARIANTS)) + 2 + (1 + len(VARIANTS) + 1)
    for name in ("motion", "appearance", "fine-tuned", "frozen", "zero-shot colour top-1 %"):
        assert name in report
    assert f"{finetuned['trainable_params']:,}" in report and f"{finetuned['trainable_params']:,}" in printed
    assert "| motion     | fine-tuned | all" in printed


def test_evl_runs_use_the_pretrained_clip_tower(quick_run):
    out, _ = quick_run
    clip_model = out / "runs" / "clip" / "0-train" / "model"
    vision = OmegaConf.load(clip_model / "config.yaml").vision
    for variant in VARIANTS:
        stage = OmegaConf.load(out / "runs" / variant.name / "0-train" / "config.yaml")
        assert stage.model.backbone.weights == str(clip_model)
        assert stage.model.backbone.width == vision.width and stage.model.backbone.layers == vision.layers
        assert stage.model.backbone.freeze is not variant.finetune
        assert stage.model.decoder.temporal_pos_embed is variant.temporal
        assert stage.data.train.annotations == f"annotations/{variant.task}_train.txt"


def test_variant_and_backbone_overrides(tmp_path):
    overrides = Variant("appearance", temporal=False).overrides()
    assert "model.decoder.temporal_conv=false" in overrides and "model.backbone.freeze=true" in overrides
    assert "data.class_names=annotations/appearance_classes.json" in overrides
    assert "model.backbone.freeze=false" in Variant("motion", temporal=True, finetune=True).overrides()
    assert not any(o.startswith("optim.lr=") for o in overrides)  # the config's rate unless the variant sets one
    assert "optim.lr=0.0003" in Variant("motion", temporal=True, finetune=True, lr=3e-4).overrides()
    sizes = {"vision.image_size": 64, "vision.patch_size": 16, "vision.width": 96, "vision.layers": 3, "vision.heads": 3}
    clip_cfg = apply_overrides(model_config("clip-tiny"), sizes)
    save_vidlab_checkpoint(create_model(clip_cfg), clip_cfg, tmp_path)
    backbone = backbone_overrides(tmp_path)
    assert "model.backbone.width=96" in backbone and "model.decoder.qkv_dim=96" in backbone and "model.decoder.num_heads=3" in backbone
    assert f"model.backbone.weights={tmp_path}" in backbone
