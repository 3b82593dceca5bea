"""FiT training through the engine: run layout, exact resume, interrupts, curriculum stages, joint mixing."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from _fit_setup import read_weights, tiny_config, write_config

from vidlab.engine.config import load_train_config
from vidlab.engine.runner import TrainingError, train


class CrashAt(pl.Callback):
    """Raises `error` when the optimizer step `step` is about to start."""

    def __init__(self, step: int, error: BaseException):
        self.step = step
        self.error = error

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise self.error


class Recorder(pl.Callback):
    """Per training batch: the global step, the dataset indices, the clip shape; and the weights at each
    stage start."""

    def __init__(self):
        self.batches: list[tuple[int, list[int], tuple[int, ...]]] = []
        self.stage_start_weights: list[dict[str, torch.Tensor]] = []

    def on_train_start(self, trainer, pl_module) -> None:
        self.stage_start_weights.append({k: v.clone() for k, v in pl_module.model.state_dict().items()})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches.append((trainer.global_step, batch["index"].tolist(), tuple(batch["video"].shape)))


def _config(tmp_path: Path, shapes_root: Path, text_folder: Path, name: str = "c.yaml", **sections) -> Path:
    config = tiny_config(shapes_root, text_folder, tmp_path / "runs")
    for section, values in sections.items():
        config[section] = {**config[section], **values} if isinstance(values, dict) else values
    return write_config(tmp_path / name, config)


def test_run_folder_holds_config_checkpoints_weights_and_eval(tmp_path, shapes_root, text_folder):
    path = _config(tmp_path, shapes_root, text_folder, logging={"tensorboard": True, "progress_bar": False}, eval={"after_train": True, "batch_size": 8})
    result = train(load_train_config(path))

    run = result.run_dir
    assert run.parent == tmp_path / "runs" / "tiny"  # runs/NAME/TIMESTAMP
    saved = load_train_config(run / "config.yaml")
    assert saved.recipe == "fit" and saved.data.num_frames == 2 and saved.text.tokenizer == str(text_folder)
    stage = run / "0-train"
    names = {p.name for p in (stage / "checkpoints").iterdir()}
    assert {"step0000002.ckpt", "step0000004.ckpt", "step0000006.ckpt", "last.ckpt"} <= names
    assert list((stage / "tensorboard").glob("events.out.tfevents.*"))
    # the final weights are a vidlab checkpoint, and training moved them away from the text tower's init
    final = read_weights(result.model_dir)
    from safetensors.torch import load_file

    init_word_embeddings = load_file(str(text_folder / "model.safetensors"))["embeddings.word_embeddings.weight"]
    assert not torch.equal(final["text_encoder.backbone.embeddings.word_embeddings.weight"], init_word_embeddings)
    report = json.loads((run / "eval_test.json").read_text())
    assert report["split"] == "test" and "temporal" in report["protocol"]
    assert set(result.metrics) >= {"all/t2v_R1", "all/v2t_MedR", "temporal/t2v_R5", "all/rsum"}
    assert report["metrics"] == pytest.approx(result.metrics)


def test_resume_mid_epoch_is_exact(tmp_path, shapes_root, text_folder):
    """A run that crashes at step 4 (mid epoch 2) and resumes ends with the very weights of a run that
    never stopped: data position, optimizer, schedule and dropout RNG are all restored."""
    path = _config(tmp_path, shapes_root, text_folder)
    straight_rec, resumed_rec = Recorder(), Recorder()
    straight = train(load_train_config(path, ["run_dir=" + str(tmp_path / "straight")]), callbacks=[straight_rec])

    crashed_dir = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="disk on fire") as crash:
        train(load_train_config(path, ["run_dir=" + str(crashed_dir)]), callbacks=[CrashAt(4, RuntimeError("disk on fire")), resumed_rec])
    interrupted = crashed_dir / "0-train" / "checkpoints" / "interrupted.ckpt"
    assert interrupted.is_file()
    assert crash.value.__notes__ == [f"the training state is saved: `vidlab train CONFIG resume={interrupted}` goes on from it"]
    resumed = train(load_train_config(path, ["run_dir=" + str(crashed_dir), "resume=auto"]), callbacks=[resumed_rec])

    assert resumed.run_dir == crashed_dir
    assert resumed_rec.batches == straight_rec.batches  # same batches at the same steps, none repeated
    a, b = read_weights(straight.model_dir), read_weights(resumed.model_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_from_a_periodic_checkpoint_is_exact(tmp_path, shapes_root, text_folder):
    """A run that dies without saving its state (as under kill -9) and resumes from its last periodic checkpoint
    ends with the weights of a separate run that never stopped."""
    path = _config(tmp_path, shapes_root, text_folder)
    straight = train(load_train_config(path, ["run_dir=" + str(tmp_path / "straight")]))
    with pytest.raises(RuntimeError, match="power cut"):
        train(
            load_train_config(path, ["run_dir=" + str(tmp_path / "killed"), "checkpoint.save_on_exception=false"]),
            callbacks=[CrashAt(3, RuntimeError("power cut"))],
        )
    ckpt = tmp_path / "killed" / "0-train" / "checkpoints" / "step0000002.ckpt"  # mid epoch 1 (3 steps per epoch)
    resumed = train(load_train_config(path, [f"resume={ckpt}"]))
    assert resumed.run_dir == tmp_path / "killed"  # a resumed run goes on in its own folder
    a, b = read_weights(straight.model_dir), read_weights(resumed.model_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_folder_is_never_overwritten(tmp_path, shapes_root, text_folder):
    path = _config(tmp_path, shapes_root, text_folder)
    done = train(load_train_config(path, ["run_dir=" + str(tmp_path / "run")]))
    weights = (done.model_dir / "model.safetensors").read_bytes()
    with pytest.raises(TrainingError, match="holds a finished run: choose a new folder"):
        train(load_train_config(path, ["run_dir=" + str(tmp_path / "run"), "optim.lr=0.5"]))
    assert (done.model_dir / "model.safetensors").read_bytes() == weights
    with pytest.raises(RuntimeError, match="power cut"):
        train(load_train_config(path, ["run_dir=" + str(tmp_path / "unfinished")]), callbacks=[CrashAt(1, RuntimeError("power cut"))])
    with pytest.raises(TrainingError, match=r"holds an unfinished run: `vidlab train CONFIG run_dir=\S+ resume=auto` goes on"):
        train(load_train_config(path, ["run_dir=" + str(tmp_path / "unfinished")]))


def test_resume_auto_passes_over_checkpoints_a_full_disk_left_incomplete(tmp_path, shapes_root, text_folder, caplog):
    path = _config(tmp_path, shapes_root, text_folder)
    straight = train(load_train_config(path, ["run_dir=" + str(tmp_path / "straight")]))
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="power cut"):
        train(load_train_config(path, ["run_dir=" + str(run)]), callbacks=[CrashAt(5, RuntimeError("power cut"))])
    checkpoints = run / "0-train" / "checkpoints"
    (checkpoints / "interrupted.ckpt").write_bytes(b"")  # what a full disk left of the newest files
    for name in ("step0000004.ckpt", "last.ckpt"):
        data = (checkpoints / name).read_bytes()
        (checkpoints / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(TrainingError, match="is incomplete"):
        train(load_train_config(path, ["run_dir=" + str(run), f"resume={checkpoints / 'step0000004.ckpt'}"]))
    with caplog.at_level("WARNING"):
        resumed = train(load_train_config(path, ["run_dir=" + str(run), "resume=auto"]))
    skipped = {line.split("skipping ")[1].split(" ")[0] for line in caplog.messages if "skipping" in line}
    assert {Path(p).name for p in skipped} == {"interrupted.ckpt", "step0000004.ckpt", "last.ckpt"}
    a, b = read_weights(straight.model_dir), read_weights(resumed.model_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)  # from step 2, exactly


def test_the_best_checkpoint_holds_weights_only_and_is_never_resumed(tmp_path, shapes_root, text_folder):
    val = {"annotations": "annotations/captions_test.json"}
    path = _config(tmp_path, shapes_root, text_folder, data={"val": val}, checkpoint={"every_n_steps": 2, "keep": 1, "monitor": "val/all/rsum"})
    run = train(load_train_config(path, ["run_dir=" + str(tmp_path / "run")])).run_dir
    checkpoints = run / "0-train" / "checkpoints"
    (best,) = checkpoints.glob("best-step*.ckpt")
    held = torch.load(best, weights_only=True)
    assert "state_dict" in held and "optimizer_states" not in held
    assert "optimizer_states" in torch.load(checkpoints / "last.ckpt", weights_only=True)
    (checkpoints / "last.ckpt").unlink()
    for periodic in checkpoints.glob("step*.ckpt"):
        periodic.unlink()
    (run / "0-train" / "model" / "model.safetensors").unlink()
    best.touch()  # the newest file: still not a resume point
    resumed = train(load_train_config(path, ["run_dir=" + str(run), "resume=auto"]))
    assert resumed.run_dir == run and (run / "0-train" / "model" / "model.safetensors").is_file()


def test_ctrl_c_saves_a_loadable_checkpoint(tmp_path, shapes_root, text_folder):
    path = _config(tmp_path, shapes_root, text_folder)
    with pytest.raises(KeyboardInterrupt):
        train(load_train_config(path, ["run_dir=" + str(tmp_path / "run")]), callbacks=[CrashAt(3, KeyboardInterrupt())])
    saved = torch.load(tmp_path / "run" / "0-train" / "checkpoints" / "interrupted.ckpt", weights_only=True)
    assert saved["global_step"] == 3
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches": 0}]


def test_stages_run_a_frame_curriculum_from_the_previous_weights(tmp_path, shapes_root, text_folder):
    recorder = Recorder()
    stages = [
        {"name": "1frame", "model": {"video": {"num_frames": 1}}, "data": {"num_frames": 1}, "optim": {"lr": 2.0e-3}},
        {"name": "2frames", "trainer": {"max_epochs": 1}, "optim": {"lr": 5.0e-4}},
    ]
    path = _config(tmp_path, shapes_root, text_folder, trainer={"accelerator": "cpu", "max_epochs": 1}, stages=stages)
    result = train(load_train_config(path), callbacks=[recorder])

    assert [p.name for p in result.stage_dirs] == ["0-1frame", "1-2frames"]
    assert load_train_config(result.stage_dirs[0] / "config.yaml").optim.lr == 2.0e-3
    assert {shape[1] for _, _, shape in recorder.batches[:3]} == {1} and {shape[1] for _, _, shape in recorder.batches[3:]} == {2}
    first = read_weights(result.stage_dirs[0] / "model")
    second_start = recorder.stage_start_weights[1]
    assert first["video_encoder.temporal_embed"].shape[1] == 1 and second_start["video_encoder.temporal_embed"].shape[1] == 2
    # stage 2 starts from stage 1's final weights; the new frame's temporal embedding is zero-filled
    assert torch.equal(second_start["video_encoder.temporal_embed"][:, :1], first["video_encoder.temporal_embed"])
    assert torch.equal(second_start["video_encoder.temporal_embed"][:, 1], torch.zeros_like(second_start["video_encoder.temporal_embed"][:, 1]))
    assert torch.equal(second_start["video_encoder.patch_embed.weight"], first["video_encoder.patch_embed.weight"])


def test_joint_image_and_video_training_alternates_batches(tmp_path, shapes_root, text_folder):
    recorder = Recorder()
    train_sets = [
        {"name": "videos", "annotations": "annotations/captions_train.json", "batch_size": 4},
        {"name": "images", "annotations": "annotations/images_train.json", "batch_size": 2},
    ]
    path = _config(tmp_path, shapes_root, text_folder, trainer={"accelerator": "cpu", "max_epochs": 1})
    result = train(load_train_config(path, ["data.steps_per_epoch=2"] + [f"data.train={json.dumps(train_sets)}"]), callbacks=[recorder])

    # FiT's mixing: per step one video batch then one image batch, each with its own optimizer step
    assert [shape[:2] for _, _, shape in recorder.batches] == [(4, 2), (2, 1), (4, 2), (2, 1)]
    assert [step for step, _, _ in recorder.batches] == [1, 2, 3, 4]
    assert (result.model_dir / "model.safetensors").is_file()


def test_mixed_precision_accumulation_clipping_and_activation_checkpointing(tmp_path, shapes_root, text_folder):
    class Inspect(pl.Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            self.checkpointing = pl_module.model.video_encoder.grad_checkpointing
            self.precision = trainer.precision

    inspect = Inspect()
    path = _config(tmp_path, shapes_root, text_folder)
    overrides = ["trainer.precision=bf16-mixed", "trainer.accumulate_grad_batches=2", "trainer.gradient_clip_val=0.5", "trainer.grad_checkpointing=true"]
    result = train(load_train_config(path, overrides), callbacks=[inspect])
    assert inspect.checkpointing and inspect.precision == "bf16-mixed"
    last = torch.load(result.run_dir / "0-train" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 4  # 2 epochs x 3 batches, one optimizer step per 2 (the last one partial)
    assert all(torch.isfinite(w).all() for w in read_weights(result.model_dir).values())
