"""`vidlab experiment singularity-shapes`: Singularity's central claim on ShapesBench, end to end.

Singularity (Lei et al., 2022) claims that a model trained on ONE frame per video, tested on several frames,
matches multi-frame training on the usual (appearance-biased) benchmarks, and that only tasks that need
time (its SSv2-style "temporal" tasks) fall back towards chance, which the temporal variant (4 frames,
temporal embeddings, a 2-layer temporal encoder across frames) recovers. ShapesBench separates the two
kinds of item by construction: appearance captions / questions are answered by any frame, temporal ones
need the order of frames (a left-moving clip is a right-moving one played backwards).

The experiment, every training and evaluation through the `singularity` recipe and the shared engine:

1. generates ShapesBench (`--size`) into `--data` when it is not there;
2. trains retrieval (ITC + ITM with hard negatives) for each variant of the plan
   (`configs/experiments/singularity_shapes/experiment.yaml`): 1 frame; 4 frames; 4 frames + temporal
   embeddings; 4 frames + temporal embeddings + temporal encoder, each multi-frame variant started from the
   1-frame model with a lower learning rate, as the official Singularity-temporal is a second stage on top of
   the 1-frame model (the embeddings-only variant separates what the embeddings and the encoder each bring);
3. evaluates the 1-frame model with 1/4/8 test frames under every frame ensemble (concat/mean/max/lse);
4. for each variant: text-video retrieval on the test split (R@1 after ITM re-ranking and contrastive only,
   on appearance vs temporal captions), 5-way multiple choice (every ShapesBench item has a reversed-motion
   distractor, so it is also scored 3-way against its appearance distractors (colour, shape) and against its
   motion distractors (reversed, another motion) apart), and QA fine-tuned from that retrieval model;
   with `templates` in the plan, also the paper's own temporal benchmark in ShapesBench form, SSv2-template
   retrieval: fine-tuned from its retrieval model on one caption per motion template ("something slides to the
   left"), then the ITM choice among all templates and against the clip's reversed template (`write_template_files`);
5. writes OUT/results.json, OUT/report.html with the tables and OUT/results.png (grouped bars with the
   chance levels, and the test-frame / ensemble curve), and returns the tables for printing.

Chance levels come from the test annotations: retrieval R@1 = 1 / test videos (both directions: a video has
the same share of every caption subset), MC 1 / options, QA the mean over the subset's questions of
1 / (answers its question type takes), and uniform over the whole answer list for reference.

Appearance captions are the ones not flagged temporal. The recipe reports retrieval on `all` and `temporal`
captions; text->video R@1 is a mean over captions, so the appearance value is exact:
(n_all * R_all - n_temporal * R_temporal) / n_appearance. Video->text is reported for all and temporal.
"""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, OmegaConf

from vidlab.bench.common import markdown_table
from vidlab.config import load_config
from vidlab.errors import ConfigError, VidlabError
from vidlab.experiments.steps import Progress, Step, run_steps
from vidlab.report import Figure, Paragraph, Preformatted, Report, Section, Table
from vidlab.report import write_report as write_html
from vidlab.tasks.ensemble import FRAME_ENSEMBLES, check_ensemble

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "experiments" / "singularity_shapes"
EXPERIMENT_CONFIG = CONFIG_DIR / "experiment.yaml"
QUICK_CONFIG = CONFIG_DIR / "quick.yaml"
RESULTS_FILE = "results.json"
REPORT_FILE = "report.html"
PLOT_FILE = "results.png"
MC_SUBSETS = ("appearance", "motion")  # the 3-way MC files: true option + its appearance / motion distractors


class ExperimentError(VidlabError):
    """The experiment cannot run as configured (bad plan, unexpected annotations)."""


# ---------------------------------------------------------------------------------------------------------
# The plan


@dataclass
class VariantConfig:
    """One retrieval model of the comparison."""

    name: str = MISSING  # folder and key in results.json
    label: str = MISSING  # shown in tables and plots
    num_frames: int = 1  # training frames
    temporal: bool = False  # temporal embeddings + temporal encoder (Singularity-temporal)
    temporal_encoder: bool = True  # with `temporal`: the temporal encoder too (false: the embeddings alone)
    init_from: str | None = None  # an earlier variant whose retrieval model this one starts from
    overrides: list[str] = field(default_factory=list)  # its retrieval training's config overrides
    template_overrides: list[str] = field(default_factory=list)  # its template fine-tuning's, after the plan's


@dataclass
class ExperimentConfig:
    """Which trainings and evaluations run; the training configs are files beside this one."""

    retrieval: str = "retrieval.yaml"
    qa: str = "qa.yaml"
    mc: str = "mc.yaml"
    templates: str | None = "templates.yaml"  # SSv2-template-style fine-tuning of every variant; null: none
    variants: list[VariantConfig] = field(default_factory=list)
    test_frames: int = 4  # test frames of the per-variant comparison (one memory, 'concat')
    grid_variant: str = "1frame"  # the single-frame-trained model evaluated on the test-frame x ensemble grid
    grid_test_frames: list[int] = field(default_factory=lambda: [1, 4, 8])
    grid_ensembles: list[str] = field(default_factory=lambda: list(FRAME_ENSEMBLES))
    grid_overrides: list[str] = field(default_factory=list)  # for the grid's evaluations (e.g. a smaller eval.k_test)
    qa_overrides: list[str] = field(default_factory=list)  # for the QA fine-tunings
    template_overrides: list[str] = field(default_factory=list)  # for the template fine-tunings
    overrides: list[str] = field(default_factory=list)  # for every training and evaluation, after all the above


