"""Golden checks of Frozen in Time against outputs of the official code: a model case (official constructor
`kwargs`, like `fit_spacetime`) or a curriculum case (a `source_model` loaded into a `target_model` of another
frame count, like `fit_curriculum`), told apart by the case json, never by the case name.

Each check builds the model from the official constructor arguments recorded in the case json through
`fit_config_from_official`, loads the weights through `create_model` twice - (a) the case's
`state_dict.*` tensors as an in-memory official checkpoint, (b) the official-format file under
`files/` - and compares every `output.*` / `debug.*` tensor of the case. `check_fit` is the harness
entry of the `fit` family.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor

from vidlab.golden import GoldenCase, GoldenMismatch
from vidlab.losses import cosine_similarity_matrix
from vidlab.models import FrozenInTime, create_model, fit_config_from_official
from vidlab.models.factory import apply_overrides

DEFAULT_ATOL, DEFAULT_RTOL = 1e-5, 1e-4
_KEPT_VIT_DEFAULTS = ("mlp_ratio", "qkv_bias", "qk_scale")


def _tolerance(case: Mapping[str, Any]) -> tuple[float, float]:
    suggested = case.get("tolerance", {}).get("suggested", {})
    return float(suggested.get("atol", DEFAULT_ATOL)), float(suggested.get("rtol", DEFAULT_RTOL))


def _official_state_dict(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k[len("state_dict.") :]: v for k, v in tensors.items() if k.startswith("state_dict.")}


def _official_file(case: Mapping[str, Any], golden_dir: Path) -> Path:
    """The case's official-format checkpoint, as listed in files/files.json."""
    name = case["case"]
    listing = golden_dir / "files" / "files.json"
    if listing.is_file():
        entries = json.loads(listing.read_text())["cases"].get(name, {})
        for entry in entries.values():
            if entry.get("path", "").endswith(".pth"):
                return golden_dir / entry["path"]
    return golden_dir / "files" / name / "model_best.pth"


def _compare(name: str, got: Tensor, want: Tensor, atol: float, rtol: float, label: str) -> None:
    if tuple(got.shape) != tuple(want.shape):
        raise GoldenMismatch(f"{label}: {name} has shape {tuple(got.shape)}, golden {tuple(want.shape)}")
    if not torch.allclose(got.float(), want.float(), atol=atol, rtol=rtol):
        diff = (got.float() - want.float()).abs().max().item()
        raise GoldenMismatch(f"{label}: {name} differs from golden (max abs diff {diff:.3g}, atol {atol}, rtol {rtol})")


def _check_all(
    tensors: Mapping[str, Tensor],
    computed: Mapping[str, Callable[[], Tensor]],
    atol: float,
    rtol: float,
    label: str,
) -> None:
    """Every output./debug. tensor of the case must have a vidlab counterpart and match it."""
    expected = [k for k in tensors if k.startswith(("output.", "debug."))]
    missing = [k for k in expected if k not in computed]
    if missing:
        raise GoldenMismatch(f"{label}: no vidlab counterpart for golden tensors {missing}")
    with torch.no_grad():
        for name in expected:
            _compare(name, computed[name](), tensors[name], atol, rtol, label)


# `...video_embed_first3frames` / `..._first1frame`: the video embedding of the input's first N frames
_FIRST_FRAMES = re.compile(r"video_embed_first(\d+)frames?$")


def _first_frames_outputs(
    model: FrozenInTime, video: Tensor, names: list[str], prefix: str
) -> dict[str, Callable[[], Tensor]]:
    """The case's `PREFIX...video_embed_firstNframe(s)` tensors, whatever N the case chose."""
    computed = {}
    for name in names:
        match = _FIRST_FRAMES.search(name) if name.startswith(prefix) else None
        if match:
            computed[name] = lambda m=model, n=int(match.group(1)): m.encode_video(video[:, :n])
    return computed


def _spacetime_outputs(model: FrozenInTime, tensors: Mapping[str, Tensor]) -> dict[str, Callable[[], Tensor]]:
    video, ids, mask = tensors["input.video"], tensors["input.text_input_ids"], tensors["input.text_attention_mask"]
    computed = {
        "output.text_embed": lambda: model.encode_text(ids, mask),
        "output.video_embed": lambda: model.encode_video(video),
        "output.sim_text_video": lambda: cosine_similarity_matrix(
            model.encode_text(ids, mask), model.encode_video(video)
        ),
        "debug.video_tokens_after_final_norm": lambda: model.video_encoder.forward_features(video),
        "debug.video_cls_before_proj": lambda: model.video_encoder(video),
        "debug.text_cls_before_proj": lambda: model.text_encoder(ids, mask),
    }
    return {**computed, **_first_frames_outputs(model, video, list(tensors), "output.video_embed_first")}


