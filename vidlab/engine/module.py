"""The one LightningModule of vidlab: generic training / evaluation around a recipe.

Checkpoints carry, besides Lightning's own state (weights, optimizer, scheduler, loop progress, the
training loader's position), the random-number state of the process, restored when training restarts,
so a resumed run draws the same dropout masks as an uninterrupted one. Rank 0's state is stored and
restored on every rank: processes seeded alike draw alike.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from vidlab.engine.data import ResumableTrainLoader
from vidlab.engine.distributed import gather_objects
from vidlab.engine.optim import build_optimizer, build_scheduler
from vidlab.engine.recipe import EvalContext, EvalSet, Recipe, in_dataset_order

CHECKPOINT_KEY = "vidlab"


def rng_state() -> dict[str, Any]:
    """The process's Python, numpy, torch (and CUDA) generator states as tensors and numbers, so that
    checkpoints stay loadable with torch.load(weights_only=True)."""
    version, py_state, py_gauss = random.getstate()
    kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": np_pos, "has_gauss": np_has_gauss, "gauss": np_gauss},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class VidlabModule(pl.LightningModule):
    """Wraps a recipe's model; `train_loader` / `eval_loaders` come from the runner."""

    def __init__(self, recipe: Recipe, model: nn.Module, cfg: DictConfig):
        super().__init__()
        self.recipe = recipe
        self.model = model
        self.cfg = cfg
        self.train_loader: ResumableTrainLoader | None = None
        self.eval_loaders: dict[str, Any] = {}
        self.eval_sets: dict[str, EvalSet] = {}
        self.eval_split = "val"
        self.last_eval: dict[str, tuple[dict[str, float], str]] = {}  # split -> (metrics, protocol)
        # split -> the recipe's gathered per-row outputs in dataset order, and their evaluation context
        self.last_outputs: dict[str, tuple[dict[str, Tensor], EvalContext]] = {}
        self._eval_rows: dict[str, list[Tensor]] = defaultdict(list)
        self._pending_rng: dict[str, Any] | None = None

    # -- data -------------------------------------------------------------------------------------------

    def train_dataloader(self) -> ResumableTrainLoader:
        assert self.train_loader is not None, "the runner sets train_loader before fit"
        return self.train_loader

    def val_dataloader(self) -> Any:
        return self.eval_loaders.get("val", [])

    def test_dataloader(self) -> Any:
        return self.eval_loaders[self.eval_split]

    # -- training ---------------------------------------------------------------------------------------

    def _gather(self, tensor: Tensor) -> Tensor:
        """All ranks' rows, gradients flowing back to each rank's own rows."""
        if self.trainer.world_size == 1:
            return tensor
        return self.all_gather(tensor, sync_grads=True).flatten(0, 1)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss = self.recipe.training_loss(self.model, batch, self._gather)
        if isinstance(loss, Mapping):  # named terms: each logged, their sum trained on
            for name, term in loss.items():
                self.log(f"train/{name}", term.detach(), batch_size=1)
            loss = torch.stack(list(loss.values())).sum()
        self.log("train/loss", loss, prog_bar=True, batch_size=1)
        return loss

    def on_train_epoch_start(self) -> None:
        if self.train_loader is not None:
            self.train_loader.set_epoch(self.current_epoch)

    def on_train_start(self) -> None:
        if self._pending_rng is not None:  # restored here, after the loaders and the loop have been set up
            set_rng_state(self._pending_rng)
            self._pending_rng = None

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Under FSDP each rank holds a shard of the gradients, and Lightning's norm clipping refuses to run:
        FSDP's own `clip_grad_norm_` computes the norm over all shards."""
        from torch.distributed.fsdp import FullyShardedDataParallel

        wrapped = self.trainer.model
        if gradient_clip_val and gradient_clip_algorithm in (None, "norm") and isinstance(wrapped, FullyShardedDataParallel):
            wrapped.clip_grad_norm_(gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build_optimizer(self.model, self.cfg.optim, allow_fused="mixed" not in str(self.trainer.precision))
        total = self.total_optimizer_steps()
        scheduler = build_scheduler(optimizer, self.cfg.schedule, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def total_optimizer_steps(self) -> int:
        """Optimizer steps of the whole stage, for the schedule.

        Computed here rather than with `trainer.estimated_stepping_batches`, which builds and starts the
        training loader before a checkpoint's loader position is restored and so breaks mid-epoch resume.
        """
        trainer = self.trainer
        if trainer.max_steps > 0:
            return trainer.max_steps
        assert self.train_loader is not None
        batches = len(self.train_loader)
        limit = trainer.limit_train_batches
        if isinstance(limit, int):
            batches = min(batches, limit)
        elif limit is not None:
            batches = int(batches * limit)
        return max(1, math.ceil(batches / trainer.accumulate_grad_batches) * max(1, trainer.max_epochs or 1))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {"rng": rng_state()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._pending_rng = checkpoint.get(CHECKPOINT_KEY, {}).get("rng")

    # -- evaluation -------------------------------------------------------------------------------------

    def _eval_step(self, batch: dict[str, Any]) -> None:
        for key, rows in self.recipe.eval_step(self.model, batch).items():
            self._eval_rows[key].append(rows.detach())

    def _eval_end(self, split: str) -> None:
        local = {k: torch.cat(v).cpu() for k, v in self._eval_rows.items()}
        self._eval_rows.clear()
        parts = gather_objects(local)
        outputs = {k: torch.cat([p[k] for p in parts if k in p]) for k in set().union(*parts)}
        if not outputs:
            return
        outputs = in_dataset_order(outputs)
        eval_set = self.eval_sets.get(split)
        context = EvalContext(split, self.model, self.device, eval_set.records if eval_set is not None else ())
        metrics = self.recipe.eval_metrics(outputs, context)
        self.last_eval[split] = (metrics, self.recipe.describe_eval(outputs, context))
        self.last_outputs[split] = (outputs, context)
        # every rank computed the same values; sync_dist only keeps Lightning from warning about it
        self.log_dict({f"{split}/{k}": v for k, v in metrics.items()}, sync_dist=True, batch_size=1)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self._eval_end(self.eval_split)
