"""Clip transforms: uint8 ``(T, C, H, W)`` frames in, normalised float32 out, one random draw per clip.

Every frame of a clip must get the same crop, flip and colour change, or the model sees jitter that is not in
the video. torchvision's transforms v2 treat a ``(T, C, H, W)`` tensor as a batch of images and draw their
parameters once per call, so the spatial and colour steps are v2 transforms applied to the whole clip;
`ClipRandAugment` draws its ops the same way. Random draws use torch's generator: seed it
(``torch.manual_seed``) for reproducible clips; DataLoader workers seed it per worker.

`build_transform(preset_or_config, train)` builds a system's official train / test pipeline:

- ``fit``: RandomResizedCrop(224, scale (0.5, 1)) + hflip / Resize(256) + CenterCrop(256) + Resize(224).
- ``singularity``: RandomResizedCrop(224, (0.5, 1), bicubic) + hflip / Resize((224, 224)) bicubic, a squash.
- ``evl``: RandAugment ``rand-m7-n4-mstd0.5-inc1`` + RandomResizedCrop(224, (0.08, 1)), no flip (the official
  ``mirror`` option is never applied) / short side 224 + centre crop, or 3 crops with ``spatial_views=3``
  (the 16- and 32-frame scripts).
- ``vimpac``: short side in [128, 160] + random crop 128 + hflip / short side 128 + 3 crops
  (top, centre, bottom).
- ``gdt``: short side in [128, 160] + random crop 112 + hflip + colour jitter 0.4 (always) / short side
  128 + 3 crops of 112.
- ``stica``: RandomResizedCrop(112, (0.14, 1)) + hflip + colour jitter 0.4 (p 0.8) + grayscale (p 0.2) +
  Gaussian blur (p 0.5) / as gdt.

Normalisation: fit imagenet, singularity and vimpac 'half' (0.5/0.5), evl clip, gdt and stica kinetics
(0.45/0.225). A mapping overrides any `TransformConfig` field over a preset:
``{"preset": "evl", "spatial_views": 3}``.

Fidelity notes: resizes run on float frames without antialiasing (``antialias=False``), as the official
pipelines resize tensors; VIMPAC's 12 pre-extracted crops (2 scales x 3 positions x 2 flips) are approximated
by a random short side and a random crop; STiCA normalises before its colour jitter, vidlab after; the
single centre crop rounds as torchvision does (EVL floors odd margins, a 1-pixel shift at most); the
RandAugment geometric ops interpolate bilinearly (torch tensors have no bicubic affine warp).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping

import torch
from omegaconf import DictConfig, OmegaConf
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

from vidlab.errors import ConfigError, VidlabError

NORMALIZATION: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "kinetics": ((0.45, 0.45, 0.45), (0.225, 0.225, 0.225)),
}

INTERPOLATION = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
}


class TransformError(VidlabError, ValueError):
    """A clip cannot go through the pipeline (wrong dtype or layout, frames smaller than the crop)."""


@dataclass(frozen=True)
class TransformConfig:
    """Every knob of the clip pipeline; `PRESETS` fill it with each system's official values.

    ``size`` is the output side. Training crops are ``train_crop='random_resized'`` (RandomResizedCrop with
    ``crop_scale`` / ``crop_ratio``) or ``'scale_jitter'`` (short side uniform in ``jitter_short_side``,
    ends included, then a random ``size`` crop). Evaluation resizes the short side to ``test_short_side``
    (default ``size``), takes ``spatial_views`` (1 or 3) crops of ``test_crop`` (default ``size``) and
    resizes them to ``size``; ``test_resize='squash'`` resizes straight to size x size instead.
    """

    size: int = 224
    norm: str = "imagenet"
    interpolation: str = "bilinear"
    antialias: bool = False
    train_crop: str = "random_resized"
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    jitter_short_side: tuple[int, int] = (256, 320)
    hflip: float = 0.5
    rand_augment: str | None = None
    color_jitter: float = 0.0
    color_jitter_p: float = 1.0
    grayscale_p: float = 0.0
    blur_p: float = 0.0
    test_resize: str = "short_side"
    test_short_side: int | None = None
    test_crop: int | None = None
    spatial_views: int = 1

    def __post_init__(self) -> None:
        for name in ("size", "test_short_side", "test_crop"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"transform: {name} must be a positive integer, got {value!r}")
        _check_choice("norm", self.norm, NORMALIZATION)
        _check_choice("interpolation", self.interpolation, INTERPOLATION)
        _check_choice("train_crop", self.train_crop, ("random_resized", "scale_jitter"))
        _check_choice("test_resize", self.test_resize, ("short_side", "squash"))
        _check_choice("spatial_views", self.spatial_views, (1, 3))
        _check_choice("antialias", self.antialias, (False, True))
        for name in ("hflip", "color_jitter_p", "grayscale_p", "blur_p", "color_jitter"):
            _check_number(name, getattr(self, name))
        for name in ("hflip", "color_jitter_p", "grayscale_p", "blur_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"transform: {name} is a probability in [0, 1], got {getattr(self, name)!r}")
        if self.color_jitter < 0:
            raise ConfigError(f"transform: color_jitter must be >= 0, got {self.color_jitter!r}")
        for name in ("crop_scale", "crop_ratio", "jitter_short_side"):
            low, high = _pair(name, getattr(self, name))
            if not 0 < low <= high:
                raise ConfigError(f"transform: {name} must be a range (low, high) with 0 < low <= high")
        if self.rand_augment is not None:
            ClipRandAugment.from_policy(self.rand_augment)


PRESETS: dict[str, dict[str, Any]] = {
    "fit": {"norm": "imagenet", "crop_scale": (0.5, 1.0), "test_short_side": 256, "test_crop": 256},
    "singularity": {"norm": "half", "interpolation": "bicubic", "crop_scale": (0.5, 1.0), "test_resize": "squash"},
    "evl": {"norm": "clip", "hflip": 0.0, "rand_augment": "rand-m7-n4-mstd0.5-inc1"},
    "vimpac": {
        "size": 128, "norm": "half", "train_crop": "scale_jitter", "jitter_short_side": (128, 160),
        "spatial_views": 3,
    },
    "gdt": {
        "size": 112, "norm": "kinetics", "train_crop": "scale_jitter", "jitter_short_side": (128, 160),
        "color_jitter": 0.4, "test_short_side": 128, "spatial_views": 3,
    },
    "stica": {
        "size": 112, "norm": "kinetics", "crop_scale": (0.14, 1.0), "color_jitter": 0.4, "color_jitter_p": 0.8,
        "grayscale_p": 0.2, "blur_p": 0.5, "test_short_side": 128, "spatial_views": 3,
    },
}


class VideoTransform:
    """A built pipeline: uint8 ``(T, C, H, W)`` in; float32 ``(T, C, H, W)``, or ``(V, T, C, H, W)`` for V
    spatial views, out."""

    def __init__(self, config: TransformConfig, train: bool, pipeline: v2.Compose):
        self.config = config
        self.train = train
        self.pipeline = pipeline

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        if not isinstance(frames, torch.Tensor):
            raise TransformError(f"expected uint8 frames of shape (T, C, H, W), got a {type(frames).__name__}")
        if frames.dtype != torch.uint8 or frames.ndim != 4:
            raise TransformError(
                f"expected uint8 frames of shape (T, C, H, W), got {frames.dtype} of shape {tuple(frames.shape)}"
            )
        if frames.shape[1] != 3:
            raise TransformError(f"expected 3 colour channels in dim 1 of (T, C, H, W), got {tuple(frames.shape)}")
        return self.pipeline(frames)

    def __repr__(self) -> str:
        return f"VideoTransform(train={self.train}, {self.pipeline})"


def resolve_transform_config(preset_or_config: str | Mapping[str, Any] | TransformConfig) -> TransformConfig:
    """A `TransformConfig` from a preset name, a mapping (``preset`` plus field overrides) or a config."""
    if isinstance(preset_or_config, TransformConfig):
        return preset_or_config
    if isinstance(preset_or_config, str):
        preset_or_config = {"preset": preset_or_config}
    if isinstance(preset_or_config, DictConfig):
        preset_or_config = OmegaConf.to_container(preset_or_config, resolve=True)  # type: ignore[assignment]
    if not isinstance(preset_or_config, Mapping):
        raise ConfigError(f"transform config must be a preset name or a mapping, got {type(preset_or_config).__name__}")
    overrides = dict(preset_or_config)
    preset = overrides.pop("preset", None)
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"unknown transform preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    field_names = {f.name for f in fields(TransformConfig)}
    unknown = sorted(set(overrides) - field_names)
    if unknown:
        raise ConfigError(f"unknown transform option(s) {', '.join(unknown)}; known: {', '.join(sorted(field_names))}")
    values = {**PRESETS.get(preset, {}), **overrides}
    for name in ("crop_scale", "crop_ratio", "jitter_short_side"):
        if name in values:
            values[name] = _pair(name, values[name])
    return TransformConfig(**values)


def build_transform(preset_or_config: str | Mapping[str, Any] | TransformConfig, train: bool) -> VideoTransform:
    """The training (random) or evaluation (deterministic) pipeline of a preset or config."""
    config = resolve_transform_config(preset_or_config)
    steps = _train_steps(config) if train else _test_steps(config)
    mean, std = NORMALIZATION[config.norm]
    return VideoTransform(config, train, v2.Compose([*steps, v2.Normalize(mean, std)]))


def _train_steps(config: TransformConfig) -> list[Callable]:
    interpolation = INTERPOLATION[config.interpolation]
    steps: list[Callable] = []
    if config.rand_augment is not None:
        steps.append(ClipRandAugment.from_policy(config.rand_augment))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if config.train_crop == "random_resized":
        steps.append(v2.RandomResizedCrop(
            config.size, config.crop_scale, config.crop_ratio, interpolation, antialias=config.antialias,
        ))
    else:
        low, high = config.jitter_short_side
        steps += [
            v2.RandomResize(low, high + 1, interpolation, antialias=config.antialias),
            v2.RandomCrop(config.size),
        ]
    if config.hflip > 0:
        steps.append(v2.RandomHorizontalFlip(config.hflip))
    if config.color_jitter > 0:
        strength = config.color_jitter
        steps.append(v2.RandomApply([v2.ColorJitter(strength, strength, strength)], p=config.color_jitter_p))
    if config.grayscale_p > 0:
        steps.append(v2.RandomGrayscale(config.grayscale_p))
    if config.blur_p > 0:
        kernel = max(3, (config.size // 10) | 1)  # SimCLR-style: an odd kernel of ~10% of the crop
        steps.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=config.blur_p))
    return steps


def _test_steps(config: TransformConfig) -> list[Callable]:
    interpolation = INTERPOLATION[config.interpolation]
    steps: list[Callable] = [v2.ToDtype(torch.float32, scale=True)]
    if config.test_resize == "squash":
        steps.append(v2.Resize((config.size, config.size), interpolation, antialias=config.antialias))
        return steps
    crop = config.test_crop or config.size
    steps.append(v2.Resize(config.test_short_side or config.size, interpolation, antialias=config.antialias))
    steps.append(ThreeCrop(crop) if config.spatial_views == 3 else v2.CenterCrop(crop))
    if crop != config.size:
        steps.append(v2.Resize((config.size, config.size), interpolation, antialias=config.antialias))
    return steps


class ThreeCrop:
    """EVL / SlowFast multi-view testing: three squares along the long side (left, centre, right; top, centre,
    bottom for portrait frames) at offsets 0, margin // 2, margin, stacked as views ``(3, T, C, size, size)``."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        height, width = frames.shape[-2:]
        size = self.size
        if min(height, width) < size:
            raise TransformError(f"frames of {height}x{width} are smaller than the {size}-pixel crop")
        if height > width:
            left, margin = (width - size) // 2, height - size
            views = [frames[..., top: top + size, left: left + size] for top in (0, margin // 2, margin)]
        else:
            top, margin = (height - size) // 2, width - size
            views = [frames[..., top: top + size, left: left + size] for left in (0, margin // 2, margin)]
        return torch.stack(views)

    def __repr__(self) -> str:
        return f"ThreeCrop(size={self.size})"


_MAX_LEVEL = 10.0
_FILL = [128.0, 128.0, 128.0]


def _random_sign(value: float) -> float:
    return -value if torch.rand(()).item() > 0.5 else value


def _solarize(frames: torch.Tensor, threshold: int) -> torch.Tensor:
    return frames if threshold > 255 else F.solarize(frames, threshold)


def _solarize_add(frames: torch.Tensor, addition: int) -> torch.Tensor:
    brightened = (frames.to(torch.int16) + addition).clamp(max=255).to(torch.uint8)
    return torch.where(frames < 128, brightened, frames)


def _warp(frames: torch.Tensor, shear: tuple[float, float] = (0.0, 0.0), shift: tuple[float, float] = (0.0, 0.0)):
    """PIL's affine convention, anchored at the top-left corner: output (x, y) reads input
    (x + shear_x * y + shift_x, y + shear_y * x + shift_y)."""
    return F.affine(
        frames, angle=0.0, translate=[-shift[0], -shift[1]], scale=1.0,
        shear=[math.degrees(math.atan(shear[0])), math.degrees(math.atan(shear[1]))],
        interpolation=InterpolationMode.BILINEAR, fill=_FILL, center=[0.0, 0.0],
    )


def _level(level: float, maximum: float) -> float:
    return level / _MAX_LEVEL * maximum


# timm / SlowFast RandAugment ops: level in [0, 10] -> the op's argument, applied to the whole clip.
_RAND_OPS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "AutoContrast": lambda x, level: F.autocontrast(x),
    "Equalize": lambda x, level: F.equalize(x),
    "Invert": lambda x, level: F.invert(x),
    "Rotate": lambda x, level: F.rotate(
        x, _random_sign(_level(level, 30.0)), interpolation=InterpolationMode.BILINEAR, fill=_FILL
    ),
    "Posterize": lambda x, level: F.posterize(x, int(_level(level, 4))),
    "PosterizeIncreasing": lambda x, level: F.posterize(x, 4 - int(_level(level, 4))),
    "Solarize": lambda x, level: _solarize(x, int(_level(level, 256))),
    "SolarizeIncreasing": lambda x, level: _solarize(x, 256 - int(_level(level, 256))),
    "SolarizeAdd": lambda x, level: _solarize_add(x, int(_level(level, 110))),
    "Color": lambda x, level: F.adjust_saturation(x, _level(level, 1.8) + 0.1),
    "ColorIncreasing": lambda x, level: F.adjust_saturation(x, 1.0 + _random_sign(_level(level, 0.9))),
    "Contrast": lambda x, level: F.adjust_contrast(x, _level(level, 1.8) + 0.1),
    "ContrastIncreasing": lambda x, level: F.adjust_contrast(x, 1.0 + _random_sign(_level(level, 0.9))),
    "Brightness": lambda x, level: F.adjust_brightness(x, _level(level, 1.8) + 0.1),
    "BrightnessIncreasing": lambda x, level: F.adjust_brightness(x, 1.0 + _random_sign(_level(level, 0.9))),
    "Sharpness": lambda x, level: F.adjust_sharpness(x, _level(level, 1.8) + 0.1),
    "SharpnessIncreasing": lambda x, level: F.adjust_sharpness(x, 1.0 + _random_sign(_level(level, 0.9))),
    "ShearX": lambda x, level: _warp(x, shear=(_random_sign(_level(level, 0.3)), 0.0)),
    "ShearY": lambda x, level: _warp(x, shear=(0.0, _random_sign(_level(level, 0.3)))),
    "TranslateXRel": lambda x, level: _warp(x, shift=(_random_sign(_level(level, 0.45)) * x.shape[-1], 0.0)),
    "TranslateYRel": lambda x, level: _warp(x, shift=(0.0, _random_sign(_level(level, 0.45)) * x.shape[-2])),
}
_RAND_OP_NAMES = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color", "Contrast",
    "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
)
_RAND_INCREASING_OP_NAMES = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd",
    "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY",
    "TranslateXRel", "TranslateYRel",
)


class ClipRandAugment:
    """RandAugment with timm / SlowFast semantics, one draw per clip (the same ops and levels on every frame).

    Per call: ``num_ops`` ops drawn with replacement; each runs with probability ``prob`` at a level drawn
    from N(magnitude, magnitude_std) clipped to [0, 10]; signed ops flip their sign with probability 1/2.
    ``increasing`` selects the ops whose severity grows with the level. Works on uint8 frames.
    """

    def __init__(
        self, num_ops: int = 2, magnitude: float = 10.0, magnitude_std: float = 0.0,
        increasing: bool = False, prob: float = 0.5,
    ):
        if num_ops < 1 or not 0 <= magnitude <= _MAX_LEVEL or magnitude_std < 0 or not 0 <= prob <= 1:
            raise ConfigError(
                f"RandAugment: need num_ops >= 1, magnitude in [0, 10], magnitude_std >= 0 and prob in [0, 1]; "
                f"got {num_ops}, {magnitude}, {magnitude_std}, {prob}"
            )
        self.num_ops = num_ops
        self.magnitude = magnitude
        self.magnitude_std = magnitude_std
        self.prob = prob
        self.op_names = _RAND_INCREASING_OP_NAMES if increasing else _RAND_OP_NAMES

    @classmethod
    def from_policy(cls, policy: str) -> ClipRandAugment:
        """Parse a timm policy string such as ``rand-m7-n4-mstd0.5-inc1`` (EVL's)."""
        parts = policy.split("-")
        if parts[0] != "rand":
            raise ConfigError(f"RandAugment policy {policy!r} must start with 'rand-'")
        options: dict[str, Any] = {}
        keys = {"m": ("magnitude", float), "n": ("num_ops", int), "mstd": ("magnitude_std", float),
                "inc": ("increasing", lambda v: bool(int(v)))}
        for part in parts[1:]:
            match = re.fullmatch(r"([a-z]+)(\d+(?:\.\d+)?)", part)
            if match is None or match.group(1) not in keys:
                raise ConfigError(f"RandAugment policy {policy!r}: cannot read {part!r} (known: m, n, mstd, inc)")
            name, convert = keys[match.group(1)]
            try:
                options[name] = convert(match.group(2))
            except ValueError:
                raise ConfigError(f"RandAugment policy {policy!r}: bad value in {part!r}") from None
        return cls(**options)

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        for op_index in torch.randint(len(self.op_names), (self.num_ops,)).tolist():
            if torch.rand(()).item() > self.prob:
                continue
            level = self.magnitude
            if self.magnitude_std > 0:
                level += self.magnitude_std * torch.randn(()).item()
            frames = _RAND_OPS[self.op_names[op_index]](frames, min(_MAX_LEVEL, max(0.0, level)))
        return frames

    def __repr__(self) -> str:
        return (f"ClipRandAugment(num_ops={self.num_ops}, magnitude={self.magnitude}, "
                f"magnitude_std={self.magnitude_std}, ops={len(self.op_names)})")


def _check_choice(name: str, value: Any, choices: Any) -> None:
    if value not in choices:
        raise ConfigError(f"transform: {name} must be one of {', '.join(map(str, choices))}, got {value!r}")


def _pair(name: str, value: Any) -> tuple:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise ConfigError(f"transform: {name} must be a pair (low, high), got {value!r}")
    for item in value:
        _check_number(name, item)
    return tuple(value)


def _check_number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"transform: {name} must be a number, got {value!r}")
