"""Golden checks of CLIP and EVL against outputs of the official code (cases `clip_visual`, `evl`).

Each check builds the model from the official constructor arguments in the case json, loads the weights
through the public API from every source the case offers - the case's `state_dict.*` tensors in memory
and the official-format files under `files/<case>/` (OpenAI TorchScript archive, plain state dict, EVL
trainer checkpoint) - and compares every `output.*` / `debug.*` tensor of the case, collecting all
differences before failing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor

from vidlab.golden import GoldenCase, GoldenError, Mismatches
from vidlab.models import create_model
from vidlab.models.clip_weights import clip_config_from_official
from vidlab.models.evl import EVL, convert_official_evl_checkpoint, evl_config_from_official
from vidlab.models.factory import apply_overrides

DEFAULT_ATOL, DEFAULT_RTOL = 1e-5, 1e-4
CONVERTED = "debug.backbone_converted."


def _strip(tensors: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def _case_files(case: GoldenCase) -> dict[str, Path]:
    """File name -> path of the case's official-format files listed in files/files.json."""
    listing = case.folder / "files" / "files.json"
    if not listing.is_file():
        raise GoldenError(f"{listing}: missing (it lists the official-format files of each case)")
    entries = json.loads(listing.read_text())["cases"].get(case.name, {})
    return {name: case.folder / entry["path"] for name, entry in entries.items()}


def _compare_all(
    found: Mismatches,
    tensors: Mapping[str, Tensor],
    computed: Mapping[str, Callable[[], Tensor]],
    tolerance: Callable[[str], tuple[float, float]],
    label: str,
    checked_elsewhere: str | None = None,
) -> None:
    """Every output./debug. tensor of the case (but those under `checked_elsewhere`) must have a vidlab
    counterpart that matches it."""
    names = [k for k in tensors if k.startswith(("output.", "debug."))]
    with torch.no_grad():
        for name in (k for k in names if checked_elsewhere is None or not k.startswith(checked_elsewhere)):
            if name not in computed:
                found.expect(False, f"{label}: no vidlab counterpart for {name}")
                continue
            got, want = computed[name]().float(), tensors[name].float()
            if got.shape != want.shape:
                found.expect(False, f"{label}: {name} has shape {tuple(got.shape)}, golden {tuple(want.shape)}")
                continue
            atol, rtol = tolerance(name)
            diff = (got - want).abs().max().item() if got.numel() else 0.0
            found.expect(
                torch.allclose(got, want, atol=atol, rtol=rtol),
                f"{label}: {name} max abs diff {diff:.3g} (atol {atol}, rtol {rtol})",
            )


def check_clip_visual(case: GoldenCase) -> None:
    """OpenAI CLIP: image/text embeddings, logits and intermediates from three weight sources."""
    spec, tensors = case.spec, case.tensors()
    suggested = spec.get("tolerance", {}).get("suggested", {})
    atol, rtol = float(suggested.get("atol", DEFAULT_ATOL)), float(suggested.get("rtol", DEFAULT_RTOL))
    logits_atol = float(suggested.get("logits_atol", atol))

    def tolerance(name: str) -> tuple[float, float]:
        return (logits_atol if "logits" in name else atol), rtol

    cfg = clip_config_from_official(spec["constructor"]["kwargs"])
    image, token_ids = tensors["input.image"], tensors["input.text_tokens"]
    sources: dict[str, Any] = {"state_dict tensors": _strip(tensors, "state_dict.")}
    sources.update({f"official {name}": path for name, path in _case_files(case).items()})
    found = Mismatches(case.name)
    for label, source in sources.items():
        model = create_model(cfg, checkpoint=source)
        computed: dict[str, Callable[[], Tensor]] = {
            "output.image_embed": lambda m=model: m.encode_image(image),
            "output.text_embed": lambda m=model: m.encode_text(token_ids),
            "output.logits_per_image": lambda m=model: m(image, token_ids)[0],
            "output.logits_per_text": lambda m=model: m(image, token_ids)[1],
            "debug.visual_after_ln_pre": lambda m=model: m.visual.embed_tokens(image),
            "debug.visual_ln_post_cls": lambda m=model: m.visual.pooled(image),
            "debug.text_after_ln_final": lambda m=model: m.text.forward_features(token_ids),
        }
        _compare_all(found, tensors, computed, tolerance, f"clip_visual ({label})")
    found.raise_if_any()


