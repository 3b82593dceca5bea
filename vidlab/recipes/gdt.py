"""GDT (Patrick et al., 2021, "Multi-modal Self-Supervision from Generalized Data Transformations"): audio-visual
pretraining on the shared engine, with the official views, audio front end and loss.

- Model: `vidlab.models.gdt` (family `gdt`, `modality: audio`): R(2+1)D-18 video encoder, ResNet-9 audio encoder
  on log mel spectrograms, MLP heads, L2-normalised embeddings. `model.base` names a registered config
  (`gdt-r2plus1d-18`, `gdt-tiny`, ...), the other `model` keys override it.
- Views (official `GDTPretrainDataset`): per video two clips at random times tau1 and tau2 (`gdt_shift`:
  `data.num_frames` frames at `data.target_fps`, 30 x 30 fps = 1 s officially; tau2 differs from tau1 whenever the
  video allows, see `vidlab.io.sampling`), each plain and time-reversed: four video views
  `[tau1, tau1 reversed, tau2, tau2 reversed]`, the frames flipped on T BEFORE the augmentation, which is drawn
  anew for every view (`data.transform`, official `gdt`: short side in [128, 160], random crop 112, flip, colour
  jitter 0.4). Audio: `data.audio_seconds` (1) from each clip's first frame, read with `vidlab.io.read_audio` at
  `data.audio_sample_rate` (24 kHz) and turned into a spectrogram by `vidlab.data.audio.gdt_spectrogram`
  (`data.audio_filters` 40, z-normalised), with the volume jitter (gain U(0.9, 1.1)) and SpecAugment
  (`data.spec_augment: medium`) drawn once per clip; the reversed view is the same spectrogram flipped on its
  time axis. A window running past the end of the audio is padded with silence (the official code moves it
  back to end at the end). A file without an audio stream (or one that cannot be read) is a bad sample:
  training replaces it by another (`skip`) and reports it, evaluation stops (`raise`).
- Loss: `vidlab.losses.gdt.gdt_loss` for `loss.hypothesis` 1-9 (official `--hypothesis`, default 1: basecase),
  temperature 0.07, keys detached, negatives from every other process through the engine's gather plus the
  local off-diagonal block, the official list aliasing reproduced unless `loss.official_aliasing: false`. As
  officially, each view pair goes through the model in its own forward pass (`compute_feats`), so BatchNorm
  normalises every view with its own batch statistics.
- Evaluation (not part of the official pretraining; a check that the embeddings pair a clip with its own
  sound): the centred clip of each video (one centre crop) and its audio, audio -> video (`a2v`) and
  video -> audio (`v2a`) retrieval among the split's videos, R@1/5/10 and median rank
  (`vidlab.tasks.retrieval.fit_retrieval_metrics`); chance R@1 is 100 / N %.

Official pretraining (scripts/pretrain_gdt_k400.sh), what the config defaults follow: 30 frames at 30 fps,
112 px, batch 8 per GPU on 64 GPUs (`data.batch_size: 512`, global), 201 epochs, weight decay 1e-5. Not
reproduced, as the engine has neither: the official SGD (momentum 0.9, lr 0.01 x world size after a 10-epoch
warm-up, then constant) - the engine trains with AdamW, so the configs set an AdamW rate instead - and SyncBN
under DDP (each process normalises with its own batch statistics). The fine-tuning on UCF101 / HMDB51 is the
`gdt_finetune` recipe.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from vidlab.data.audio import PCM16_SCALE, SPEC_AUGMENT, gdt_spectrogram, spec_augment
from vidlab.data.datasets import AudioWindow, MediaDataset, collate_samples, sample_rng
from vidlab.data.formats import MediaRecord
from vidlab.data.quality import BAD_SAMPLES_KEY
from vidlab.data.transforms import build_transform, resolve_transform_config
from vidlab.engine import distributed
from vidlab.engine.config import DataConfig, EvalConfig, SourceConfig, TrainConfig
from vidlab.engine.data import TrainSet
from vidlab.engine.recipe import EvalContext, EvalSet, Gather, Recipe, register_recipe
from vidlab.errors import ConfigError
from vidlab.io.sampling import make_sampler
from vidlab.losses.gdt import GDT_TEMPERATURE, HYPOTHESES, gdt_loss, hypothesis_features
from vidlab.models.factory import create_model_with_report, resolve_model_config
from vidlab.models.gdt import FAMILY
from vidlab.tasks.retrieval import CaptionIndex, fit_retrieval_metrics

VIEWS = ("", "R", "2", "2R")  # the order of the four views of a training sample (the loss's feature suffixes)
AUDIO_STREAM = 7  # the audio augmentation's random stream of a sample, beside the clip's own (sample_rng key)
RETRIEVAL_KS = (1, 5, 10)


# ---------------------------------------------------------------------------------------------------------
# Config


@dataclass
class GdtDataConfig(DataConfig):
    train: SourceConfig | None = None  # videos with audio: any vidlab.data.formats reader (captions, labels unused)
    val: SourceConfig | None = None
    test: SourceConfig | None = None
    batch_size: int = 512  # global (official: 8 per GPU x 64 GPUs)
    num_frames: int = 30  # official clip_len
    target_fps: float | None = 30.0  # official target_fps; null: the video's own frame rate
    sampling_rate: int = 1  # frames (at target_fps) between sampled frames
    distinct_shift: bool = True  # tau2 != tau1 whenever the video allows (official: independent draws)
    transform: Any = "gdt"  # a preset name or {preset: gdt, ...}
    audio_seconds: int = 1  # official num_sec
    audio_sample_rate: int = 24000
    audio_filters: int = 40  # official aud_spec_type 1 (GDT); 257 for STiCA
    z_normalize: bool = True
    volume_jitter: float = 0.1  # gain U(1 - x, 1 + x) on the waveform; 0: off
    spec_augment: str | None = "medium"  # mild | medium | heavy | null (official audio_augtype)
    backend: str | None = None  # video decoding backend


@dataclass
class GdtLossConfig:
    hypothesis: int = 1  # 1 basecase, 2 / 3 variant / invariant to reversal, 4 / 5 to shift, 6-9 both
    temperature: float = GDT_TEMPERATURE
    official_aliasing: bool = True  # reproduce the official list aliasing of negatives (docs/deviations.md)


@dataclass
class GdtEvalConfig(EvalConfig):
    batch_size: int = 32


@dataclass
class GdtTrainConfig(TrainConfig):
    recipe: str = "gdt"
    model: dict[str, Any] = field(default_factory=lambda: {"base": "gdt-r2plus1d-18"})
    data: GdtDataConfig = field(default_factory=GdtDataConfig)
    loss: GdtLossConfig = field(default_factory=GdtLossConfig)
    eval: GdtEvalConfig = field(default_factory=GdtEvalConfig)


# ---------------------------------------------------------------------------------------------------------
# Views


class PlainAndReversed:
    """A clip (T, C, H, W) -> (2, T, C, H, W): the transform of the clip, then of the clip reversed on time (the
    official flip happens before the augmentation, which each view draws anew)."""

    def __init__(self, transform: Any):
        self.transform = transform

    def __call__(self, clip: Tensor) -> Tensor:
        return torch.stack([self.transform(clip), self.transform(clip.flip(0))])


@dataclass(frozen=True)
class GdtAudio:
    """The spectrogram front end of the official `get_spec` and its augmentation (training only)."""

    seconds: int = 1
    sample_rate: int = 24000
    filters: int = 40
    z_normalize: bool = True
    volume_jitter: float = 0.1
    spec_augment: str | None = "medium"

    def spectrogram(self, wave: Tensor, rng: Any | None) -> Tensor:
        """(N,) float waveform -> (1, filters, 100 * seconds - 1); `rng` None: no augmentation."""
        gain = float(rng.uniform(1 - self.volume_jitter, 1 + self.volume_jitter)) if rng is not None and self.volume_jitter else 1.0
        spec = gdt_spectrogram(
            wave.numpy() * PCM16_SCALE, 0.0, self.seconds, self.sample_rate, self.filters, self.z_normalize, gain
        )
        return spec_augment(spec, self.spec_augment, rng) if rng is not None and self.spec_augment else spec


class GdtViews(MediaDataset):
    """GDT samples. Training (`train=True`): `video` (4, T, C, H, W) and `audio` (4, 1, F, S), the views in
    `VIEWS` order. Evaluation: the one centred clip, `video` (T, C, H, W) and `audio` (1, F, S)."""

    def __init__(self, records: list[MediaRecord], sampler: Any, transform: Any, *, audio: GdtAudio, train: bool, **kwargs: Any):
        super().__init__(
            records,
            sampler,
            PlainAndReversed(transform) if train else transform,
            audio=AudioWindow(audio.seconds, audio.sample_rate),
            **kwargs,
        )
        self.audio = audio
        self.train = train

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = super().__getitem__(index)
        out = {key: sample[key] for key in ("index", BAD_SAMPLES_KEY)}
        if not self.train:
            return {**out, "video": sample["video"], "audio": self.audio.spectrogram(sample["audio"], None)}
        rng, _ = sample_rng(self.seed, self._epoch.get(), index, AUDIO_STREAM)
        specs = [self.audio.spectrogram(wave, rng) for wave in sample["audio"]]  # tau1, tau2
        out["video"] = sample["video"].flatten(0, 1)  # (2 clips, plain / reversed, ...) -> VIEWS order
        out["audio"] = torch.stack([view for spec in specs for view in (spec, spec.flip(-1))])
        return out


# ---------------------------------------------------------------------------------------------------------
# The recipe


@register_recipe
class GdtRecipe(Recipe):
    name = "gdt"
    config_class = GdtTrainConfig
    default_monitor = None
    minimums = {
        "data.batch_size": 1, "data.num_frames": 1, "data.sampling_rate": 1, "data.audio_seconds": 1,
        "data.audio_sample_rate": 1, "data.audio_filters": 1, "data.volume_jitter": 0, "loss.temperature": 1e-8,
    }

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        data, loss = cfg.data, cfg.loss
        if loss.hypothesis not in HYPOTHESES:
            raise ConfigError(f"loss.hypothesis must be one of 1-9, got {loss.hypothesis!r}")
        if data.spec_augment is not None and data.spec_augment not in SPEC_AUGMENT:
            raise ConfigError(f"data.spec_augment must be one of {', '.join(SPEC_AUGMENT)} or null, got {data.spec_augment!r}")
        if data.volume_jitter >= 1:
            raise ConfigError(f"data.volume_jitter must be in [0, 1), got {data.volume_jitter}")
        self._records: dict[str, list[MediaRecord]] = {}

    # -- model ------------------------------------------------------------------------------------------

    def model_config(self, init_from: str | Path | Mapping[str, Tensor] | None = None) -> DictConfig:
        mc = resolve_model_config(self.cfg.model, FAMILY, start=self.start_weights(init_from))
        if mc.modality != "audio":
            raise ConfigError(f"model.modality={mc.modality!r}: the gdt recipe trains audio-visual GDT (modality: audio)")
        return mc

    def build_model(self, init_from: str | Path | Mapping[str, Tensor] | None) -> tuple[nn.Module, DictConfig]:
        created = create_model_with_report(self.model_config(init_from), checkpoint=init_from)
        return created.model, created.config

    # -- data -------------------------------------------------------------------------------------------

    def records(self, split: str) -> list[MediaRecord]:
        if split not in self._records:
            source = self.cfg.data[split]
            records = [r for r in self.read_records(source, f"data.{split}") if r.kind == "video"]
            if not records:
                raise ConfigError(f"data.{split}: {source.annotations} lists no video (GDT needs videos with audio)")
            self._records[split] = records
        return self._records[split]

    def _audio(self) -> GdtAudio:
        data = self.cfg.data
        return GdtAudio(
            data.audio_seconds, data.audio_sample_rate, data.audio_filters, data.z_normalize, data.volume_jitter, data.spec_augment
        )

    def _transform_spec(self, **fixed: Any) -> dict[str, Any]:
        setting = self.cfg.data.transform
        spec = {"preset": setting} if isinstance(setting, str) else {**setting}
        spec.update(fixed)
        resolve_transform_config(spec)  # a bad option fails now, not in a loader worker
        return spec

    def _dataset(self, split: str, train: bool) -> GdtViews:
        data = self.cfg.data
        clip = {"num_frames": data.num_frames, "sampling_rate": data.sampling_rate, "target_fps": data.target_fps}
        if train:
            sampler = make_sampler("gdt_shift", **clip, distinct=data.distinct_shift)
        else:
            sampler = make_sampler("uniform_views", **clip, num_views=1)
        return GdtViews(
            self.records(split),
            sampler,
            build_transform(self._transform_spec() if train else self._transform_spec(spatial_views=1), train=train),
            audio=self._audio(),
            train=train,
            num_frames=data.num_frames,
            seed=self.cfg.seed,
            bad_samples="skip" if train else "raise",
            backend=data.backend,
        )

    def train_sets(self) -> list[TrainSet]:
        if self.cfg.data.train is None:
            raise ConfigError("data.train is not set (an annotation file of videos with audio)")
        return [TrainSet("train", self._dataset("train", train=True), self.cfg.data.batch_size, collate_samples)]

    def eval_set(self, split: str) -> EvalSet | None:
        if self.eval_source(split) is None:
            return None
        return EvalSet(split, self._dataset(split, train=False), self.cfg.eval.batch_size, collate_samples, self.records(split))

    # -- steps ------------------------------------------------------------------------------------------

    def features(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        """The embeddings of the views the hypothesis compares (`v`, `a`, `vR`, ...), one forward pass per view."""
        needed = {name[1:] for name in hypothesis_features(self.cfg.loss.hypothesis)}
        features = {}
        for position, view in enumerate(VIEWS):
            if view in needed:
                video, audio = model(batch["video"][:, position], batch["audio"][:, position])
                features[f"v{view}"], features[f"a{view}"] = video.float(), audio.float()
        return features

    def training_loss(self, model: nn.Module, batch: dict[str, Any], gather: Gather) -> Tensor:
        loss = self.cfg.loss
        result = gdt_loss(
            self.features(model, batch),
            loss.hypothesis,
            temperature=loss.temperature,
            gather=gather,
            rank=distributed.world()[0],
            official_aliasing=loss.official_aliasing,
        )
        return result.loss

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        return {
            "embeds_video": model.encode_video(batch["video"], normalize=True).float(),
            "embeds_audio": model.encode_audio(batch["audio"], normalize=True).float(),
            "index": batch["index"],
        }

    def eval_metrics(self, outputs: dict[str, Tensor], context: EvalContext) -> dict[str, float]:
        num = len(outputs["index"])
        pairs = CaptionIndex.from_text_to_video(torch.arange(num), num)  # audio clip i belongs to video i
        result = fit_retrieval_metrics((outputs["embeds_audio"], outputs["embeds_video"]), pairs)
        metrics: dict[str, float] = {}
        for direction, name in (("t2v", "a2v"), ("v2t", "v2a")):
            metrics.update({f"{name}_R{k}": result[direction][f"R{k}"] for k in RETRIEVAL_KS})
            metrics[f"{name}_MedR"] = result[direction]["MedR"]
        return metrics

    def describe_eval(self, outputs: dict[str, Tensor], context: EvalContext) -> str:
        data, num = self.cfg.data, len(outputs["index"])
        return "\n".join(
            [
                f"protocol: GDT audio-visual retrieval, split '{context.split}': {num} videos",
                (
                    f"  each video: its centred clip of {data.num_frames} frames (centre crop) and the "
                    f"{data.audio_seconds} s of audio from the clip's first frame ({data.audio_filters}-filter log mel "
                    "spectrogram, no augmentation)"
                ),
                "  a2v: each audio queries all videos; v2a: each video queries all audio clips; cosine of the "
                "L2-normalised embeddings",
                f"  metrics: R@1/5/10 in %, median rank (chance R@1 {100 / max(num, 1):.1f} %)",
            ]
        )


__all__ = ["GdtAudio", "GdtRecipe", "GdtTrainConfig", "GdtViews", "PlainAndReversed", "VIEWS"]