def load_plan(path: Path) -> tuple[ExperimentConfig, Path]:
    """The typed plan and the folder its training configs are relative to; checks what the run relies on."""
    plan: ExperimentConfig = OmegaConf.to_object(load_config(path, defaults=ExperimentConfig))  # type: ignore[assignment]
    names = [v.name for v in plan.variants]
    if not names:
        raise ConfigError(f"{path}: the plan lists no variants")
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: variant names must be unique, got {names}")
    for index, variant in enumerate(plan.variants):
        if variant.init_from is not None and variant.init_from not in names[:index]:
            raise ConfigError(f"{path}: variant {variant.name!r} starts from {variant.init_from!r}, which must be an earlier variant")
        if variant.temporal and variant.num_frames < 2:
            raise ConfigError(f"{path}: variant {variant.name!r}: the temporal parts need 2 or more training frames")
    grid = next((v for v in plan.variants if v.name == plan.grid_variant), None)
    if grid is None:
        raise ConfigError(f"{path}: grid_variant {plan.grid_variant!r} is not a variant")
    if grid.num_frames != 1 and set(plan.grid_ensembles) - {"concat"}:
        raise ConfigError(f"{path}: frame ensembles other than concat need a single-frame-trained grid_variant")
    for ensemble in plan.grid_ensembles:
        check_ensemble(ensemble)
    for task in ("retrieval", "qa", "mc", "templates"):
        config = getattr(plan, task)
        if config is not None and not (path.parent / config).is_file():
            raise ConfigError(f"{path}: {task}: {path.parent / config} not found")
    return plan, path.parent


def variant_overrides(variant: VariantConfig) -> list[str]:
    """The config keys that make a retrieval / QA / MC config this variant's architecture."""
    embeddings, encoder = variant.temporal, variant.temporal and variant.temporal_encoder
    return [f"data.num_frames={variant.num_frames}", f"model.add_temporal_embed={str(embeddings).lower()}",
            f"model.temporal_vision_encoder.enable={str(encoder).lower()}"]


# ---------------------------------------------------------------------------------------------------------
# The test set: counts, chance levels, the 3-way multiple-choice files


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise ExperimentError(f"{path}: not found (is {path.parents[1]} a ShapesBench folder?)")
    return json.loads(path.read_text())


def _differing_words(a: str, b: str) -> list[str] | None:
    """The words of `b` that differ from `a` position by position; None when the lengths differ."""
    words_a, words_b = a.split(), b.split()
    if len(words_a) != len(words_b):
        return None
    return [wb for wa, wb in zip(words_a, words_b) if wa != wb]


def split_multiple_choice(items: Sequence[Mapping[str, Any]], appearance_words: set[str]) -> tuple[dict[str, list[dict[str, Any]]], int]:
    """3-way items per distractor kind: the true option with its two appearance distractors (one colour or
    shape word changed) or with its two motion distractors (the others), in their original order.

    ShapesBench gives every item one distractor of each kind (reversed action, colour, shape, other action);
    items that do not split 2 + 2 are left out and counted.
    """
    subsets: dict[str, list[dict[str, Any]]] = {name: [] for name in MC_SUBSETS}
    left_out = 0
    for item in items:
        options, answer = list(item["caption"]), int(item["answer"])
        kinds = {}
        for i, option in enumerate(options):
            if i != answer:
                changed = _differing_words(options[answer], option)
                kinds[i] = "appearance" if changed is not None and len(changed) == 1 and changed[0] in appearance_words else "motion"
        if sorted(kinds.values()) != ["appearance", "appearance", "motion", "motion"]:
            left_out += 1
            continue
        for name in MC_SUBSETS:
            kept = [i for i in range(len(options)) if i == answer or kinds[i] == name]
            subsets[name].append(
                {"video": item["video"], "caption": [options[i] for i in kept], "answer": kept.index(answer), "temporal": name == "motion"}
            )
    return subsets, left_out


@dataclass
class SplitCounts:
    """What the chance levels and the appearance R@1 need from the test annotations."""

    num_videos: int
    num_captions: int
    num_temporal_captions: int
    mc_items: int
    mc_options: int
    mc_files: dict[str, Path]  # 3-way files per distractor kind
    mc_left_out: int
    qa_counts: dict[str, int]  # questions per subset
    qa_chance: dict[str, float]  # per subset: mean over questions of 1 / answers of its type (%)
    qa_uniform_chance: float  # 1 / answer list (%)

    @property
    def num_appearance_captions(self) -> int:
        return self.num_captions - self.num_temporal_captions

    def chance(self) -> dict[str, Any]:
        return {
            "retrieval_R1": 100.0 / self.num_videos,
            "mc": 100.0 / self.mc_options,
            "mc_3way": 100.0 / 3,
            "qa": self.qa_chance,
            "qa_uniform": self.qa_uniform_chance,
        }


