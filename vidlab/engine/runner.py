"""`train` and `evaluate`: run folders, stages, resume, the Lightning Trainer and its callbacks.

Run layout (every stage in its own folder, the resolved config beside it)::

    runs/NAME/TIMESTAMP/config.yaml               the whole run's config, resolved
    runs/NAME/TIMESTAMP/I-STAGE/config.yaml       the config stage I ran with
    runs/NAME/TIMESTAMP/I-STAGE/checkpoints/      stepNNNNNNN.ckpt, last.ckpt, best-*.ckpt, interrupted.ckpt
    runs/NAME/TIMESTAMP/I-STAGE/tensorboard/
    runs/NAME/TIMESTAMP/I-STAGE/model/            final weights (model.safetensors + config.yaml)
    runs/NAME/TIMESTAMP/eval_SPLIT.json           metrics and protocol of the evaluation after training
"""

from __future__ import annotations

import json
import logging
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from omegaconf import DictConfig, ListConfig, OmegaConf

from vidlab.config import save_config
from vidlab.data.quality import BadSampleTracker
from vidlab.data.workers import set_intra_op_threads, start_early
from vidlab.engine import distributed
from vidlab.engine.checkpointing import (
    BEST,
    INTERRUPTED,
    AtomicCheckpointIO,
    CheckpointWriteError,
    PeriodicCheckpoint,
    checkpoint_step,
    describe_checkpoint,
    read_training_checkpoint,
    readable_checkpoint,
    remove_stale_temporaries,
)
from vidlab.engine.config import Stage, load_train_config, resolve_stage_refs, resolve_stages
from vidlab.engine.data import ResumableTrainLoader, eval_loader
from vidlab.engine.module import VidlabModule
from vidlab.engine.progress import ProgressLines, filter_known_noise
from vidlab.engine.recipe import EvalSet, Recipe, get_recipe
from vidlab.errors import ConfigError, VidlabError
from vidlab.files import write_text_atomic
from vidlab.models.checkpoint import WEIGHTS_FILE, save_vidlab_checkpoint

log = logging.getLogger(__name__)

RUN_CONFIG = "config.yaml"
CHECKPOINT_DIR = "checkpoints"
MODEL_DIR = "model"


class TrainingError(VidlabError):
    """A run cannot start or go on as configured (e.g. nothing to resume from)."""


@dataclass
class TrainResult:
    run_dir: Path
    stage_dirs: list[Path]
    model_dir: Path  # final weights of the last stage (a vidlab checkpoint)
    metrics: dict[str, float] = field(default_factory=dict)  # the evaluation after training, if any
    stage_metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # stage name -> its evaluation
    wall_time_s: float = 0.0


# ---------------------------------------------------------------------------------------------------------
# Run folders and resume


def _timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def _new_run_dir(cfg: DictConfig) -> Path:
    if cfg.run_dir:
        run_dir = Path(cfg.run_dir)
        if (run_dir / RUN_CONFIG).is_file() and not cfg.resume:  # a run's weights and evaluations are never overwritten
            finished = (run_dir / resolve_stages(cfg)[-1].dirname / MODEL_DIR / WEIGHTS_FILE).is_file()
            raise TrainingError(
                f"run_dir {run_dir} holds a{' finished' if finished else 'n unfinished'} run: "
                + ("choose a new folder, or leave run_dir out for a new timestamped run" if finished
                   else f"`vidlab train CONFIG run_dir={run_dir} resume=auto` goes on with it, or choose a new folder")
            )
        return run_dir
    base = Path(cfg.output_dir) / cfg.name
    stamp = _timestamp()
    candidate, n = base / stamp, 1
    while candidate.exists():  # two runs started within the same second
        candidate, n = base / f"{stamp}-{n}", n + 1
    return candidate


