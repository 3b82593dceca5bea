"""`vidlab bench model CONFIG`: the training step of any recipe, timed on a batch the recipe itself builds.

One step = `recipe.training_loss` (the loss a `vidlab train` of CONFIG minimises, every term summed) under
autocast, backward, AdamW step over the trainable parameters: the shared loop of `vidlab.bench.steps`. The
batch is the first global batch of the config's first training set, read and collated as training reads it,
so the numbers are the recipe's own, for every recipe. Variants (frames, activation checkpointing, a frozen
or tuned backbone) are config overrides, one row each, measured in one run. On the CPU each row runs in a
fresh process, whose peak RSS is its peak memory; on a GPU the allocator's peak.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from vidlab.bench.common import markdown_table, run_isolated
from vidlab.bench.steps import check_device, time_training_steps


@dataclass(frozen=True)
class RecipeStepResult:
    variant: str  # the row's overrides, or "config"
    recipe: str
    device: str
    precision: str
    batch_size: int
    params_m: float
    trainable_m: float
    step_ms: float
    samples_per_s: float
    peak_mem_mib: float


def recipe_step(config: str, overrides: Sequence[str], variant: str, *, stage: int, steps: int, warmup: int,
                device: str, precision: str) -> RecipeStepResult:
    """Mean seconds of `steps` training steps of stage `stage` of CONFIG + overrides, after `warmup` untimed."""
    from lightning.fabric.utilities.apply_func import move_data_to_device

    from vidlab.engine.config import load_train_config, resolve_stages
    from vidlab.engine.recipe import get_recipe

    check_device(device, precision)
    cfg = resolve_stages(load_train_config(config, overrides))[stage].config
    torch.manual_seed(cfg.seed)
    recipe = get_recipe(cfg)
    recipe.prepare_data()
    model, _ = recipe.build_model(cfg.init_from)
    if cfg.trainer.grad_checkpointing:
        model.set_grad_checkpointing(True)
    model = model.to(device).train()
    train_set = recipe.train_sets()[0]
    batch = move_data_to_device(train_set.collate([train_set.dataset[i] for i in range(train_set.batch_size)]), device)
    batch.pop("bad_samples", None)

    def loss() -> torch.Tensor:
        value = recipe.training_loss(model, batch, lambda rows: rows)
        return torch.stack(list(value.values())).sum() if isinstance(value, Mapping) else value

    params = list(model.parameters())
    seconds, peak = time_training_steps(loss, params, steps=steps, warmup=warmup, device=device, precision=precision)
    return RecipeStepResult(
        variant, str(cfg.recipe), device, precision, train_set.batch_size,
        sum(p.numel() for p in params) / 1e6, sum(p.numel() for p in params if p.requires_grad) / 1e6,
        1000 * seconds, train_set.batch_size / seconds, peak,
    )


def run_recipe_steps(config: str, overrides: Sequence[str], variants: Sequence[str], **kwargs: Any) -> list[RecipeStepResult]:
    """The config as given, then each variant (space-separated KEY=VALUE overrides added), one row each."""
    rows = []
    for variant in ["", *variants]:
        args = {"config": config, "overrides": [*overrides, *variant.split()], "variant": variant or "config", **kwargs}
        if kwargs["device"].startswith("cuda"):
            rows.append(recipe_step(**args))
            continue
        result, peak_rss = run_isolated(recipe_step, args, preload=["vidlab.engine.recipe"])
        rows.append(RecipeStepResult(**{**asdict(result), "peak_mem_mib": peak_rss}))
    return rows


def render_recipe_steps(config: str, rows: Sequence[RecipeStepResult]) -> str:
    headers = ("variant", "recipe", "device", "precision", "batch", "params M", "trainable M", "step ms", "samples/s",
               "peak MiB")
    table = [(r.variant, r.recipe, r.device, r.precision, r.batch_size, f"{r.params_m:.1f}", f"{r.trainable_m:.1f}",
              f"{r.step_ms:.1f}", f"{r.samples_per_s:.2f}", f"{r.peak_mem_mib:.0f}") for r in rows]
    note = (f"`{config}`: one training step = the recipe's `training_loss` on the first batch of its first training "
            "set (read and collated as training reads it), backward, AdamW. Peak MiB: CUDA allocator peak on a GPU, "
            "peak RSS of a fresh process on the CPU.")
    return markdown_table(headers, table, right_align_from=4) + "\n\n" + note + "\n"