def read_test_set(root: Path, out_dir: Path) -> SplitCounts:
    """Counts and chance levels of ShapesBench's test split; writes the 3-way MC files into `out_dir`."""
    annotations = root / "annotations"
    captions = _read_json(annotations / "captions_test.json")
    flags = [bool(f) for entry in captions for f in entry.get("temporal", [False] * len(entry["caption"]))]
    mc = _read_json(annotations / "mc_test.json")
    appearance_words = set(_read_json(annotations / "appearance_classes.json")) | set(_read_json(annotations / "shape_classes.json"))
    subsets, left_out = split_multiple_choice(mc, appearance_words)
    if not all(subsets.values()):
        raise ExperimentError(f"{annotations / 'mc_test.json'}: no item splits into appearance and motion distractors")
    out_dir.mkdir(parents=True, exist_ok=True)
    mc_files = {}
    for name, items in subsets.items():
        mc_files[name] = out_dir / f"mc_test_{name}.json"
        mc_files[name].write_text(json.dumps(items, indent=1) + "\n")
    answers_of_type: dict[str, set[str]] = {}
    for split in ("train", "val", "test"):
        path = annotations / f"qa_{split}.json"
        for question in _read_json(path) if path.is_file() else []:
            answers_of_type.setdefault(question["qtype"], set()).add(question["answer"])
    questions = _read_json(annotations / "qa_test.json")
    qa_subsets = {
        "all": questions,
        "appearance": [q for q in questions if not q["temporal"]],
        "temporal": [q for q in questions if q["temporal"]],
    }
    return SplitCounts(
        num_videos=len(captions),
        num_captions=len(flags),
        num_temporal_captions=sum(flags),
        mc_items=len(mc),
        mc_options=len(mc[0]["caption"]),
        mc_files=mc_files,
        mc_left_out=left_out,
        qa_counts={name: len(qs) for name, qs in qa_subsets.items()},
        qa_chance={
            name: 100.0 * sum(1 / len(answers_of_type[q["qtype"]]) for q in qs) / len(qs) for name, qs in qa_subsets.items() if qs
        },
        qa_uniform_chance=100.0 / len(_read_json(annotations / "qa_answer_list.json")),
    )


def template_caption(motion: str) -> str:
    """An SSv2-template-style caption: the action, its object left out ("something slides to the left")."""
    from vidlab.data.shapesbench.text import MOTION_PHRASES

    return f"something {MOTION_PHRASES[motion][0][0]}"


@dataclass
class TemplateFiles:
    """The SSv2-template-style task written from ShapesBench's motion labels (directional clips only)."""

    train: Path  # {video, caption: template} per training clip
    test: Path  # the same for the test clips: retrieval with one caption per template
    choice_all: Path  # multiple choice among every template (8-way)
    choice_reversed: Path  # the true template against its time reversal (2-way)
    num_templates: int
    num_test_videos: int


def motion_labels(root: Path, split: str) -> list[tuple[str, int]]:
    """(video path relative to `root`, motion class) of every directional clip of a ShapesBench split."""
    path = root / "annotations" / f"motion_{split}.txt"
    if not path.is_file():
        raise ExperimentError(f"{path}: not found (is {root} a ShapesBench folder?)")
    return [(video, int(label)) for video, label in (line.split() for line in path.read_text().splitlines() if line.strip())]


def write_template_files(root: Path, out_dir: Path) -> TemplateFiles:
    """Singularity's temporal benchmark, SSv2-template retrieval (a caption per action template, every clip of the
    template its ground truth), made from ShapesBench's `motion` labels: one template per motion class. A clip and its
    time reversal differ only in their template, so a model that sees an unordered set of frames is at 50 % against
    the reversed template whatever it learns."""
    from vidlab.data.shapesbench import OPPOSITE

    annotations = root / "annotations"
    classes = list(_read_json(annotations / "motion_classes.json"))
    templates = [template_caption(name) for name in classes]

    def write(name: str, items: list[dict[str, Any]]) -> Path:
        path = out_dir / name
        path.write_text(json.dumps(items, indent=1) + "\n")
        return path

    out_dir.mkdir(parents=True, exist_ok=True)
    test = motion_labels(root, "test")
    pairs = []
    for video, label in test:
        opposite = classes.index(OPPOSITE[classes[label]])
        options = sorted((label, opposite))
        pairs.append({"video": video, "caption": [templates[i] for i in options], "answer": options.index(label), "temporal": True})
    return TemplateFiles(
        train=write("templates_train.json", [{"video": v, "caption": templates[label]} for v, label in motion_labels(root, "train")]),
        test=write("templates_test.json", [{"video": v, "caption": templates[label]} for v, label in test]),
        choice_all=write("templates_test_choice_all.json", [{"video": v, "caption": templates, "answer": label, "temporal": True} for v, label in test]),
        choice_reversed=write("templates_test_choice_reversed.json", pairs),
        num_templates=len(templates),
        num_test_videos=len(test),
    )


# ---------------------------------------------------------------------------------------------------------
# Reading the recipe's metrics


def retrieval_r1(metrics: Mapping[str, float], test: SplitCounts) -> dict[str, dict[str, float]]:
    """{itm, itc} -> R@1 (%): t2v on all / appearance / temporal captions, v2t on all / temporal."""
    out = {}
    for scoring in ("itm", "itc"):
        t2v_all, t2v_temporal = metrics[f"{scoring}/all/t2v_R1"], metrics[f"{scoring}/temporal/t2v_R1"]
        appearance = (test.num_captions * t2v_all - test.num_temporal_captions * t2v_temporal) / test.num_appearance_captions
        out[scoring] = {
            "t2v_all": t2v_all,
            "t2v_appearance": appearance,
            "t2v_temporal": t2v_temporal,
            "v2t_all": metrics[f"{scoring}/all/v2t_R1"],
            "v2t_temporal": metrics[f"{scoring}/temporal/v2t_R1"],
        }
    return out


# ---------------------------------------------------------------------------------------------------------
# Running


@dataclass
class ExperimentResult:
    out_dir: Path
    results: dict[str, Any]
    report: Path
    plot: Path
    wall_time_s: float


