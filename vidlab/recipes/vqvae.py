"""A VQ-VAE frame tokenizer (`vidlab.models.vq_tokenizer`) trained on the frames VIMPAC tokenizes: the stand-in for
the DALL-E dVAE that lets the whole VIMPAC system run with no downloads.

- Data: the videos of `data.train` (any labelled or unlabelled vidlab format; labels are ignored), cut as the
  official video2token cuts them (`data.fps`, centre crop of `data.frame_size` at that short side,
  `vidlab.data.video_tokens`); each sample is `data.frames_per_video` frames of one video drawn at random.
- Loss: reconstruction MSE + codebook loss + beta x commitment loss (logged as `recon` and `vq`).
- Evaluation (`data.val` / `data.test`, the middle frame of each video): reconstruction MSE and PSNR (frames in
  [-1, 1], peak-to-peak 2), the codes used and the perplexity of their distribution.
- The final model folder (`RUN/I-STAGE/model`) is what `vidlab tokenize --tokenizer` and the VIMPAC recipe's
  `data.tokenizer` take.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import MISSING, DictConfig
from torch import Tensor, nn
from torch.utils.data import Dataset

from vidlab.data.datasets import SharedEpoch, sample_rng
from vidlab.data.formats import MediaRecord
from vidlab.data.token_store import pretrain_spec
from vidlab.data.video_tokens import TokenFrameSpec, normalize_frames, token_frames
from vidlab.engine.config import DataConfig, EvalConfig, TrainConfig
from vidlab.engine.data import TrainSet
from vidlab.engine.recipe import EvalContext, EvalSet, Gather, Recipe, register_recipe
from vidlab.errors import ConfigError
from vidlab.models.factory import create_model_with_report, resolve_model_config
from vidlab.models.vq_tokenizer import FAMILY


@dataclass
class VideoSourceConfig:
    annotations: str = MISSING  # relative to data.root
    format: str = "evl"
    media_root: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class VqDataConfig(DataConfig):
    train: VideoSourceConfig | None = None
    val: VideoSourceConfig | None = None
    test: VideoSourceConfig | None = None
    fps: float = 2.0  # frames per second, as video2token keeps them
    frame_size: int = 128  # short side and centre crop
    frames_per_video: int = 4  # frames of one video per sample
    batch_size: int = 16  # videos per global batch
    backend: str | None = None


@dataclass
class VqTrainConfig(TrainConfig):
    recipe: str = "vqvae"
    model: dict[str, Any] = field(default_factory=lambda: {"base": "vqvae-tiny"})
    data: VqDataConfig = field(default_factory=VqDataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


class VideoFrames(Dataset):
    """`count` random frames (train) or the middle frame (eval) of each video, cut by `spec`, in [-1, 1]."""

    def __init__(self, records: list[MediaRecord], spec: TokenFrameSpec, count: int, train: bool, seed: int, backend: str | None):
        self.records, self.spec, self.count, self.train, self.seed, self.backend = records, spec, count, train, seed, backend
        self._epoch = SharedEpoch()

    def set_epoch(self, epoch: int) -> None:
        self._epoch.set(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        frames = token_frames(self.records[index].path, self.spec, backend=self.backend)
        if self.train:
            rng, _ = sample_rng(self.seed, self._epoch.get(), index)
            picked = torch.from_numpy(rng.integers(0, len(frames), self.count))
        else:
            picked = torch.tensor([len(frames) // 2])
        return {"frames": normalize_frames(frames[picked]), "index": index}


def collate_frames(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {"frames": torch.cat([s["frames"] for s in samples]), "index": torch.tensor([s["index"] for s in samples])}


@register_recipe
class VqvaeRecipe(Recipe):
    name = "vqvae"
    config_class = VqTrainConfig
    default_monitor = "val/mse"
    minimums = {"data.batch_size": 1, "data.frames_per_video": 1, "data.frame_size": 8}

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        self._records: dict[str, list[MediaRecord]] = {}

    def model_config(self) -> DictConfig:
        return resolve_model_config(self.cfg.model, FAMILY)

    def build_model(self, init_from: str | Path | Mapping[str, Tensor] | None) -> tuple[nn.Module, DictConfig]:
        created = create_model_with_report(self.model_config(), checkpoint=init_from)
        return created.model, created.config

    def records(self, split: str) -> list[MediaRecord]:
        if split not in self._records:
            self._records[split] = self.read_records(self.cfg.data[split], f"data.{split}")
        return self._records[split]

    def _dataset(self, split: str, train: bool) -> VideoFrames:
        data = self.cfg.data
        if data.frame_size % int(self.model_config().downsample):
            raise ConfigError(f"data.frame_size={data.frame_size} is not a multiple of the tokenizer's downsample {self.model_config().downsample}")
        spec = pretrain_spec(data.fps, data.frame_size)
        return VideoFrames(self.records(split), spec, data.frames_per_video, train, self.cfg.seed, data.backend)

    def train_sets(self) -> list[TrainSet]:
        if self.cfg.data.train is None:
            raise ConfigError("data.train is not set: the videos whose frames the tokenizer learns")
        return [TrainSet("train", self._dataset("train", True), self.cfg.data.batch_size, collate_frames)]

    def eval_set(self, split: str) -> EvalSet | None:
        if self.eval_source(split) is None:
            return None
        return EvalSet(split, self._dataset(split, False), self.cfg.data.batch_size, collate_frames, self.records(split))

    def training_loss(self, model: nn.Module, batch: dict[str, Any], gather: Gather) -> dict[str, Tensor]:
        out = model(batch["frames"])
        return {"recon": out.loss_recon, "vq": out.loss_vq}

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        out = model(batch["frames"])
        mse = (out.reconstruction - batch["frames"]).pow(2).flatten(1).mean(1)
        return {"mse": mse, "codes": out.codes.flatten(1), "index": batch["index"]}

    def eval_metrics(self, outputs: dict[str, Tensor], context: EvalContext) -> dict[str, float]:
        mse = float(outputs["mse"].mean())
        counts = torch.bincount(outputs["codes"].flatten().long()).double()
        p = counts[counts > 0] / counts.sum()
        return {
            "mse": mse,
            "psnr": 10 * math.log10(4.0 / max(mse, 1e-12)),
            "codes_used": float((counts > 0).sum()),
            "perplexity": float(torch.exp(-(p * p.log()).sum())),
        }

    def describe_eval(self, outputs: dict[str, Tensor], context: EvalContext) -> str:
        data = self.cfg.data
        return (
            f"protocol: VQ-VAE reconstruction, split '{context.split}': the middle frame of {len(outputs['index'])} videos "
            f"({data.fps:g} fps, centre crop {data.frame_size}), frames in [-1, 1]\n"
            "  metrics: mse, psnr (dB, peak-to-peak 2), codes used, perplexity of the code distribution"
        )


__all__ = ["VideoFrames", "VqTrainConfig", "VqvaeRecipe", "collate_frames"]
