"""VIMPAC on ShapesBench tiny: tokenizing into the official LMDB layout (resumable, unreadable videos reported),
pre-training losses (masked tokens learnt on a fixed batch, one forward of the masked clips for both losses), the
tokenizer -> pretrain -> finetune run through the CLI, and one-line errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import yaml

from vidlab.cli.main import main
from vidlab.data.formats import read_source
from vidlab.data.token_store import TokenStore, store_name, view_specs
from vidlab.data.tokenize import split_stores, tokenize_videos
from vidlab.engine.config import load_train_config
from vidlab.engine.recipe import EvalContext, get_recipe
from vidlab.models.checkpoint import save_vidlab_checkpoint
from vidlab.models.factory import create_model, model_config

CONFIG = Path(__file__).parents[2] / "configs" / "vimpac" / "shapes_tiny.yaml"


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained vqvae-tiny: its codes are arbitrary but deterministic, all the recipe needs."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("vq") / "model"
    save_vidlab_checkpoint(create_model("vqvae-tiny"), model_config("vqvae-tiny"), folder)
    return folder


def motion_videos(root: Path, split: str = "train") -> list[tuple[str, int]]:
    return [(r.path, r.label) for r in read_source(root, f"annotations/motion_{split}.txt", "evl")]


def stage_config(root: Path, tokenizer: Path | str, tokens: Path, **changes) -> dict:
    """The shapes_tiny pretrain stage as a one-stage config on the session's ShapesBench."""
    cfg = yaml.safe_load(CONFIG.read_text())
    stage = cfg["stages"][1]
    data = {**stage["data"], "root": str(root), "shapesbench": None, "tokenizer": str(tokenizer), "tokens": str(tokens),
            "tokenize_workers": 0, "num_workers": 0}
    out = {"recipe": "vimpac", "name": "t", "seed": 0, "task": "pretrain", "model": stage["model"], "data": data,
           "mask": stage["mask"], "trainer": {"max_epochs": 1}, "eval": {"after_train": False}}
    for key, value in changes.items():
        out[key] = value
    return out