def _spacetime_config(case: Mapping[str, Any]) -> DictConfig:
    constructor = case["constructor"]
    tiny = constructor.get("tiny_overrides", {})
    vit_kwargs = dict(tiny.get("SpaceTimeTransformer_kwargs_added", {}))
    kept = tiny.get("SpaceTimeTransformer_defaults_kept", {})
    vit_kwargs.update({k: kept[k] for k in _KEPT_VIT_DEFAULTS if k in kept})
    text_model = tiny.get("text_model", {})
    return fit_config_from_official(
        constructor["kwargs"],
        vit_kwargs=vit_kwargs,
        text_config=text_model.get("config"),
        text_attn_implementation=text_model.get("attn_implementation"),
    )


def check_fit_spacetime(case: dict, tensors: dict[str, Tensor], golden_dir: Path) -> None:
    """SpaceTimeTransformer + DistilBERT + projections: embeddings, similarity, fewer frames, intermediates."""
    atol, rtol = _tolerance(case)
    cfg = _spacetime_config(case)
    sources = {
        "state_dict tensors": {"state_dict": _official_state_dict(tensors)},
        "official file": _official_file(case, Path(golden_dir)),
    }
    for label, checkpoint in sources.items():
        model = create_model(cfg, checkpoint=checkpoint)
        _check_all(tensors, _spacetime_outputs(model, tensors), atol, rtol, f"{case.get('case', 'fit')} ({label})")


def _curriculum_config(constructor: Mapping[str, Any], params: Mapping[str, Any]) -> DictConfig:
    source = constructor["source_model"]
    kwargs = {
        "video_params": params["video_params"],
        "text_params": source["text_params"],
        "projection_dim": source.get("projection_dim", 256),
    }
    return fit_config_from_official(
        kwargs, vit_kwargs=source.get("tiny_overrides"), text_config=source.get("text_config")
    )


def check_fit_curriculum(case: dict, tensors: dict[str, Tensor], golden_dir: Path) -> None:
    """A checkpoint of one frame count loaded into a model of another, with each temporal inflation mode: the
    `output.<fix>.*` tensors come from the target model, `output.<N>frame_model.*` from the source model."""
    atol, rtol = _tolerance(case)
    constructor = case["constructor"]
    source_cfg = _curriculum_config(constructor, constructor["source_model"])
    target_cfg = _curriculum_config(constructor, constructor["target_model"])
    video, ids, mask = tensors["input.video"], tensors["input.text_input_ids"], tensors["input.text_attention_mask"]
    groups = {k.split(".")[1] for k in tensors if k.startswith("output.")}
    source_groups = sorted(g for g in groups if g.endswith("_model"))
    fixes = sorted(groups - set(source_groups))
    sources = {
        "state_dict tensors": {"state_dict": _official_state_dict(tensors)},
        "official file": _official_file(case, Path(golden_dir)),
    }
    for label, checkpoint in sources.items():
        source_model = create_model(source_cfg, checkpoint=checkpoint)
        computed: dict[str, Callable[[], Tensor]] = {}
        for group in source_groups:
            computed.update(_first_frames_outputs(source_model, video, list(tensors), f"output.{group}."))
        for fix in fixes:
            model = create_model(apply_overrides(target_cfg, {"init.temporal_inflation": fix}), checkpoint=checkpoint)
            computed[f"output.{fix}.temporal_embed_after_load"] = lambda m=model: m.video_encoder.temporal_embed
            computed[f"output.{fix}.video_embed"] = lambda m=model: m.encode_video(video)
            computed[f"output.{fix}.text_embed"] = lambda m=model: m.encode_text(ids, mask)
        _check_all(tensors, computed, atol, rtol, f"{case.get('case', 'fit')} ({label})")


def check_fit(case: GoldenCase) -> None:
    """Golden-harness entry for the `fit` family: a curriculum case (source and target models) or a model case."""
    constructor = case.spec.get("constructor", {})
    if "source_model" in constructor and "target_model" in constructor:
        check = check_fit_curriculum
    elif "kwargs" in constructor:
        check = check_fit_spacetime
    else:
        raise GoldenMismatch(
            f"golden case {case.name!r}: its constructor has neither 'kwargs' (a FiT model) nor "
            "'source_model' + 'target_model' (a frame curriculum)"
        )
    check(case.spec, case.tensors(), case.folder)