def _evl_outputs(model: EVL, fp16_model: EVL, tensors: Mapping[str, Tensor]) -> dict[str, Callable[[], Tensor]]:
    video = tensors["input.video"].permute(0, 2, 1, 3, 4)  # official (B, C, T, H, W) -> vidlab (B, T, C, H, W)
    frames = video.flatten(0, 1)
    computed: dict[str, Callable[[], Tensor]] = {
        "output.logits": lambda: model(video),
        "output.logits_fp16_backbone": lambda: fp16_model(video),
        "debug.decoder_cls_before_proj": lambda: model.forward_features(video),
    }
    for index in range(len(model.backbone.blocks)):
        computed[f"debug.backbone_block{index}_out"] = lambda i=index: model.backbone.block_features(frames)[i].tokens
    return computed


def _check_converted_backbone(
    found: Mismatches, model: EVL, cfg: DictConfig, tensors: Mapping[str, Tensor], label: str
) -> None:
    """The official converter's backbone (EVL names), renamed by vidlab's key map for fine-tuned EVL
    checkpoints, must equal the backbone vidlab loaded from the CLIP file."""
    converted = {f"backbone.{k}": v for k, v in _strip(tensors, CONVERTED).items()}
    _, mapped = convert_official_evl_checkpoint({"model": converted}, cfg)
    found.expect(not mapped.unmapped, f"{label}: the EVL key map does not know {mapped.unmapped}")
    backbone_state = model.backbone.state_dict()
    for name, tensor in mapped.tensors.items():
        local = name.removeprefix("backbone.")
        found.expect(
            local in backbone_state and torch.equal(backbone_state[local].float(), tensor.float()),
            f"{label}: {CONVERTED}{mapped.source_of[name]} differs from vidlab's backbone.{local}",
        )


def _evl_config(case: GoldenCase) -> DictConfig:
    constructor = case.spec["constructor"]
    kwargs = {**constructor["kwargs"], "backbone_mode": "freeze_fp32", "backbone_path": None}
    return evl_config_from_official(kwargs, vit_presets=constructor.get("added_vit_preset"))


def check_evl(case: GoldenCase) -> None:
    """EVL logits (fp32 and fp16 backbone), decoder output, backbone blocks and converted backbone weights,
    from the case's tensors and from the official checkpoint-N.pth + TorchScript backbone files."""
    spec, tensors = case.spec, case.tensors()
    suggested = spec.get("tolerance", {}).get("suggested", {})
    atol, rtol = float(suggested.get("atol", DEFAULT_ATOL)), float(suggested.get("rtol", DEFAULT_RTOL))
    fp16_atol = float(suggested.get("fp16_backbone_atol", atol))

    def tolerance(name: str) -> tuple[float, float]:
        return (fp16_atol if name.endswith("fp16_backbone") else atol), rtol

    cfg = _evl_config(case)
    files = _case_files(case)
    checkpoint_file = next(path for name, path in files.items() if name.endswith(".pth"))
    backbone_file = next(path for name, path in files.items() if name.endswith(".pt"))
    decoder_state = {"model": _strip(tensors, "state_dict.")}
    backbone_state = _strip(tensors, "backbone_clip.")
    found = Mismatches(case.name)
    for label in ("state_dict tensors", "official files"):
        models = []
        for dtype in ("float32", "float16"):
            if label == "official files":
                file_cfg = apply_overrides(cfg, {"backbone.weights": str(backbone_file), "backbone.dtype": dtype})
                models.append(create_model(file_cfg, checkpoint=checkpoint_file))
            else:
                model = create_model(apply_overrides(cfg, {"backbone.dtype": dtype}), checkpoint=decoder_state)
                model.load_backbone_weights(backbone_state)
                models.append(model)
        computed = _evl_outputs(models[0], models[1], tensors)
        _compare_all(found, tensors, computed, tolerance, f"evl ({label})", checked_elsewhere=CONVERTED)
        _check_converted_backbone(found, models[0], cfg, tensors, f"evl ({label})")
    found.raise_if_any()