def finished_run(run_dir: Path, cfg: Any) -> tuple[Path, dict[str, float]] | None:
    """(final model folder, test metrics) of a run in `run_dir` that finished with exactly the config `cfg`, from a
    model (`init_from`) not trained again since, else None: an experiment run again (after a crash, or with a changed
    plan) retrains only what changed and what starts from it."""
    from vidlab.engine.config import load_train_config, resolve_stages
    from vidlab.engine.runner import MODEL_DIR, RUN_CONFIG
    from vidlab.models.checkpoint import WEIGHTS_FILE

    model_dir = run_dir / resolve_stages(cfg)[-1].dirname / MODEL_DIR
    saved, metrics = run_dir / RUN_CONFIG, run_dir / f"eval_{cfg.eval.split}.json"
    if not (saved.is_file() and metrics.is_file() and (model_dir / WEIGHTS_FILE).is_file()):
        return None
    try:  # through today's schema: a field added since the run, at its default, leaves the run the same
        saved_cfg = load_train_config(saved)
    except VidlabError:
        return None
    saved_values, values = OmegaConf.to_container(saved_cfg, resolve=True), OmegaConf.to_container(cfg, resolve=True)
    for run in (saved_values, values):  # the same folder, however it was spelled
        if run.get("run_dir"):  # type: ignore[union-attr]
            run["run_dir"] = str(Path(run["run_dir"]).resolve())  # type: ignore[index, arg-type]
    if saved_values != values:
        return None
    if cfg.init_from:
        start = Path(cfg.init_from)
        start_weights = start / WEIGHTS_FILE if start.is_dir() else start
        if start_weights.is_file() and start_weights.stat().st_mtime > saved.stat().st_mtime:
            return None  # the model it started from was trained again after this run
    return model_dir, dict(json.loads(metrics.read_text())["metrics"])


def _train(config: Path, overrides: Sequence[str], run_dir: Path, start: Path | None = None) -> tuple[Path, dict[str, float]]:
    """Train into `run_dir` (from the final model of the run in `start`) unless it holds a finished run of the same
    config (another run there is set aside, not deleted, and put back if the new one fails before it starts);
    (final model folder, the evaluation after training)."""
    from vidlab.engine.config import load_train_config
    from vidlab.engine.runner import final_model_dir, train
    from vidlab.experiments.measure import replacing

    start_from = [f"init_from={final_model_dir(start)}"] if start is not None else []
    cfg = load_train_config(config, [*overrides, *start_from, f"run_dir={run_dir}"])
    finished = finished_run(run_dir, cfg)
    if finished is not None:
        print(f"reusing {run_dir}: it finished with this config")
        return finished
    with replacing(run_dir):  # a run of another config, or an unfinished one
        result = train(cfg)
    return result.model_dir, dict(result.metrics)


def _evaluate(target: Path, overrides: Sequence[str], out_dir: Path, checkpoint: Path | None = None) -> dict[str, float]:
    """`vidlab eval` of `target` (a config file or run folder), with the final model of the run in `checkpoint`."""
    from vidlab.engine.runner import evaluate, final_model_dir

    weights = [f"eval.checkpoint={final_model_dir(checkpoint)}"] if checkpoint is not None else []
    return dict(evaluate(target, [*overrides, *weights, f"eval.output_dir={out_dir}"]))


def _variant_steps(
    plan: ExperimentConfig,
    variant: VariantConfig,
    configs: Mapping[str, Path],
    architecture: Sequence[str],
    last: Sequence[str],
    mc_files: Mapping[str, Path],
    template_files: TemplateFiles | None,
    folder: Path,
) -> list[Step]:
    """What runs on a variant's retrieval model (`folder`/retrieval): multiple choice against all / appearance /
    motion distractors, QA fine-tuning, and with `template_files` the template fine-tuning and its two choices."""
    retrieval = folder / "retrieval"
    after = (f"{variant.name}/retrieval",)
    steps = [
        Step(f"{variant.name}/mc/{name}",
             f"{variant.label}: multiple choice" + (f" against its {name} distractors only" if mc_file else ""),
             _evaluate, (configs["mc"], [*architecture, *last, *([f"data.test.annotations={mc_file.resolve()}"] if mc_file else [])],
                         folder / "mc" / name, retrieval), after)
        for name, mc_file in (("all", None), *mc_files.items())
    ]
    steps.append(Step(f"{variant.name}/qa", f"{variant.label}: QA fine-tuned from its retrieval model",
                      _train, (configs["qa"], [*architecture, *plan.qa_overrides, *last], folder / "qa", retrieval), after))
    if template_files is None:
        return steps
    overrides = [*architecture, *plan.template_overrides, *variant.template_overrides, *last]
    paths = [f"data.train.0.annotations={template_files.train.resolve()}", f"data.test.annotations={template_files.test.resolve()}"]
    steps.append(Step(f"{variant.name}/templates", f"{variant.label}: template retrieval fine-tuned from its retrieval model",
                      _train, (configs["templates"], [*paths, *overrides], folder / "templates", retrieval), after))
    for name, choice_file in (("choice_all", template_files.choice_all), ("choice_reversed", template_files.choice_reversed)):
        steps.append(Step(
            f"{variant.name}/templates/{name}",
            f"{variant.label}: template " + ("among all" if name == "choice_all" else "vs its reversal"),
            _evaluate, (configs["mc"], [*overrides, f"data.test.annotations={choice_file.resolve()}"], folder / "templates" / name,
                        folder / "templates"),
            (f"{variant.name}/templates",),
        ))
    return steps


def grid_settings(plan: ExperimentConfig) -> list[tuple[int, str]]:
    """(test frames, ensemble) pairs of the grid; one frame is one clip whatever the ensemble: evaluated once."""
    return [(frames, ensemble) for frames in plan.grid_test_frames for ensemble in (["concat"] if frames == 1 else plan.grid_ensembles)]


