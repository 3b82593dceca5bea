"""The engine's typed config: run, trainer, optimizer, schedule, checkpoints, logging and stages.

A recipe extends `TrainConfig` with its own sections (model, data, ...) and registers the subclass, so an
unknown or wrongly typed key anywhere is a `ConfigError` naming the key. `stages` is a list of partial
configs: stage i runs with the base config merged with `stages[i]` (its `name` aside), and starts from
the weights the previous stage ended with. No stages means one stage, named `train`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vidlab.config import load_config
from vidlab.errors import ConfigError

PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")
SCHEDULES = ("constant", "cosine", "linear")


@dataclass
class TrainerConfig:
    """Where and how steps run; names follow `lightning.Trainer` where they mean the same."""

    accelerator: str = "auto"  # cpu | gpu | auto
    devices: Any = "auto"  # processes per node: an int, a list of GPU ids, or auto (torchrun/SLURM: from the launcher)
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | ddp_find_unused_parameters_true | fsdp
    precision: str = "32-true"  # 32-true | bf16-mixed | 16-mixed | bf16-true
    max_epochs: int = 1
    max_steps: int = -1  # optimizer steps; -1: max_epochs decides
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    gradient_clip_algorithm: str = "norm"
    grad_checkpointing: bool = False  # activation checkpointing of the vision tower
    val_check_interval: Any = None  # int: every N training batches; float: fraction of an epoch; None: epoch end
    check_val_every_n_epoch: int = 1
    log_every_n_steps: int = 10
    # deterministic kernels: None = on when the run is on the CPU (same config + seed -> same weights), off on GPUs
    deterministic: bool | None = None
    # PyTorch's intra-op threads per training process; None: OMP_NUM_THREADS when set, else the cores left after
    # data.num_workers loader workers (vidlab.data.workers.intra_op_threads)
    threads: int | None = None


@dataclass
class LrGroupConfig:
    """Parameters trained at their own learning rate: those whose name one of `patterns` matches (`re.search`)."""

    patterns: list[str] = MISSING
    lr: float = MISSING


@dataclass
class OptimConfig:
    """AdamW. Biases, norm weights (every 1-D tensor) and parameters matching `no_decay` get no weight decay.
    `lr_groups` give parameters their own learning rate (the first group that matches a name wins; the schedule
    scales every rate alike), e.g. `[{patterns: [temporal], lr: 1e-3}]` for modules that start from scratch beside
    pretrained ones (the official Singularity's `optimizer.different_lr`)."""

    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    no_decay: list[str] = field(default_factory=lambda: ["cls_token", "pos_embed", "temporal_embed"])
    lr_groups: list[LrGroupConfig] = field(default_factory=list)


@dataclass
class ScheduleConfig:
    """Per-step learning-rate factor: linear warm-up (steps, or a ratio of all steps), then the schedule."""

    name: str = "constant"  # constant | cosine | linear
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    min_lr_ratio: float = 0.0  # floor of cosine / linear, as a fraction of optim.lr


@dataclass
class CheckpointConfig:
    every_n_steps: int | None = None  # periodic checkpoints; None: at every epoch end
    keep: int = 2  # periodic checkpoints kept (newest); -1 keeps all
    monitor: str | None = None  # metric of the best checkpoint; None: the recipe's default
    mode: str = "max"
    save_on_exception: bool = True  # a crash or Ctrl-C writes interrupted.ckpt (single process)


@dataclass
class LoggingConfig:
    tensorboard: bool = True
    wandb: bool = False  # needs the wandb package
    wandb_project: str | None = None
    progress_bar: bool = True
    # where no progress bar is seen (stdout not a terminal, or progress_bar off): a progress line every N s, and at
    # every epoch end (vidlab.engine.progress); 0: at epoch ends only
    progress_every_s: float = 30.0


@dataclass
class ShapesBenchSourceConfig:
    """The synthetic ShapesBench set `Recipe.prepare_data` generates (`vidlab.data.shapesbench.generate`)."""

    size: str = "tiny"
    seed: int = 0


@dataclass
class SourceConfig:
    """An annotation file (any `vidlab.data.formats` reader) and where its media live; read with
    `vidlab.data.formats.read_source`, so relative paths are under `data.root`."""

    annotations: str = MISSING
    format: str = "singularity"
    media_root: str | None = None  # default: data.root
    options: dict[str, Any] = field(default_factory=dict)  # reader options, e.g. {kind: video}
    image_frames: str = "single"  # an image is one frame (FiT)


@dataclass
class TrainSourceConfig(SourceConfig):
    name: str = "video"
    batch_size: int = 8  # global: summed over all processes


@dataclass
class DataConfig:
    """What the engine reads of a recipe's data section; recipes subclass it with their datasets."""

    root: str = "."  # relative annotation / media paths are relative to this
    shapesbench: ShapesBenchSourceConfig | None = None  # generate ShapesBench into `root` first (reused if there)
    num_workers: int = 2
    worker_timeout: float = 600.0  # seconds without a batch from the workers before the run stops (0: wait forever)
    mixing: str = "zip"  # several training sets: zip (FiT, one batch of each per step) | schedule (Singularity)
    steps_per_epoch: int | None = None  # cap on steps per epoch (FiT's max_samples_per_epoch)
    max_bad_fraction: float = 0.05  # training stops when more samples than this fail to read


@dataclass
class EvalConfig:
    """What the engine reads of a recipe's eval section."""

    split: str = "test"
    after_train: bool = True  # evaluate the final weights on `split` when training ends
    every_stage: bool = False  # with after_train: also evaluate each earlier stage's weights (curricula)
    checkpoint: str | None = None  # weights for `vidlab eval CONFIG`
    output_dir: str | None = None  # `vidlab eval` writes eval_SPLIT.json and the recipe's figures here


@dataclass
class TrainConfig:
    """Fields every recipe shares; a recipe subclasses this with its model / data / eval sections."""

    recipe: str = MISSING
    name: str = "run"
    output_dir: str = "runs"  # runs go to OUTPUT_DIR/NAME/TIMESTAMP
    run_dir: str | None = None  # an explicit run folder instead
    seed: int = 0
    debug: bool = False  # a few steps per epoch and a few validation batches
    debug_steps: int = 4
    resume: str | None = None  # a .ckpt of a run, or 'auto': the newest checkpoint of the newest run of NAME
    init_from: str | None = None  # weights the first stage starts from (a vidlab or official checkpoint)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    stages: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class Stage:
    index: int
    name: str
    config: DictConfig  # the full config this stage runs with (no `stages` key)

    @property
    def dirname(self) -> str:
        return f"{self.index}-{self.name}"


_CONFIG_CLASSES: dict[str, type] = {}


def register_config(recipe: str, config_class: type) -> None:
    _CONFIG_CLASSES[recipe] = config_class


def config_class(recipe: str) -> type:
    from vidlab.recipes import RECIPE_MODULES  # noqa: F401 - importing registers the recipes

    if recipe not in _CONFIG_CLASSES:
        raise ConfigError(f"unknown recipe {recipe!r} (known: {', '.join(sorted(_CONFIG_CLASSES))})")
    return _CONFIG_CLASSES[recipe]


def load_train_config(path: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """YAML file + overrides, typed by the recipe the file names (`recipe: fit`); stages checked too."""
    raw = load_config(path, overrides)
    if "recipe" not in raw:
        raise ConfigError(f"{path}: no 'recipe' key (e.g. recipe: fit)")
    cfg = load_config(path, overrides, config_class(str(raw.recipe)))
    resolve_stages(cfg)  # fail early on a bad stage
    return cfg


def check_at_least(cfg: DictConfig, minimums: Mapping[str, float]) -> None:
    """ConfigError for the first `key: minimum` whose value in `cfg` is below it; absent and null keys pass (a
    recipe's optional settings)."""
    for key, low in minimums.items():
        value = OmegaConf.select(cfg, key)
        if value is not None and value < low:
            raise ConfigError(f"{key} must be >= {low}, got {value}")


def _validate(cfg: DictConfig) -> None:
    """Every required value set, and every number and choice in range: before anything runs."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"required config values not set: {', '.join(missing)} (set them in the YAML or as KEY=VALUE)")
    t, s = cfg.trainer, cfg.schedule
    if str(t.precision) not in PRECISIONS:
        raise ConfigError(f"trainer.precision must be one of {', '.join(PRECISIONS)}, got {t.precision!r}")
    if s.name not in SCHEDULES:
        raise ConfigError(f"schedule.name must be one of {', '.join(SCHEDULES)}, got {s.name!r}")
    if s.warmup_steps and s.warmup_ratio:
        raise ConfigError("set schedule.warmup_steps or schedule.warmup_ratio, not both")
    if not 0.0 <= s.warmup_ratio < 1.0:
        raise ConfigError(f"schedule.warmup_ratio must be in [0, 1), got {s.warmup_ratio}")
    if cfg.checkpoint.mode not in ("min", "max"):
        raise ConfigError(f"checkpoint.mode must be 'min' or 'max', got {cfg.checkpoint.mode!r}")
    if t.accumulate_grad_batches < 1:
        raise ConfigError(f"trainer.accumulate_grad_batches must be >= 1, got {t.accumulate_grad_batches}")
    if t.max_steps != -1 and t.max_steps < 1:
        raise ConfigError(f"trainer.max_steps must be >= 1 (or -1: max_epochs decides), got {t.max_steps}")
    if t.max_epochs < 1 and not (t.max_epochs == -1 and t.max_steps > 0):
        raise ConfigError(f"trainer.max_epochs must be >= 1 (or -1 with trainer.max_steps), got {t.max_epochs}")
    check_at_least(
        cfg,
        {
            "trainer.log_every_n_steps": 1,
            "trainer.check_val_every_n_epoch": 1,
            "trainer.threads": 1,
            "logging.progress_every_s": 0,
            "data.num_workers": 0,
            "data.worker_timeout": 0,
            "data.steps_per_epoch": 1,
            "checkpoint.every_n_steps": 1,  # 0 would silently mean "at every epoch end", as null does
            "checkpoint.keep": -1,
            "eval.batch_size": 1,
            "optim.lr": 0,
            "optim.weight_decay": 0,
            "optim.eps": 0,
            **{f"optim.lr_groups[{i}].lr": 0 for i in range(len(cfg.optim.lr_groups))},
        },
    )
    betas = list(cfg.optim.betas)
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {betas}")


# What a stage of another recipe keeps of the run's config: everything but the recipe's own sections (model,
# data, eval and the like), which the stage gives in full for its recipe.
ENGINE_KEYS = ("name", "output_dir", "run_dir", "seed", "debug", "debug_steps", "trainer", "optim", "schedule", "checkpoint", "logging")
STAGE_REF = "stage:"  # a config value `stage:NAME` is the model folder of the run's earlier stage NAME


def resolve_stages(cfg: DictConfig) -> list[Stage]:
    """The stages of a run, each with its full config typed by its own recipe.

    A stage entry may name another recipe (`recipe: evl` after CLIP pretraining): it starts from that recipe's
    defaults and the run's engine settings (`ENGINE_KEYS`), so it states its own model, data and eval.
    """
    entries = list(cfg.stages or [])
    base = copy.deepcopy(cfg)
    base.stages = []
    if not entries:
        _validate(base)
        return [Stage(0, "train", base)]
    stages = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, (dict, DictConfig)):
            raise ConfigError(f"stages[{index}] must be a mapping of config keys, got {type(entry).__name__}")
        entry = OmegaConf.to_container(entry) if isinstance(entry, DictConfig) else dict(entry)
        name = str(entry.pop("name", f"stage{index}"))
        if not name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"stages[{index}].name {name!r}: use letters, digits, '-' and '_'")
        if "stages" in entry:
            raise ConfigError(f"stages[{index}]: a stage cannot hold stages")
        start = base
        recipe = str(entry.get("recipe", base.recipe))
        if recipe != base.recipe:
            start = OmegaConf.merge(
                OmegaConf.structured(config_class(recipe)), {key: base[key] for key in ENGINE_KEYS}, {"recipe": recipe}
            )
        _check_stage_refs(entry, [s.name for s in stages], f"stages[{index}] ({name})")
        try:
            merged = OmegaConf.merge(start, entry)
        except OmegaConfBaseException as e:
            key = getattr(e, "full_key", None)
            raise ConfigError(f"stages[{index}] ({name}): {key + ': ' if key else ''}{str(e).splitlines()[0]}") from None
        _validate(merged)  # type: ignore[arg-type]
        stages.append(Stage(index, name, merged))  # type: ignore[arg-type]
    if len({s.name for s in stages}) != len(stages):
        raise ConfigError(f"stage names must differ, got {[s.name for s in stages]}")
    return stages


def _map_strings(value: Any, fn: Callable[[str], Any]) -> Any:
    """`value` (nested dicts and lists) with `fn` applied to every string in it."""
    if isinstance(value, dict):
        return {k: _map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_strings(v, fn) for v in value]
    return fn(value) if isinstance(value, str) else value


def _check_stage_refs(entry: Any, earlier: list[str], where: str) -> None:
    """Every `stage:NAME` value of a stage entry names an earlier stage."""

    def check(value: str) -> str:
        if value.startswith(STAGE_REF) and value[len(STAGE_REF) :] not in earlier:
            raise ConfigError(f"{where}: {value!r} names no earlier stage (earlier: {', '.join(earlier) or 'none'})")
        return value

    _map_strings(entry, check)


def resolve_stage_refs(cfg: DictConfig, run_dir: Path, stages: Sequence[Stage], model_dir: str) -> DictConfig:
    """A stage config with each `stage:NAME` value replaced by that stage's model folder in `run_dir`."""
    folders = {s.name: str(run_dir / s.dirname / model_dir) for s in stages}

    def resolve(value: str) -> str:
        return folders.get(value[len(STAGE_REF) :], value) if value.startswith(STAGE_REF) else value

    container = OmegaConf.to_container(cfg, resolve=False)
    resolved = OmegaConf.merge(OmegaConf.structured(config_class(str(cfg.recipe))), _map_strings(container, resolve))
    return resolved  # type: ignore[return-value]