def recipe_of(config: dict, tmp_path: Path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return get_recipe(load_train_config(path))


def test_tokenize_resumes_and_reports_unreadable(shapes_root, tokenizer_folder, tmp_path, capsys):
    from vidlab.models.vq_tokenizer import load_tokenizer

    videos = motion_videos(shapes_root)[:6]
    broken = shapes_root.parent / "broken" / "bad.mp4"
    broken.parent.mkdir(exist_ok=True)
    broken.write_bytes(b"not a video")
    stores = split_stores(tmp_path / "tok", "vq", "shapes", "train", "pretrain", 4, 32)
    (store_path,) = stores
    assert store_path.name == "vq_shapes_train_fps4_hflip0_32center32"
    tokenizer = load_tokenizer(str(tokenizer_folder))
    calls = []

    def killed_after_three(frames):
        if len(calls) == 3:
            raise KeyboardInterrupt  # a run killed while tokenizing the 4th video
        calls.append(1)
        return tokenizer.tokenize(frames)

    with pytest.raises(KeyboardInterrupt):
        tokenize_videos(videos, shapes_root, stores, killed_after_three, commit_every=2, progress=False)
    assert len(TokenStore(store_path)) == 2, "only whole committed batches survive the kill"
    summary = tokenize_videos(videos + [(str(broken), 0)], shapes_root, stores, tokenizer.tokenize, workers=2, progress=False)
    assert (summary.written, summary.skipped) == (4, 2)
    assert summary.failed and summary.failed[0][0] == str(broken)
    assert (store_path / "err_filepaths.txt").read_text().split() == [str(broken)]
    store = TokenStore(store_path)
    assert len(store) == 6
    key = "videos/" + Path(videos[0][0]).stem
    tokens, label = store.get(key)
    assert tokens.dtype.name == "int16" and tokens.shape[1:] == (4, 4) and label == videos[0][1]
    # the CLI: the same store, already complete
    code = main(["tokenize", "annotations/motion_train.txt", "--root", str(shapes_root), "--tokenizer", str(tokenizer_folder),
                 "--out", str(tmp_path / "tok"), "--dset", "shapes", "--split", "train", "--fps", "4", "--frame-size", "32",
                 "--workers", "0", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    n = len(motion_videos(shapes_root))
    assert f"tokenized {n} videos into 1 store(s)" in printed and f"{n - 6} entries written, 6 already there, 0 unreadable" in printed


def test_masked_tokens_learnt_on_a_fixed_batch(shapes_root, tokenizer_folder, tmp_path):
    recipe = recipe_of(stage_config(shapes_root, tokenizer_folder, tmp_path / "tok", nce_weight=0.0), tmp_path)
    (train,) = recipe.train_sets()
    batch = train.collate([train.dataset[i] for i in range(4)])
    assert batch["tokens"].shape == (4, 2, 4, 4, 4)
    torch.manual_seed(0)
    model, _ = recipe.build_model(None)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        random.seed(0)  # the same masks every step
        loss = recipe.pretrain_losses(model, batch["tokens"])
        assert set(loss) == {"mlm"}
        optimizer.zero_grad()
        loss["mlm"].backward()
        optimizer.step()
        losses.append(float(loss["mlm"].detach()))
    assert losses[-1] < 0.5 * losses[0], losses


def test_label_fraction_keeps_each_class(shapes_root, tokenizer_folder, tmp_path):
    config = stage_config(shapes_root, tokenizer_folder, tmp_path / "tok", task="finetune")
    config["data"]["test"] = None
    full = recipe_of(config, tmp_path).keys("train")
    config["data"]["train"] = {**config["data"]["train"], "fraction": 0.1}
    recipe = recipe_of(config, tmp_path)
    few = recipe.keys("train")
    labels = {label for _, label in motion_videos(shapes_root)}
    assert set(few) < set(full) and len(few) == len(labels)  # one video per class (ceil of 10 %)
    assert {recipe._first_store("train").get(k)[1] for k in few} == labels
    assert recipe_of(config, tmp_path).keys("train") == few  # seeded


def test_two_clips_share_one_masked_forward(shapes_root, tokenizer_folder, tmp_path):
    recipe = recipe_of(stage_config(shapes_root, tokenizer_folder, tmp_path / "tok"), tmp_path)
    (train,) = recipe.train_sets()
    batch = train.collate([train.dataset[i] for i in range(4)])
    codes = batch["tokens"]
    model, cfg = recipe.build_model(None)
    seen = []
    encode = model.encode
    model.encode = lambda x: seen.append(x.clone()) or encode(x)
    losses = recipe.pretrain_losses(model, codes, gather=lambda t: t)
    assert set(losses) == {"mlm", "nce"} and all(torch.isfinite(v) for v in losses.values())
    (inputs,) = seen  # ONE forward serves the MLM and the NCE loss
    mask_id = cfg.vocab_size + 4
    first, second = inputs[:4], inputs[4:]
    assert (first == mask_id).any() and (second == mask_id).any(), "both clips of a video are masked"
    kept = inputs != mask_id
    assert torch.equal(inputs[kept], codes.transpose(0, 1).flatten(0, 1)[kept]), "first clips, then second clips"


def test_tokenizer_pretrain_finetune_run(shapes_root, tmp_path):
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["data"].update(root=str(shapes_root), shapesbench=None, num_workers=0)
    cfg["trainer"] = {"max_epochs": 2}
    cfg["output_dir"] = str(tmp_path / "runs")
    for stage in cfg["stages"][1:]:
        stage["data"] = {**stage["data"], "root": str(shapes_root), "shapesbench": None, "tokens": str(tmp_path / "tok"),
                         "tokenize_workers": 0, "num_workers": 0}
        stage["trainer"] = {"max_epochs": 2}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert main(["train", str(config)]) == 0
    (run,) = (tmp_path / "runs" / "vimpac_shapes_tiny").iterdir()
    metrics = json.loads((run / "eval_test.json").read_text())["metrics"]
    assert set(metrics) == {"top1", "top5", "mean_class_acc", "top1_clips1", "top1_clips4"}
    names = {p.name for p in (tmp_path / "tok").iterdir()}
    expected = {store_name("vq", "shapes", "train", s) for s in view_specs(4, 32, train_aug=True, flip=False)}
    expected |= {store_name("vq", "shapes", "test", s) for s in view_specs(4, 32, train_aug=False)}
    assert names == expected  # the pre-training store is the fine-tuning set's hflip0_32center32
    finetuned = create_model(checkpoint=run / "2-finetune" / "model")
    assert finetuned.head is not None and finetuned.mlm_head is None and finetuned.nce_head is None


def test_vqvae_recipe_evaluates_reconstruction(shapes_root, tmp_path):
    cfg = yaml.safe_load(CONFIG.read_text())
    config = {key: cfg[key] for key in ("recipe", "name", "model", "data")}
    config["data"] = {**config["data"], "root": str(shapes_root), "shapesbench": None, "num_workers": 0}
    recipe = recipe_of(config, tmp_path)
    (train,) = recipe.train_sets()
    assert train.collate([train.dataset[0], train.dataset[1]])["frames"].shape == (8, 3, 32, 32)
    evaluation = recipe.eval_set("val")
    model, _ = recipe.build_model(None)
    batch = evaluation.collate([evaluation.dataset[i] for i in range(len(evaluation.dataset))])
    with torch.no_grad():
        rows = recipe.eval_step(model.eval(), batch)
    metrics = recipe.eval_metrics(rows, EvalContext("val"))
    assert set(metrics) == {"mse", "psnr", "codes_used", "perplexity"}
    assert 1 <= metrics["codes_used"] <= 64 and 1 <= metrics["perplexity"] <= metrics["codes_used"] + 1e-6


@pytest.mark.parametrize(
    "change, message",
    [
        ({"task": "pretrainn"}, "task must be one of pretrain, finetune"),
        ({"model": {"base": "vimpac-tiny", "vocab_size": 8, "num_frames": 4}}, "model.vocab_size=8"),
        ({"model": {"base": "vimpac-tiny", "vocab_size": 64, "num_frames": 4, "height": 2, "width": 2}}, "but the model takes"),
    ],
)
def test_errors_are_one_line(shapes_root, tokenizer_folder, tmp_path, capsys, change, message):
    cfg = stage_config(shapes_root, tokenizer_folder, tmp_path / "tok", **change)
    cfg["output_dir"] = str(tmp_path / "runs")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_finetune_starts_from_an_official_snapshot(tmp_path):
    from vidlab import golden

    snapshot = golden.golden_dir(Path(__file__).resolve().parents[2]) / "files" / "vimpac_model" / "last"
    if not (snapshot / "classifier.pt").is_file():
        pytest.skip("the golden VIMPAC snapshot is not here")
    config = {"recipe": "vimpac", "task": "finetune", "init_from": str(snapshot), "data": {"train": {"split": "train"}},
              "model": {"base": "vimpac-tiny", "vocab_size": 8192, "num_classes": 5}}
    recipe = recipe_of(config, tmp_path)
    model, cfg = recipe.build_model(recipe.cfg.init_from)
    official = torch.load(snapshot / "classifier.pt", map_location="cpu", weights_only=True)
    assert torch.equal(model.backbone.embedding.weight, official["backbone.embedding.weight"])
    assert model.mlm_head is None and model.nce_head is None  # the pre-training heads are dropped
    assert cfg.num_classes == 5 and not model.head.weight.any()  # the classifier starts at zero


def test_killed_pretraining_resumes_exactly(shapes_root, tokenizer_folder, tmp_path):
    """Masks (Python's RNG), clip draws (keyed by seed, epoch, index) and dropout all continue as a straight run."""
    import lightning.pytorch as pl
    from _fit_setup import read_weights

    from vidlab.engine.runner import train

    class PowerCut(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.global_step == 3:
                raise RuntimeError("power cut")

    cfg = stage_config(shapes_root, tokenizer_folder, tmp_path / "tok", trainer={"max_epochs": 2},
                       checkpoint={"keep": -1, "every_n_steps": 1})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    straight = train(load_train_config(path, [f"run_dir={tmp_path / 'straight'}"]))
    with pytest.raises(RuntimeError, match="power cut"):
        train(load_train_config(path, [f"run_dir={tmp_path / 'killed'}"]), callbacks=[PowerCut()])
    resumed = train(load_train_config(path, [f"run_dir={tmp_path / 'killed'}", "resume=auto"]))
    a, b = read_weights(straight.model_dir), read_weights(resumed.model_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