def training_summary(run_dir: Path) -> dict[str, Any]:
    """Epochs, step cap, batch size and learning rate a run trained with (its saved config)."""
    cfg = OmegaConf.load(run_dir / "config.yaml")
    return {
        "max_epochs": int(cfg.trainer.max_epochs),
        "steps_per_epoch": cfg.data.steps_per_epoch,
        "batch_size": [int(entry.batch_size) for entry in cfg.data.train],
        "lr": float(cfg.optim.lr),
    }


def _protocol(eval_dir: Path) -> str:
    """The protocol the engine wrote beside an evaluation's metrics."""
    return str(json.loads((eval_dir / "eval_test.json").read_text())["protocol"])


def run_experiment(
    data_dir: Path,
    out_dir: Path,
    *,
    size: str = "small",
    seed: int = 0,
    quick: bool = False,
    plan_file: Path | None = None,
    overrides: Sequence[str] = (),
    jobs: int = 1,
    threads: int | None = None,
) -> ExperimentResult:
    """The whole experiment (module docstring); `overrides` apply to every training and evaluation config. `jobs`:
    trainings and evaluations run at once, each in its own process (`run_steps`), with `threads` torch threads."""
    from vidlab.data.shapesbench import generate

    started = time.perf_counter()
    out_dir = out_dir.resolve()  # the runs' saved configs name absolute folders, which a later run compares with
    plan, config_dir = load_plan(plan_file or (QUICK_CONFIG if quick else EXPERIMENT_CONFIG))
    configs = {task: config_dir / getattr(plan, task) for task in ("retrieval", "qa", "mc", "templates") if getattr(plan, task)}
    grid = grid_settings(plan)
    progress = Progress(1 + len(plan.variants) * (5 + (3 if plan.templates else 0)) + len(grid) + 1)
    root = progress.run("data", f"ShapesBench {size} (seed {seed}) in {data_dir}", lambda: generate(data_dir, size, seed))
    out_dir.mkdir(parents=True, exist_ok=True)
    test = read_test_set(root, out_dir / "annotations")
    template_files = write_template_files(root, out_dir / "annotations") if plan.templates else None
    data = [f"data.root={root.resolve()}", "data.shapesbench=null"]
    last = [*plan.overrides, *overrides]  # the quick plan's and the command line's settings win
    test_frames = [f"data.num_frames_test={plan.test_frames}", "eval.frame_ensemble=concat"]

    steps: list[Step] = []
    for variant in plan.variants:
        start = out_dir / variant.init_from / "retrieval" if variant.init_from else None
        steps.append(Step(
            f"{variant.name}/retrieval",
            f"{variant.label}: retrieval training" + (f" from {variant.init_from}" if variant.init_from else "")
            + f", test with {plan.test_frames} frames",
            _train, (configs["retrieval"], [*data, *variant_overrides(variant), *test_frames, *variant.overrides, *last],
                     out_dir / variant.name / "retrieval", start),
            (f"{variant.init_from}/retrieval",) if variant.init_from else (),
        ))
    for frames, ensemble in grid:
        steps.append(Step(
            f"{plan.grid_variant}/grid/{frames}f_{ensemble}",
            f"{plan.grid_variant}: retrieval with {frames} test frames, ensemble {ensemble}",
            _evaluate, (out_dir / plan.grid_variant / "retrieval",
                        [f"data.num_frames_test={frames}", f"eval.frame_ensemble={ensemble}", *plan.grid_overrides],
                        out_dir / plan.grid_variant / "grid" / f"{frames}f_{ensemble}"),
            (f"{plan.grid_variant}/retrieval",),
        ))
    for variant in plan.variants:
        steps += _variant_steps(plan, variant, configs, [*data, *variant_overrides(variant), *test_frames], last, test.mc_files,
                                template_files, out_dir / variant.name)
    done = run_steps(steps, progress, jobs=jobs, logs=out_dir / "logs", threads=threads)

    model_dirs = {v.name: done[f"{v.name}/retrieval"][0] for v in plan.variants}
    retrieval: list[dict[str, Any]] = [
        {"variant": v.name, "kind": "main", "test_frames": plan.test_frames, "ensemble": "concat",
         "metrics": done[f"{v.name}/retrieval"][1], "protocol": _protocol(out_dir / v.name / "retrieval")}
        for v in plan.variants
    ]
    retrieval += [
        {"variant": plan.grid_variant, "kind": "grid", "test_frames": frames, "ensemble": ensemble,
         "metrics": done[f"{plan.grid_variant}/grid/{frames}f_{ensemble}"],
         "protocol": _protocol(out_dir / plan.grid_variant / "grid" / f"{frames}f_{ensemble}")}
        for frames, ensemble in grid
    ]
    mc = {v.name: {name: done[f"{v.name}/mc/{name}"]["mc/all_acc"] for name in ("all", *test.mc_files)} for v in plan.variants}
    qa = {v.name: done[f"{v.name}/qa"][1] for v in plan.variants}
    templates = {}
    if template_files is not None:
        for v in plan.variants:
            metrics = done[f"{v.name}/templates"][1]
            templates[v.name] = {"t2v_R1": metrics["itm/all/t2v_R1"], "v2t_R1": metrics["itm/all/v2t_R1"],
                                 **{name: done[f"{v.name}/templates/{name}"]["mc/all_acc"] for name in ("choice_all", "choice_reversed")}}

    results = {
        "experiment": "singularity-shapes",
        "size": size,
        "seed": seed,
        "data": str(root),
        "plan": OmegaConf.to_container(OmegaConf.structured(plan)),
        "overrides": list(overrides),
        "jobs": jobs,
        "test_set": {
            "videos": test.num_videos,
            "captions": test.num_captions,
            "temporal_captions": test.num_temporal_captions,
            "mc_items": test.mc_items,
            "mc_items_left_out_of_3way": test.mc_left_out,
            "qa_questions": test.qa_counts,
        },
        "chance": test.chance(),
        "variants": [
            {"name": v.name, "label": v.label, "num_frames": v.num_frames, "temporal": v.temporal,
             "temporal_encoder": v.temporal and v.temporal_encoder, "init_from": v.init_from,
             "retrieval_model": str(model_dirs[v.name]), "retrieval_training": training_summary(out_dir / v.name / "retrieval"),
             "qa_run": str(out_dir / v.name / "qa"), "qa_training": training_summary(out_dir / v.name / "qa"),
             "template_training": training_summary(out_dir / v.name / "templates") if template_files else None,
             "template_overrides": list(v.template_overrides)}
            for v in plan.variants
        ],
        "retrieval": [{**row, "R1": retrieval_r1(row["metrics"], test)} for row in retrieval],
        "mc": mc,
        "qa": qa,
        "templates": templates,
        "template_task": None if template_files is None else {
            "templates": template_files.num_templates, "test_videos": template_files.num_test_videos,
            "chance_all": 100.0 / template_files.num_templates, "chance_reversed": 50.0,
        },
        "seconds": progress.seconds,
    }
    results["wall_time_s"] = time.perf_counter() - started
    (out_dir / RESULTS_FILE).write_text(json.dumps(results, indent=1) + "\n")
    plot = progress.run("report", "report", plot_results, results, out_dir / PLOT_FILE)
    report = write_report(results, out_dir, plot)
    return ExperimentResult(out_dir, results, report, plot, time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------------------
# Tables, plot, report


def _main_row(results: Mapping[str, Any], variant: Mapping[str, Any]) -> dict[str, Any]:
    return next(r for r in results["retrieval"] if r["variant"] == variant["name"] and r["kind"] == "main")


def summary_values(results: Mapping[str, Any]) -> tuple[list[str], list[tuple[str, str, list[float]]]]:
    """Headers and, per variant and for chance, (label, training frames, the values in %) of the comparison table."""
    headers = ["variant", "train frames", "ITM t2v R@1 app", "ITM t2v R@1 temp", "ITC t2v R@1 app", "ITC t2v R@1 temp",
               "MC 5-way", "MC vs app distr", "MC vs motion distr", "QA app", "QA temp"]
    task = results.get("template_task")
    if task:
        headers += ["template of all", "template vs reversed"]
    rows = []
    for variant in results["variants"]:
        r1 = _main_row(results, variant)["R1"]
        mc, qa = results["mc"][variant["name"]], results["qa"][variant["name"]]
        values = [r1["itm"]["t2v_appearance"], r1["itm"]["t2v_temporal"], r1["itc"]["t2v_appearance"], r1["itc"]["t2v_temporal"],
                  mc["all"], mc["appearance"], mc["motion"], qa["qa/appearance_acc"], qa["qa/temporal_acc"]]
        if task:
            values += [results["templates"][variant["name"]]["choice_all"], results["templates"][variant["name"]]["choice_reversed"]]
        rows.append((variant["label"], str(variant["num_frames"]), values))
    chance = results["chance"]
    chance_values = [chance["retrieval_R1"]] * 4 + [chance["mc"], chance["mc_3way"], chance["mc_3way"], chance["qa"]["appearance"], chance["qa"]["temporal"]]
    if task:
        chance_values += [task["chance_all"], task["chance_reversed"]]
    rows.append(("chance", "", chance_values))
    return headers, rows


def summary_rows(results: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Headers and one row per variant (and a chance row) of the comparison table (values in %)."""
    headers, rows = summary_values(results)
    return headers, [[label, frames, *(f"{v:.1f}" for v in values)] for label, frames, values in rows]


def spread_rows(runs: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The comparison table over several runs of one plan (e.g. training seeds): each cell the mean and, after
    it, the lowest and highest run. The runs must hold the same variants and columns."""
    if len(runs) < 2:
        raise ConfigError(f"a spread needs 2 or more runs, got {len(runs)}")
    tables = [summary_values(results) for results in runs]
    headers, first = tables[0]
    for index, (other_headers, other) in enumerate(tables[1:], start=1):
        if other_headers != headers:
            raise ConfigError(
                f"run {index + 1} has the columns {other_headers[2:]}, run 1 {headers[2:]}: runs of one plan only"
            )
        if [row[:2] for row in other] != [row[:2] for row in first]:
            raise ConfigError(
                f"run {index + 1} has the variants {[row[0] for row in other[:-1]]}, run 1 "
                f"{[row[0] for row in first[:-1]]}: runs of one plan only"
            )
    rows = []
    for position, (label, frames, _) in enumerate(first):
        columns = zip(*(table[position][2] for _, table in tables))
        cells = []
        for values in columns:
            mean = sum(values) / len(values)
            cells.append(f"{mean:.1f}" if max(values) == min(values) else f"{mean:.1f} ({min(values):.1f}-{max(values):.1f})")
        rows.append([label, frames, *cells])
    return headers, rows


def grid_rows(results: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The single-frame-trained model under each (test frames, ensemble), ITM re-ranked R@1 and ITC."""
    headers = ["test frames", "ensemble", "ITM t2v R@1 all", "ITM t2v app", "ITM t2v temp", "ITM v2t R@1 all", "ITC t2v R@1 all"]
    rows = []
    grid = [r for r in results["retrieval"] if r["kind"] == "grid"]
    for row in sorted(grid, key=lambda r: (r["test_frames"], FRAME_ENSEMBLES.index(r["ensemble"]))):
        itm, itc = row["R1"]["itm"], row["R1"]["itc"]
        values = [itm["t2v_all"], itm["t2v_appearance"], itm["t2v_temporal"], itm["v2t_all"], itc["t2v_all"]]
        rows.append([str(row["test_frames"]), row["ensemble"] if row["test_frames"] > 1 else "(one clip)", *(f"{v:.1f}" for v in values)])
    return headers, rows


def qtype_rows(results: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """QA accuracy per question type and variant."""
    variants = results["variants"]
    qtypes = sorted({k.split("/")[-1].removesuffix("_acc") for v in variants for k in results["qa"][v["name"]] if k.startswith("qa/qtype/")})
    headers = ["question type", *(v["label"] for v in variants)]
    rows = [[q, *(f"{results['qa'][v['name']].get(f'qa/qtype/{q}_acc', float('nan')):.1f}" for v in variants)] for q in qtypes]
    return headers, rows


def format_tables(results: Mapping[str, Any]) -> str:
    """The comparison and the ensemble grid as markdown, for the console and the issue note."""
    summary, grid = summary_rows(results), grid_rows(results)
    frames = results["plan"]["test_frames"]
    return (
        f"Test split, {frames} test frames as one memory (%; app = appearance, temp = temporal):\n\n"
        + markdown_table(*summary, right_align_from=1)
        + f"\n\nSingle-frame model ({results['plan']['grid_variant']}) by test frames and frame ensemble (%):\n\n"
        + markdown_table(*grid, right_align_from=2)
    )


def plot_results(results: Mapping[str, Any], out_file: Path) -> Path:
    """Grouped bars (appearance vs temporal per variant) for retrieval, MC and QA with each bar's chance level
    marked, and the single-frame model's R@1 by test frames per ensemble."""
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    variants = results["variants"]
    chance = results["chance"]
    panels = [
        ("retrieval t2v R@1, ITM re-ranked",
         [(_main_row(results, v)["R1"]["itm"]["t2v_appearance"], _main_row(results, v)["R1"]["itm"]["t2v_temporal"]) for v in variants],
         (chance["retrieval_R1"], chance["retrieval_R1"]), ("appearance captions", "temporal captions")),
        ("multiple choice, 3-way",
         [(results["mc"][v["name"]]["appearance"], results["mc"][v["name"]]["motion"]) for v in variants],
         (chance["mc_3way"], chance["mc_3way"]), ("vs appearance distractors", "vs motion distractors")),
        ("QA accuracy",
         [(results["qa"][v["name"]]["qa/appearance_acc"], results["qa"][v["name"]]["qa/temporal_acc"]) for v in variants],
         (chance["qa"]["appearance"], chance["qa"]["temporal"]), ("appearance questions", "temporal questions")),
    ]
    task = results.get("template_task")
    if task:
        panels.append(
            ("SSv2-style templates (ITM choice)",
             [(results["templates"][v["name"]]["choice_all"], results["templates"][v["name"]]["choice_reversed"]) for v in variants],
             (task["chance_all"], task["chance_reversed"]), (f"among all {task['templates']}", "vs the reversed one"))
        )
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(4.25 * (len(panels) + 1), 4.2))
    width = 0.38
    for ax, (title, values, chances, labels) in zip(axes, panels):
        for j, (label, colour) in enumerate(zip(labels, ("tab:blue", "tab:orange"))):
            xs = [i + (j - 0.5) * width for i in range(len(variants))]
            ax.bar(xs, [v[j] for v in values], width, label=label, color=colour)
            ax.hlines([chances[j]] * len(xs), [x - width / 2 for x in xs], [x + width / 2 for x in xs], colors="black",
                      linestyles="dashed", label="chance" if j == 0 else None)
        ax.set_xticks(range(len(variants)), [textwrap.fill(v["label"], 14) for v in variants], fontsize=7)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("%")
        ax.set_ylim(0, 100)
        ax.legend(fontsize=7, loc="upper left")
    grid_ax = axes[-1]
    grid = [r for r in results["retrieval"] if r["kind"] == "grid"]
    single = [r for r in grid if r["test_frames"] == 1]
    for ensemble in FRAME_ENSEMBLES:
        points = sorted((r["test_frames"], r["R1"]["itm"]["t2v_all"]) for r in grid if r["ensemble"] == ensemble or r in single)
        if len(points) > len(single):
            grid_ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=ensemble)
    grid_ax.axhline(chance["retrieval_R1"], color="black", linestyle="dashed", label="chance")
    grid_ax.set_title(f"{results['plan']['grid_variant']} model: t2v R@1 (ITM) by test frames", fontsize=10)
    grid_ax.set_ylim(bottom=0)
    grid_ax.set_xlabel("test frames")
    grid_ax.set_ylabel("%")
    grid_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_file, dpi=90)
    plt.close(fig)
    return out_file


