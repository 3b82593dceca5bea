"""`vidlab train` / `vidlab eval` from the command line: one-line errors, bad-sample policies, evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _fit_setup import read_weights, tiny_config, write_config

from vidlab.cli.main import main
from vidlab.engine.config import load_train_config
from vidlab.engine.runner import TrainResult, evaluate, load_checkpoint_weights, train


@pytest.fixture(scope="module")
def trained(shapes_root, text_folder, tmp_path_factory) -> TrainResult:
    folder = tmp_path_factory.mktemp("trained")
    config = tiny_config(shapes_root, text_folder, folder / "runs")
    config["eval"]["after_train"] = True
    config["trainer"]["max_epochs"] = 1
    return train(load_train_config(write_config(folder / "c.yaml", config)))


def _with_missing_video(shapes_root: Path, split: str, out: Path) -> Path:
    """The split's caption annotations plus one entry whose video does not exist."""
    entries = json.loads((shapes_root / "annotations" / f"captions_{split}.json").read_text())
    entries.insert(1, {"video": "videos/missing.mp4", "caption": ["a red circle"], "temporal": [False]})
    out.write_text(json.dumps(entries))
    return out


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.train=[{name: v, annotations: annotations/nope.json, batch_size: 4}]", "nope.json: file not found"),
        ("model.base=fit-nope", "unknown model 'fit-nope'"),
        ("trainer.epochs=3", "trainer.epochs"),
        ("text.tokenizer=bert-base-uncased", "never downloads"),
        ("trainer.strategy=fsdp", "fsdp needs GPUs"),
        ("eval.chunk_size=0", "eval.chunk_size must be >= 1, got 0"),
        ("loss.temperature=0", "loss.temperature must be > 0, got 0.0"),
        ("eval.batch_size=0", "eval.batch_size must be >= 1, got 0"),
        ("data.train=[{name: v, annotations: annotations/captions_train.json, batch_size: 0}]", "training set 'v': batch_size must be >= 1"),
        ("data.train=[{name: v, annotations: annotations/captions_train.json, batch_size: 64}]", "samples cannot fill one batch of 64"),
        ("data.backend=nope", "unknown video backend 'nope'; known: pyav"),
    ],
)
def test_bad_config_is_one_error_line_and_no_run_folder(tmp_path, shapes_root, text_folder, capsys, override, message):
    path = write_config(tmp_path / "c.yaml", tiny_config(shapes_root, text_folder, tmp_path / "runs"))
    assert main(["train", str(path), override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vidlab: error: ") and message in err and "Traceback" not in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_eval_of_a_run_repeats_the_after_training_numbers(trained, capsys):
    assert evaluate(trained.run_dir) == pytest.approx(trained.metrics)
    out = capsys.readouterr().out
    assert "protocol: Frozen in Time retrieval, split 'test'" in out and "subset 'temporal'" in out
    assert "temporal v2t" in out and "fit_uniform, 2 frames per video" in out


def test_eval_with_sliding_window_and_offloaded_embeddings(trained, capsys):
    assert main(["eval", str(trained.run_dir), "eval.sliding_window_stride=2", "eval.offload_embeddings=true"]) == 0
    out = capsys.readouterr().out
    assert "fit_sliding_window (stride 2)" in out and "mean over windows" in out
    assert "all t2v" in out


def test_eval_of_a_checkpoint_file_uses_its_weights(trained):
    last = trained.run_dir / "0-train" / "checkpoints" / "last.ckpt"
    weights = load_checkpoint_weights(last)
    final = read_weights(trained.model_dir)
    assert weights.keys() == final.keys() and all(torch.equal(weights[k], final[k]) for k in final)
    early = load_checkpoint_weights(trained.run_dir / "0-train" / "checkpoints" / "step0000002.ckpt")
    assert not torch.equal(early["video_proj.weight"], final["video_proj.weight"])
    assert evaluate(last) == pytest.approx(trained.metrics)


def test_eval_checkpoint_is_refused_beside_a_run_folder(trained, capsys):
    assert main(["eval", str(trained.run_dir), "eval.checkpoint=elsewhere.ckpt"]) == 2
    assert "eval.checkpoint picks the weights of a config YAML" in capsys.readouterr().err


def test_eval_raises_on_a_bad_video(trained, shapes_root, tmp_path, capsys):
    bad = _with_missing_video(shapes_root, "test", tmp_path / "bad_test.json")
    assert main(["eval", str(trained.run_dir), f"data.test.annotations={bad}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vidlab: error: ") and "missing.mp4: missing" in err and len(err.splitlines()) == 1


def test_training_skips_bad_videos_and_reports_them(tmp_path, shapes_root, text_folder, capsys):
    entries = json.loads((shapes_root / "annotations" / "captions_train.json").read_text())[:4]
    entries += [{"video": f"videos/missing{i}.mp4", "caption": ["a red circle"]} for i in range(8)]
    bad = tmp_path / "bad_train.json"
    bad.write_text(json.dumps(entries))  # 2 of 3 entries missing: every batch meets some
    path = write_config(tmp_path / "c.yaml", tiny_config(shapes_root, text_folder, tmp_path / "runs"))
    overrides = [f"data.train=[{{name: v, annotations: {bad}, batch_size: 4}}]", "debug=true", "debug_steps=2", "trainer.max_epochs=1", "data.max_bad_fraction=0.9"]
    assert main(["train", str(path), *overrides]) == 0
    out = capsys.readouterr().out
    summary = out.split("bad samples: ")[1]  # printed once, at the end of the run
    assert summary.count("videos/missing") >= 2 and "missing (x" in summary
    (run,) = (tmp_path / "runs" / "tiny").iterdir()
    assert torch.load(run / "0-train" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2  # debug: 2 steps


def test_a_bad_test_video_after_training_names_the_saved_weights(tmp_path, shapes_root, text_folder, capsys):
    config = tiny_config(shapes_root, text_folder, tmp_path / "runs")
    config["eval"]["after_train"] = True
    path = write_config(tmp_path / "c.yaml", config)
    bad = _with_missing_video(shapes_root, "test", tmp_path / "bad_test.json")
    overrides = ["debug=true", "debug_steps=2", "trainer.max_epochs=1"]
    assert main(["train", str(path), *overrides, f"data.test.annotations={bad}"]) == 2
    error, note = capsys.readouterr().err.strip().splitlines()
    assert error.startswith("vidlab: error: ") and "missing.mp4: missing" in error
    (run,) = (tmp_path / "runs" / "tiny").iterdir()
    model_dir = run / "0-train" / "model"
    assert f"its weights are in {model_dir}" in note and f"`vidlab eval {model_dir}`" in note
    bad.write_text((shapes_root / "annotations" / "captions_test.json").read_text())  # the user fixes the file
    assert main(["eval", str(model_dir)]) == 0
    assert "all t2v" in capsys.readouterr().out