def _stage_of_checkpoint(ckpt: Path, stages: list[Stage]) -> tuple[Path, int]:
    """(run folder, stage index) of a checkpoint at RUN/I-STAGE/checkpoints/X.ckpt."""
    stage_dir = ckpt.resolve().parent.parent
    for stage in stages:
        if stage_dir.name == stage.dirname:
            return stage_dir.parent, stage.index
    raise TrainingError(
        f"{ckpt}: not inside a stage folder of this config ({', '.join(s.dirname for s in stages)}); "
        "resume takes a checkpoint from RUN/I-STAGE/checkpoints/"
    )


def _newest_checkpoint(cfg: DictConfig, stages: list[Stage]) -> Path | None:
    """The newest complete checkpoint of the newest run of this config's name (for resume=auto, e.g. on requeue);
    a truncated or empty file (a crash or a full disk during its write) is passed over, with a warning."""
    base = Path(cfg.run_dir) if cfg.run_dir else Path(cfg.output_dir) / cfg.name
    runs = [base] if cfg.run_dir else sorted((p for p in base.glob("*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
    for run in reversed(runs):
        ckpts = [c for s in stages for c in (run / s.dirname / CHECKPOINT_DIR).glob("*.ckpt") if not c.name.startswith(BEST)]
        for ckpt in sorted(ckpts, key=lambda c: (c.stat().st_mtime, c.name == f"{INTERRUPTED}.ckpt"), reverse=True):
            if readable_checkpoint(ckpt):
                return ckpt
            log.warning("resume=auto: skipping %s (incomplete: a write that did not finish)", ckpt)
    return None


def _resume_point(cfg: DictConfig, stages: list[Stage]) -> tuple[Path | None, int, Path | None]:
    """(run folder or None for a new one, first stage to run, checkpoint to resume it from)."""
    if not cfg.resume:
        return None, 0, None
    if cfg.resume == "auto":
        ckpt = _newest_checkpoint(cfg, stages)
        if ckpt is None:
            log.info("resume=auto: no checkpoint of %r yet, starting a new run", cfg.name)
            return None, 0, None
    else:
        ckpt = Path(cfg.resume)
        if not ckpt.is_file():
            raise TrainingError(f"resume: checkpoint {ckpt} not found")
        if not readable_checkpoint(ckpt):
            raise TrainingError(f"resume: {ckpt} is incomplete (a write that did not finish); resume=auto takes the newest complete one")
    run_dir, index = _stage_of_checkpoint(ckpt, stages)
    if (run_dir / stages[index].dirname / MODEL_DIR / WEIGHTS_FILE).is_file() and cfg.resume == "auto":
        return run_dir, index + 1, None  # that stage finished: go on with the next one
    return run_dir, index, ckpt


def _check_same_config(run_dir: Path, cfg: DictConfig) -> None:
    saved = run_dir / RUN_CONFIG
    if not saved.is_file():
        return
    old = OmegaConf.to_container(OmegaConf.load(saved), resolve=True)
    new = OmegaConf.to_container(cfg, resolve=True)
    for d in (old, new):
        d.pop("resume", None)  # type: ignore[union-attr]
    if old != new:
        log.warning("resuming %s with a config that differs from the one it was started with", run_dir)


# ---------------------------------------------------------------------------------------------------------
# Trainer


class SaveOnException(Callback):
    """Writes interrupted.ckpt when training stops on an exception or Ctrl-C, so no work is lost.

    Only in single-process runs: saving is collective, and a crash on one rank cannot make the others
    join it; multi-process runs resume from their last periodic checkpoint.
    """

    def __init__(self, path: Path):
        self.path = path

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if trainer.world_size > 1 or trainer.state.fn != TrainerFn.FITTING or trainer.global_step == 0:
            return
        try:
            trainer.save_checkpoint(self.path)
        except CheckpointWriteError as e:
            log.warning("training stopped (%s) and its state could not be saved: %s", type(exception).__name__, e)
            return
        log.warning("training stopped (%s): state saved to %s", type(exception).__name__, self.path)
        exception.add_note(f"the training state is saved: `vidlab train CONFIG resume={self.path}` goes on from it")


def _devices(cfg: DictConfig) -> tuple[Any, int]:
    """(devices, num_nodes): from the launcher when `devices: auto` and torchrun/SLURM started us."""
    devices, nodes = cfg.trainer.devices, cfg.trainer.num_nodes
    _, world, per_node = distributed.launcher_world()
    if devices == "auto" and world > 1:
        return per_node, world // per_node
    return devices, nodes


def _process_count(cfg: DictConfig) -> int:
    """How many training processes Lightning will run for `trainer.devices` x `trainer.num_nodes`."""
    devices, nodes = _devices(cfg)
    if isinstance(devices, (list, ListConfig)):
        per_node = len(devices)
    elif str(devices).lstrip("-").isdigit():
        per_node = int(devices) if int(devices) >= 0 else torch.cuda.device_count()
    else:  # auto: every visible GPU, one process on a CPU
        per_node = torch.cuda.device_count() if cfg.trainer.accelerator != "cpu" and torch.cuda.is_available() else 1
    return max(1, per_node) * nodes


def _strategy(cfg: DictConfig, recipe: Recipe) -> Any:
    if cfg.trainer.strategy != "fsdp":
        if recipe.ddp_find_unused_parameters and cfg.trainer.strategy in ("auto", "ddp") and _process_count(cfg) > 1:
            return "ddp_find_unused_parameters_true"
        return cfg.trainer.strategy
    from lightning.pytorch.strategies import FSDPStrategy

    units = recipe.wrap_modules()
    return FSDPStrategy(
        auto_wrap_policy=units or None,
        activation_checkpointing_policy=units if cfg.trainer.grad_checkpointing and units else None,
        state_dict_type="full",
    )


def _after_existing_events(log_dir: Path) -> None:
    """Wait (at most a second) until a new TensorBoard event file sorts after the folder's others: readers order
    them by the whole second in their names, then by process id, and a resumed run's purge of the killed run's
    points only works when its file comes later."""
    names = [p.name.split(".") for p in log_dir.glob("events.out.tfevents.*")]
    stamps = [int(part[3]) for part in names if len(part) > 3 and part[3].isdigit()]
    if stamps and (wait := max(stamps) + 1 - time.time()) > 0:
        time.sleep(wait)


def _loggers(cfg: DictConfig, stage_dir: Path, resumed_step: int | None) -> list[Any]:
    """The configured loggers; a resumed stage's TensorBoard log drops the points after the resumed step (a killed
    run logged them, the resumed run logs them again)."""
    loggers: list[Any] = []
    if cfg.logging.tensorboard:
        from lightning.pytorch.loggers import TensorBoardLogger

        purge = {"purge_step": resumed_step} if resumed_step is not None else {}
        if resumed_step is not None:
            _after_existing_events(stage_dir / "tensorboard")
        loggers.append(TensorBoardLogger(str(stage_dir), name="tensorboard", version="", **purge))
    if cfg.logging.wandb:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ConfigError("logging.wandb: the wandb package is not installed (pip install wandb)") from None
        from lightning.pytorch.loggers import WandbLogger

        loggers.append(WandbLogger(project=cfg.logging.wandb_project or cfg.name, save_dir=str(stage_dir)))
    return loggers


def _deterministic(t: DictConfig) -> bool:
    """`trainer.deterministic`; by default on for CPU runs and off on GPUs, whose deterministic kernels are slower."""
    if t.deterministic is not None:
        return bool(t.deterministic)
    return t.accelerator == "cpu" or (t.accelerator == "auto" and not torch.cuda.is_available())


def _trainer(**kwargs: Any) -> pl.Trainer:
    """`lightning.Trainer(**kwargs)`, its complaints about the device settings as one-line config errors."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    fsdp = kwargs.get("strategy") == "fsdp" or type(kwargs.get("strategy")).__name__ == "FSDPStrategy"
    if fsdp and (kwargs["accelerator"] == "cpu" or (kwargs["accelerator"] == "auto" and not torch.cuda.is_available())):
        raise ConfigError("trainer.strategy=fsdp needs GPUs (Lightning's FSDP runs on CUDA only); use ddp on CPUs")
    filter_known_noise()
    try:
        return pl.Trainer(**kwargs)
    except (MisconfigurationException, ValueError, TypeError) as e:
        raise ConfigError(f"trainer: {str(e).splitlines()[0]}") from None


def build_trainer(
    cfg: DictConfig,
    recipe: Recipe,
    stage_dir: Path,
    has_val: bool,
    callbacks: Sequence[Callback] = (),
    resumed_step: int | None = None,
) -> pl.Trainer:
    """The Lightning Trainer of one stage (checkpoints, logs, precision, clipping, accumulation)."""
    t, c = cfg.trainer, cfg.checkpoint
    ckpt_dir = stage_dir / CHECKPOINT_DIR
    all_callbacks: list[Callback] = [
        PeriodicCheckpoint(ckpt_dir, c.keep, c.every_n_steps),
        *callbacks,
        ProgressLines(cfg.logging.progress_every_s),
    ]
    loggers = _loggers(cfg, stage_dir, resumed_step)
    if loggers:
        all_callbacks.append(LearningRateMonitor(logging_interval="step"))
    monitor = c.monitor or recipe.default_monitor
    if has_val and monitor:
        all_callbacks.append(
            ModelCheckpoint(
                dirpath=ckpt_dir, filename=f"{BEST}-step{{step:07d}}", auto_insert_metric_name=False, monitor=monitor, mode=c.mode,
                save_top_k=1, save_weights_only=True,  # for evaluation: no optimizer state
            )
        )
    if c.save_on_exception:
        all_callbacks.append(SaveOnException(ckpt_dir / f"{INTERRUPTED}.ckpt"))
    devices, num_nodes = _devices(cfg)
    debug = cfg.debug
    return _trainer(
        accelerator=t.accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=_strategy(cfg, recipe),
        precision=t.precision,
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val,
        gradient_clip_algorithm=t.gradient_clip_algorithm,
        val_check_interval=t.val_check_interval,
        check_val_every_n_epoch=t.check_val_every_n_epoch,
        limit_train_batches=cfg.debug_steps if debug else None,
        limit_val_batches=(2 if debug else None) if has_val else 0,
        limit_test_batches=2 if debug else None,
        num_sanity_val_steps=0,
        log_every_n_steps=1 if debug else t.log_every_n_steps,
        deterministic=_deterministic(t),
        use_distributed_sampler=False,  # the loaders shard by rank themselves
        logger=loggers or False,
        callbacks=all_callbacks,
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=cfg.logging.progress_bar,
        enable_model_summary=False,
        # Lightning's SLURM pre-emption checkpoint (hpc_ckpt_N.ckpt) lands beside the others, for resume=auto
        default_root_dir=str(ckpt_dir),
    )


def _module(recipe: Recipe, cfg: DictConfig, init_from: str | Path | None) -> tuple[VidlabModule, DictConfig]:
    model, model_cfg = recipe.build_model(init_from)
    if cfg.trainer.grad_checkpointing and cfg.trainer.strategy != "fsdp":
        if not hasattr(model, "set_grad_checkpointing"):
            raise ConfigError(f"trainer.grad_checkpointing: {type(model).__name__} has no set_grad_checkpointing")
        model.set_grad_checkpointing(True)
    return VidlabModule(recipe, model.train(), cfg), model_cfg


def _attach_eval(module: VidlabModule, eval_sets: dict[str, EvalSet], rank: int, world: int, data: DictConfig) -> None:
    for split, eval_set in eval_sets.items():
        module.eval_sets[split] = eval_set
        module.eval_loaders[split] = eval_loader(
            eval_set.dataset, eval_set.batch_size, eval_set.collate, rank=rank, world_size=world,
            num_workers=data.num_workers, worker_timeout=data.worker_timeout,
        )


def _fit(trainer: pl.Trainer, module: VidlabModule, ckpt: Path | None) -> None:
    """`trainer.fit`, turning Lightning's exit on Ctrl-C back into KeyboardInterrupt for the CLI (and
    giving back the Ctrl-C handler Lightning switches off while it shuts down)."""
    sigint = signal.getsignal(signal.SIGINT)
    try:
        trainer.fit(module, ckpt_path=str(ckpt) if ckpt else None)
    except SystemExit:
        if trainer.interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        signal.signal(signal.SIGINT, sigint)


def _save_final(trainer: pl.Trainer, module: VidlabModule, model_cfg: DictConfig, directory: Path, recipe: Recipe) -> None:
    """The stage's final weights as a vidlab checkpoint (full weights, also under FSDP)."""
    model = module.model
    if trainer.strategy.__class__.__name__ == "FSDPStrategy":  # gathers the full weights on rank 0
        state = trainer.strategy.lightning_module_state_dict()
        if trainer.is_global_zero:
            model, _ = recipe.build_model(None)
            model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    if trainer.is_global_zero:
        save_vidlab_checkpoint(model, model_cfg, directory)
    distributed.barrier()


def train(cfg: DictConfig, callbacks: Sequence[Callback] = ()) -> TrainResult:
    """Run every stage of `cfg` (a config from `load_train_config`), resuming when `cfg.resume` says so.

    A stage builds its model and datasets before anything is written, so a bad annotation file or model
    name fails before a run folder exists. `callbacks` are extra Lightning callbacks for every stage.
    `eval.every_stage` evaluates `eval.split` after every stage run here, not only the last (to compare the
    stages of a curriculum); each stage's numbers go to `I-STAGE/eval_SPLIT.json` and `stage_metrics`.
    """
    started = time.perf_counter()
    stages = resolve_stages(cfg)
    distributed.init_process_group(cfg.trainer.accelerator)
    rank, world = distributed.world()
    resumed_dir, first_stage, ckpt = _resume_point(cfg, stages)
    run_dir = Path(distributed.broadcast_object(str(resumed_dir or _new_run_dir(cfg))))
    tracker = BadSampleTracker(max_bad_fraction=stages[0].config.data.max_bad_fraction)
    init_from: str | Path | None = cfg.init_from
    stage_metrics: dict[str, dict[str, float]] = {}
    last = stages[-1]
    for stage in stages:
        stage_dir = run_dir / stage.dirname
        if stage.index < first_stage:
            init_from = stage_dir / MODEL_DIR
            continue
        if stage.index > 0 and stage.config.recipe != stages[stage.index - 1].config.recipe:
            init_from = None  # another recipe's model: its weights come from its own config (`stage:NAME` values)
        scfg = resolve_stage_refs(stage.config, run_dir, stages, MODEL_DIR)
        pl.seed_everything(scfg.seed, workers=True, verbose=False)
        recipe = get_recipe(scfg)
        start_early(scfg.data.num_workers)
        set_intra_op_threads(scfg.data.num_workers, scfg.trainer.threads)
        recipe.prepare_data()
        module, model_cfg = _module(recipe, scfg, init_from)  # first: the datasets follow the built model's config
        train_sets = recipe.train_sets()
        evaluates = scfg.eval.after_train and (stage is last or scfg.eval.every_stage)
        splits = ["val"] + ([scfg.eval.split] if evaluates else [])
        eval_sets = {split: eval_set for split in splits if (eval_set := recipe.eval_set(split)) is not None}
        _attach_eval(module, eval_sets, rank, world, scfg.data)
        resuming = ckpt if stage.index == first_stage else None
        if rank == 0:
            remove_stale_temporaries(stage_dir / CHECKPOINT_DIR)
        resumed_step = checkpoint_step(resuming) if resuming is not None else None
        trainer = build_trainer(scfg, recipe, stage_dir, "val" in module.eval_loaders, callbacks, resumed_step)
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        module.train_loader = ResumableTrainLoader(  # before the run folder: its batch checks are config errors
            train_sets,
            rank=rank,
            world_size=world,
            seed=scfg.seed,
            num_workers=scfg.data.num_workers,
            worker_timeout=scfg.data.worker_timeout,
            steps_per_epoch=scfg.data.steps_per_epoch,
            tracker=tracker,
            pin_memory=torch.cuda.is_available(),
            progress=lambda progress=progress: progress.processed,
            mixing=scfg.data.mixing,
        )
        if rank == 0:
            if stage.index == first_stage:
                if resumed_dir is not None:
                    _check_same_config(run_dir, cfg)
                else:
                    save_config(cfg, run_dir / RUN_CONFIG)
                print(f"run folder: {run_dir}")
            save_config(scfg, stage_dir / RUN_CONFIG)
            print(f"stage {stage.dirname}" + (f" (resuming {ckpt})" if ckpt and stage.index == first_stage else ""))
            log.info("%s", describe_checkpoint(module.model))
        try:
            _fit(trainer, module, ckpt if stage.index == first_stage else None)
        finally:
            module.train_loader.close()
        trainer.save_checkpoint(stage_dir / CHECKPOINT_DIR / "last.ckpt", weights_only=False)
        _save_final(trainer, module, model_cfg, stage_dir / MODEL_DIR, recipe)
        init_from = stage_dir / MODEL_DIR
        split = scfg.eval.split
        if evaluates and split in module.eval_loaders:
            out_file = run_dir / f"eval_{split}.json" if stage is last else stage_dir / f"eval_{split}.json"
            try:
                stage_metrics[stage.name] = _run_eval(trainer, module, split, out_file)
            except VidlabError as e:
                e.add_note(
                    f"the training of stage {stage.dirname} had finished: its weights are in {stage_dir / MODEL_DIR}; "
                    f"once the {split} data is fixed, `vidlab eval {stage_dir / MODEL_DIR}` evaluates them"
                )
                raise
    if rank == 0 and tracker.attempts:
        print(tracker.summary())
    result = TrainResult(run_dir, [run_dir / s.dirname for s in stages], run_dir / last.dirname / MODEL_DIR)
    result.stage_metrics = stage_metrics
    result.metrics = stage_metrics.get(last.name, {})
    result.wall_time_s = time.perf_counter() - started
    if rank == 0:
        print(f"training finished in {result.wall_time_s:.1f} s; final weights: {result.model_dir}")
    return result


def _run_eval(trainer: pl.Trainer, module: VidlabModule, split: str, out_file: Path | None) -> dict[str, float]:
    module.eval_split = split
    trainer.test(module, verbose=False)
    metrics, protocol = module.last_eval[split]
    if trainer.is_global_zero:
        print(protocol)
        print(module.recipe.format_metrics(metrics, split))
        if out_file is not None:
            write_text_atomic(out_file, json.dumps({"split": split, "protocol": protocol, "metrics": metrics}, indent=1) + "\n")
            outputs, context = module.last_outputs[split]
            for path in module.recipe.write_eval_artifacts(outputs, metrics, context, out_file.parent):
                print(f"wrote {path}")
    return metrics


# ---------------------------------------------------------------------------------------------------------
# Evaluation


def _find_run_config(path: Path) -> Path:
    for folder in [path if path.is_dir() else path.parent, *path.resolve().parents]:
        candidate = folder / RUN_CONFIG
        if candidate.is_file() and "recipe" in OmegaConf.load(candidate):
            return candidate
    raise ConfigError(f"{path}: no run config.yaml (with a 'recipe' key) in it or above it")


def _eval_target(target: Path, overrides: Sequence[str]) -> tuple[DictConfig, Path | None]:
    """(config, weights) of `vidlab eval TARGET`: a config YAML (weights from eval.checkpoint), a run
    folder (its last stage's final weights), a stage's model folder, or a Lightning .ckpt of a run."""
    if target.is_file() and target.suffix in (".yaml", ".yml"):
        cfg = load_train_config(target, overrides)
        checkpoint = cfg.eval.checkpoint
        return cfg, Path(checkpoint) if checkpoint else None
    if not target.exists():
        raise ConfigError(f"{target}: no such config, run folder or checkpoint")
    if any(override.partition("=")[0].strip() == "eval.checkpoint" for override in overrides):
        raise ConfigError(f"eval.checkpoint picks the weights of a config YAML; {target} names its own (pass the checkpoint instead)")
    run_config = _find_run_config(target)
    cfg = load_train_config(run_config, overrides)
    if target.is_file():
        return cfg, target
    if (target / WEIGHTS_FILE).is_file():
        return cfg, target
    return cfg, final_model_dir(target, cfg)


def final_model_dir(run_dir: Path, cfg: DictConfig | None = None) -> Path:
    """The final model folder of the run in `run_dir` (its last stage's), by its saved config or `cfg`."""
    cfg = cfg if cfg is not None else load_train_config(run_dir / RUN_CONFIG)
    weights = run_dir / resolve_stages(cfg)[-1].dirname / MODEL_DIR
    if not (weights / WEIGHTS_FILE).is_file():
        raise TrainingError(f"{run_dir}: the run has no final weights at {weights} (pass a checkpoint instead)")
    return weights


def load_checkpoint_weights(path: Path | None) -> str | dict[str, torch.Tensor] | None:
    """Weights to build a model from: a path as is, or for a Lightning .ckpt (read as data only, no pickled
    code runs) the model's tensors without the module's 'model.' prefix."""
    if path is None or path.suffix != ".ckpt":
        return str(path) if path else None
    tensors = read_training_checkpoint(path)
    if tensors is None:
        raise ConfigError(f"{path}: not a vidlab training checkpoint (pass a model folder or an official checkpoint)")
    return tensors


def evaluate(target: str | Path, overrides: Sequence[str] = ()) -> dict[str, float]:
    """`vidlab eval`: the recipe's evaluation protocol on `eval.split`, printed with its numbers."""
    cfg, weights = _eval_target(Path(target), overrides)
    if weights is None:
        raise ConfigError("nothing to evaluate: pass a run folder or checkpoint, or set eval.checkpoint=PATH")
    stages = resolve_stages(cfg)
    scfg = stages[-1].config
    if Path(target).suffix not in (".yaml", ".yml"):  # a run's own config: its stages' folders are known
        scfg = resolve_stage_refs(scfg, _find_run_config(Path(target)).parent, stages, MODEL_DIR)
    distributed.init_process_group(scfg.trainer.accelerator)
    rank, world = distributed.world()
    recipe = get_recipe(scfg)
    start_early(scfg.data.num_workers)
    set_intra_op_threads(scfg.data.num_workers, scfg.trainer.threads)
    recipe.prepare_data()
    split = scfg.eval.split
    if scfg.data.get(split) is None and not scfg.data.get("dummy"):
        raise ConfigError(f"eval.split={split!r}: the config has no data.{split} set")
    model, _ = recipe.build_model(load_checkpoint_weights(weights))  # first: the dataset follows the model's config
    module = VidlabModule(recipe, model.eval(), scfg)
    eval_set = recipe.eval_set(split)
    if eval_set is None:
        raise ConfigError(f"eval.split={split!r}: the config has no data.{split} set")
    _attach_eval(module, {split: eval_set}, rank, world, scfg.data)
    devices, num_nodes = _devices(scfg)
    trainer = _trainer(
        accelerator=scfg.trainer.accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=scfg.trainer.strategy if scfg.trainer.strategy != "fsdp" else "auto",
        precision=scfg.trainer.precision,
        logger=False,
        enable_progress_bar=scfg.logging.progress_bar,
        enable_model_summary=False,
        use_distributed_sampler=False,
        limit_test_batches=2 if scfg.debug else None,
    )
    if rank == 0:
        print(f"evaluating {weights}")
    out_dir = scfg.eval.output_dir
    return _run_eval(trainer, module, split, Path(out_dir) / f"eval_{split}.json" if out_dir else None)


__all__ = ["TrainResult", "TrainingError", "build_trainer", "evaluate", "load_checkpoint_weights", "train"]