def _first_grid_row(results: Mapping[str, Any]) -> dict[str, Any] | None:
    return next((r for r in results["retrieval"] if r["kind"] == "grid"), None)


def write_report(results: Mapping[str, Any], out_dir: Path, plot: Path) -> Path:
    """OUT/report.html: what ran, the comparison table with chance, the plot, the grid, QA per type."""
    test, chance, plan = results["test_set"], results["chance"], results["plan"]
    minutes = results["wall_time_s"] / 60
    def training(run: Mapping[str, Any]) -> str:
        steps = f"up to {run['steps_per_epoch']} steps" if run["steps_per_epoch"] else "all batches"
        return f"{run['max_epochs']} epoch(s) of {steps}, batch {'+'.join(map(str, run['batch_size']))}, lr {run['lr']:g}"

    variants = "; ".join(
        f"{v['label']}: {v['num_frames']} training frame(s)" + (", temporal embeddings" + (" + temporal encoder" if v["temporal_encoder"] else "") if v["temporal"] else "")
        + (f", started from {v['init_from']}" if v["init_from"] else "")
        + f", {training(v['retrieval_training'])} (QA: {training(v['qa_training'])}"
        + (f"; templates: {training(v['template_training'])}" if v.get("template_training") else "")
        + (f", {', '.join(v['template_overrides'])}" if v.get("template_overrides") else "") + ")"
        for v in results["variants"]
    )
    notes = [
        f"ShapesBench {results['size']} (seed {results['seed']}) at {results['data']}; experiment wall time {minutes:.1f} min.",
        f"Variants: {variants}. Every model tested with {plan['test_frames']} frames as one cross-attention memory (concat).",
        f"Test split: {test['videos']} videos, {test['captions']} captions ({test['temporal_captions']} temporal), "
        f"{test['mc_items']} multiple-choice items, {test['qa_questions']['all']} questions "
        f"({test['qa_questions']['temporal']} temporal).",
        "Retrieval: contrastive (ITC) scores of every pair, then the ITM head re-ranks each query's top-k; R@1 of text->video "
        "queries on appearance captions (not flagged temporal) and temporal captions. Appearance t2v R@1 = (n_all R_all - "
        "n_temporal R_temporal) / n_appearance from the recipe's all/temporal subsets (exact: R@1 is a mean over captions).",
        "Multiple choice: the option with the highest ITM score. Every ShapesBench item has one distractor of each kind "
        "(the action reversed, another action, another colour, another shape), so all are 'temporal'; the 3-way columns "
        "score the true option against its two appearance distractors or its two motion distractors only"
        + (f" ({test['mc_items_left_out_of_3way']} items did not split and are left out of them)." if test["mc_items_left_out_of_3way"] else "."),
        f"Chance: retrieval R@1 = 1/{test['videos']} videos = {chance['retrieval_R1']:.1f} %; MC {chance['mc']:.0f} % (5-way), "
        f"{chance['mc_3way']:.1f} % (3-way); QA = mean over questions of 1/(answers of its type): appearance "
        f"{chance['qa']['appearance']:.1f} %, temporal {chance['qa']['temporal']:.1f} % (uniform over the whole answer list: "
        f"{chance['qa_uniform']:.1f} %).",
        *([
            f"Template task (SSv2-template style, Singularity's temporal benchmark): every variant fine-tuned from its "
            f"retrieval model on one caption per motion template ({results['template_task']['templates']} templates, "
            "'something slides to the left'; clips of a template are each other's positives), tested on "
            f"{results['template_task']['test_videos']} directional test clips: the ITM choice among all templates, and "
            "against the clip's reversed template (chance 50 %: a clip and its reversal show the same set of frames)."
        ] if results.get("template_task") else []),
        "Expected shape (paper): single-frame training matches multi-frame training on appearance items and stays near chance "
        "on temporal ones; the temporal variant recovers them. Without temporal embeddings a multi-frame memory is an "
        "unordered set of frames (cross-attention and the frame-mean ITC are permutation-invariant), so plain 4-frame "
        "training cannot tell a clip from its reverse either; ITC on BEiT's per-frame features never can (a frame mean), only ITC on the "
        "temporal encoder's [CLS] states (`model.temporal_vision_encoder.update_pooler_embed`) sees the order.",
    ]
    protocols = [
        Section(f"{row['variant']}, {row['test_frames']} test frames, {row['ensemble']}", [Preformatted(row["protocol"])], level=3)
        for row in results["retrieval"] if row["kind"] == "main" or row is _first_grid_row(results)
    ]
    report = write_html(Report("Singularity on ShapesBench: single-frame vs multi-frame vs temporal training", [
        *(Paragraph(note) for note in notes),
        Section("Comparison (test split, %)", [Table([summary_rows(results)[0], *summary_rows(results)[1]])]),
        Section("Plot", [Figure(plot.name, "grouped bars and test-frame curve")]),
        Section("Single-frame model: test frames x frame ensemble (%)", [
            Table([grid_rows(results)[0], *grid_rows(results)[1]]),
            Paragraph("concat: all frames as one memory; mean / max / lse: each frame scored alone by ITM, combined over "
                      "frames (the ITC pre-selection of the top-k is the frame mean in every case). Settings of these "
                      f"evaluations beyond the run's own: {', '.join(plan['grid_overrides']) or 'none'}."),
        ]),
        Section("QA accuracy per question type (%)", [Table([qtype_rows(results)[0], *qtype_rows(results)[1]])]),
        Section("Protocols", protocols),
        Section("Time per step (s)", [Table([["step", "seconds"], *[[k, f"{v:.0f}"] for k, v in results["seconds"].items()]])]),
    ]), out_dir / REPORT_FILE)
    return report


__all__ = [
    "ExperimentConfig",
    "ExperimentError",
    "ExperimentResult",
    "SplitCounts",
    "TemplateFiles",
    "VariantConfig",
    "finished_run",
    "format_tables",
    "grid_settings",
    "load_plan",
    "plot_results",
    "read_test_set",
    "retrieval_r1",
    "run_experiment",
    "split_multiple_choice",
    "summary_rows",
    "template_caption",
    "variant_overrides",
    "write_report",
    "write_template_files",
]
