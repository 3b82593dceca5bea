"""What a recipe supplies to the engine: the model, the data, the loss of a batch and the evaluation.

The engine owns everything generic (loops, devices, precision, optimizer, schedule, checkpoints, logging,
resume, stages); a recipe (`vidlab.recipes.<system>`) holds only what is specific to its paper.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.utils.data import Dataset

from vidlab.data.formats import MediaRecord, read_source
from vidlab.engine import distributed
from vidlab.engine.config import check_at_least, register_config
from vidlab.engine.data import Collate, TrainSet
from vidlab.errors import ConfigError

Gather = Callable[[Tensor], Tensor]  # local (B, ...) -> global (B * world, ...), gradients flowing back


# The rows `eval_step` returns, by key prefix, and the columns that identify a row of each kind: per-sample rows
# (`index`: the dataset position), per-video and per-caption rows of a retrieval evaluation.
ROW_KEYS: dict[str, tuple[str, ...]] = {"text_": ("text_video_index", "text_slot"), "video_": ("video_index",), "": ("index",)}


def in_dataset_order(outputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Gathered evaluation rows of every kind (`ROW_KEYS`) sorted by their identifying columns, each row once: the
    processes of a sharded evaluation return their rows interleaved, and a padded shard repeats a sample."""
    kinds: dict[str, list[str]] = defaultdict(list)
    for key in outputs:
        kinds[next(prefix for prefix in ROW_KEYS if key.startswith(prefix))].append(key)
    ordered: dict[str, Tensor] = {}
    for prefix, keys in kinds.items():
        missing = [column for column in ROW_KEYS[prefix] if column not in outputs]
        if missing:
            raise KeyError(f"evaluation rows {keys} lack their identifying column(s) {missing}")
        identity = np.stack([outputs[column].cpu().long().numpy() for column in ROW_KEYS[prefix]], 1)
        order = np.lexsort(identity.T[::-1])
        first = np.ones(len(order), dtype=bool)
        first[1:] = (identity[order][1:] != identity[order][:-1]).any(1)
        rows = torch.from_numpy(order[first])
        ordered.update({key: outputs[key][rows.to(outputs[key].device)] for key in keys})
    return ordered


@dataclass(frozen=True)
class EvalContext:
    """What an evaluation's metrics may need besides its gathered rows."""

    split: str
    model: nn.Module | None = None  # None: metrics from the stored rows alone (a protocol that scores again needs it)
    device: torch.device = torch.device("cpu")
    records: Sequence[MediaRecord] = ()  # the evaluated dataset's records, by dataset index (when it has them)


@dataclass
class EvalSet:
    """An evaluation split: dataset, per-process batch size, collate function, and the records its rows index."""

    split: str
    dataset: Dataset
    batch_size: int
    collate: Collate
    records: Sequence[MediaRecord] = ()


class Recipe(ABC):
    """One system's training and evaluation, for one stage's config."""

    name: ClassVar[str]
    config_class: ClassVar[type]
    default_monitor: ClassVar[str | None] = None
    minimums: ClassVar[dict[str, float]] = {}  # the recipe's own config sizes: key -> lowest valid value
    # Steps that may leave parameters without a gradient (a part some batches skip): DDP must look for them.
    ddp_find_unused_parameters: ClassVar[bool] = False

    def __init__(self, cfg: DictConfig):
        check_at_least(cfg, self.minimums)
        self.cfg = cfg
        self._data_prepared = False

    def prepare_data(self) -> None:
        """Make the configured data exist before anything reads it: by default, generate ShapesBench into
        `data.root` when `data.shapesbench` is set (rank 0 writes, reused when already there; every rank
        waits). Runs once per recipe object, so the runner and the recipe's own record readers may both
        call it (recipes used outside the runner still get their data)."""
        if self._data_prepared:
            return
        self._data_prepared = True
        source = self.cfg.data.shapesbench
        if source is None:
            return
        # imported here: only configs that generate data pay for it
        from vidlab.data.shapesbench import generate

        if distributed.world()[0] == 0:
            generate(self.cfg.data.root, source.size, source.seed, progress=False)
        distributed.barrier()

    def read_records(self, source: DictConfig, where: str, **options: Any) -> list[MediaRecord]:
        """The records of a configured source (`annotations`, `format`, `media_root`, `options`; `where` names it in
        errors), its relative paths under `data.root` (`vidlab.data.formats.read_source`); `options` add to its own."""
        self.prepare_data()
        return read_source(
            self.cfg.data.root, source.annotations, source.format, source.media_root, where=where, **{**source.options, **options}
        )

    def start_weights(self, init_from: str | Path | Mapping[str, Tensor] | None = None) -> str | None:
        """The file or folder a model's weights come from, for the sizes a vidlab one records beside them: `init_from`
        when it is a path (the previous stage's model, a run's own at `vidlab eval RUN`), else the configured
        `init_from` or `eval.checkpoint` (the tensors of a Lightning checkpoint record nothing)."""
        if isinstance(init_from, (str, Path)):
            return str(init_from)
        return self.cfg.init_from or self.cfg.eval.checkpoint

    @abstractmethod
    def build_model(self, init_from: str | Path | Mapping[str, Tensor] | None) -> tuple[nn.Module, DictConfig]:
        """The model and its model config, initialised from `init_from` (a checkpoint path or a state dict
        with the model's own names) when given."""

    @abstractmethod
    def train_sets(self) -> list[TrainSet]:
        """The training datasets (bad-sample policy `skip`), mixed by the engine."""

    def eval_source(self, split: str) -> Any:
        """The config section `data.SPLIT` of an evaluation split ('val' or 'test'; None when not configured)."""
        if split not in ("val", "test"):
            raise ConfigError(f"eval split must be 'val' or 'test', got {split!r}")
        return self.cfg.data[split]

    @abstractmethod
    def eval_set(self, split: str) -> EvalSet | None:
        """An evaluation split (bad-sample policy `raise`), or None when the config has none."""

    @abstractmethod
    def training_loss(self, model: nn.Module, batch: dict[str, Any], gather: Gather) -> Tensor | Mapping[str, Tensor]:
        """The loss of one batch, or its named terms (the engine logs each as `train/NAME` and trains on their sum);
        `gather` collects a tensor over all processes (identity on one)."""

    @abstractmethod
    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Per-row outputs of one batch, each kind of row with its identifying columns (`ROW_KEYS`: `index` for
        per-sample rows; `video_index`, and `text_video_index` + `text_slot`, for the videos and captions of a
        retrieval evaluation). The engine concatenates them over batches and processes and puts them in dataset
        order, each row once (`in_dataset_order`)."""

    @abstractmethod
    def eval_metrics(self, outputs: dict[str, Tensor], context: EvalContext) -> dict[str, float]:
        """Flat metric names -> values from every process's outputs, in dataset order; `context` holds the split,
        the evaluated model (for protocols that score again, e.g. re-ranking), its device and the dataset's records.
        A recipe keeps no state between evaluation calls."""

    @abstractmethod
    def describe_eval(self, outputs: dict[str, Tensor], context: EvalContext) -> str:
        """The protocol of an evaluation (split, what was queried, how it was scored), for printing."""

    def format_metrics(self, metrics: dict[str, float], split: str) -> str:
        """The numbers of an evaluation as printed after its protocol."""
        width = max((len(k) for k in metrics), default=0)
        return "\n".join(f"  {split}/{key:<{width}}  {value:8.2f}" for key, value in metrics.items())

    def write_eval_artifacts(
        self, outputs: dict[str, Tensor], metrics: dict[str, float], context: EvalContext, out_dir: Path
    ) -> list[Path]:
        """Files an evaluation leaves beside its eval_SPLIT.json (figures, a report page); their paths.
        Called on rank 0 only."""
        return []

    def wrap_modules(self) -> set[type[nn.Module]]:
        """Module classes FSDP shards (and checkpoints activations of) one by one."""
        return set()


_RECIPES: dict[str, type[Recipe]] = {}


def register_recipe(recipe: type[Recipe]) -> type[Recipe]:
    """Class decorator: make `recipe: NAME` in configs refer to this recipe."""
    _RECIPES[recipe.name] = recipe
    register_config(recipe.name, recipe.config_class)
    return recipe


def get_recipe(cfg: DictConfig) -> Recipe:
    from vidlab.recipes import RECIPE_MODULES  # noqa: F401 - importing registers the recipes

    if cfg.recipe not in _RECIPES:
        raise ConfigError(f"unknown recipe {cfg.recipe!r} (known: {', '.join(sorted(_RECIPES))})")
    return _RECIPES[cfg.recipe](cfg)
