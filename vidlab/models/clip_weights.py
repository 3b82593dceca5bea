"""CLIP weights in every format vidlab reads, renamed to vidlab's names by explicit key maps and loaded strictly.

Formats (`clip_format` tells them apart by their key names):

- ``openai``: OpenAI's TorchScript archive as `clip.load` expects it (`ViT-B-16.pt`, read by
  `vidlab.models.torchscript` without running its code), or the plain state dict users save from it
  (`torch.save(torch.jit.load(p).state_dict())`). The int64 scalars `input_resolution`,
  `context_length`, `vocab_size` it carries are dropped on purpose (OpenAI's `build_model` deletes them).
- open_clip: OpenAI's key names for ViT models, possibly inside a trainer checkpoint's `state_dict`
  entry with the `module.` prefix of DistributedDataParallel, possibly with a `logit_bias`.
- ``hf``: Hugging Face `CLIPModel` (`model.safetensors` / `pytorch_model.bin`): its separate q/k/v
  projections are concatenated into vidlab's fused `qkv` ([q; k; v], OpenAI's `in_proj` layout) and its
  bias-free Linear projections transposed into CLIP's raw `x @ proj` matrices.
- ``vidlab``: vidlab's own `CLIP` weights (a checkpoint folder or its `model.safetensors`, e.g. the final
  weights of a `clip` training run), already in vidlab's names. `read_clip_state_dict` /
  `map_clip_state_dict` accept them so that towers built on CLIP (EVL's backbone) start from them;
  `create_model` reads such a folder through its vidlab branch, not as a foreign format.

Every key must be mapped or dropped on purpose; `load_state_dict_strict` reports the rest. Importing this
module registers the formats with `create_model`, so `create_model("clip-vit-b16", checkpoint=path)`
and `create_model(checkpoint=path)` (architecture inferred as OpenAI's `build_model` does) accept them.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor

from vidlab.errors import ConfigError
from vidlab.models.checkpoint import (
    WEIGHTS_FILE,
    KeyMap,
    LoadReport,
    MappedStateDict,
    load_pickled_checkpoint,
    load_state_dict_strict,
    read_safetensors,
    strip_prefix,
    vidlab_checkpoint_files,
)
from vidlab.models.clip import CLIP, FAMILY, HEAD_WIDTH, VISION_TOWER_KEYS
from vidlab.models.errors import CheckpointError
from vidlab.models.factory import recorded_config, register_checkpoint_format, typed_model_config
from vidlab.models.torchscript import is_torchscript_archive, read_torchscript_state_dict

_P = r"(weight|bias)"
_FUSED_PART = re.compile(r"(.+):(q|k|v)")
_OPENAI_MARKER = "visual.conv1.weight"
_HF_MARKER = "vision_model.embeddings.patch_embedding.weight"
_VIDLAB_MARKER = "visual.patch_embed.weight"


def _openai_block_rules(source: str, target: str) -> tuple[tuple[str, str], ...]:
    block = rf"{re.escape(source)}\.(\d+)\."
    return (
        (rf"{block}attn\.in_proj_{_P}", rf"{target}.\1.attn.qkv.\2"),
        (rf"{block}attn\.out_proj\.{_P}", rf"{target}.\1.attn.proj.\2"),
        (rf"{block}ln_1\.{_P}", rf"{target}.\1.norm1.\2"),
        (rf"{block}ln_2\.{_P}", rf"{target}.\1.norm2.\2"),
        (rf"{block}mlp\.c_fc\.{_P}", rf"{target}.\1.mlp.fc1.\2"),
        (rf"{block}mlp\.c_proj\.{_P}", rf"{target}.\1.mlp.fc2.\2"),
    )


OPENAI_CLIP_KEY_MAP = KeyMap(
    rules=(
        (r"visual\.conv1\.weight", "visual.patch_embed.weight"),
        (r"visual\.class_embedding", "visual.cls_token"),
        (r"visual\.positional_embedding", "visual.pos_embed"),
        (rf"visual\.ln_(pre|post)\.{_P}", r"visual.ln_\1.\2"),
        (r"visual\.proj", "visual.proj"),
        *_openai_block_rules("visual.transformer.resblocks", "visual.blocks"),
        (r"token_embedding\.weight", "text.token_embedding.weight"),
        (r"positional_embedding", "text.pos_embed"),
        *_openai_block_rules("transformer.resblocks", "text.blocks"),
        (rf"ln_final\.{_P}", r"text.ln_final.\1"),
        (r"text_projection", "text.proj"),
        (r"logit_(scale|bias)", r"logit_\1"),
    ),
    # build_model's bookkeeping scalars; the causal mask some scripted / older open_clip models stored.
    ignore=(
        r"input_resolution",
        r"context_length",
        r"vocab_size",
        r"(visual\.)?transformer\.resblocks\.\d+\.attn_mask",
    ),
)


def _hf_block_rules(source: str, target: str) -> tuple[tuple[str, str], ...]:
    layer = rf"{re.escape(source)}\.(\d+)\."
    return (
        (rf"{layer}self_attn\.(q|k|v)_proj\.{_P}", rf"{target}.\1.attn.qkv.\3:\2"),
        (rf"{layer}self_attn\.out_proj\.{_P}", rf"{target}.\1.attn.proj.\2"),
        (rf"{layer}layer_norm(1|2)\.{_P}", rf"{target}.\1.norm\2.\3"),
        (rf"{layer}mlp\.(fc1|fc2)\.{_P}", rf"{target}.\1.mlp.\2.\3"),
    )


HF_CLIP_KEY_MAP = KeyMap(
    rules=(
        (r"vision_model\.embeddings\.patch_embedding\.weight", "visual.patch_embed.weight"),
        (r"vision_model\.embeddings\.class_embedding", "visual.cls_token"),
        (r"vision_model\.embeddings\.position_embedding\.weight", "visual.pos_embed"),
        (rf"vision_model\.pre_layrnorm\.{_P}", r"visual.ln_pre.\1"),  # sic: HF's spelling
        (rf"vision_model\.post_layernorm\.{_P}", r"visual.ln_post.\1"),
        (r"visual_projection\.weight", "visual.proj"),
        *_hf_block_rules("vision_model.encoder.layers", "visual.blocks"),
        (r"text_model\.embeddings\.token_embedding\.weight", "text.token_embedding.weight"),
        (r"text_model\.embeddings\.position_embedding\.weight", "text.pos_embed"),
        *_hf_block_rules("text_model.encoder.layers", "text.blocks"),
        (rf"text_model\.final_layer_norm\.{_P}", r"text.ln_final.\1"),
        (r"text_projection\.weight", "text.proj"),
        (r"logit_scale", "logit_scale"),
    ),
    ignore=(r"(text|vision)_model\.embeddings\.position_ids",),  # buffers older transformers saved
)
_HF_TRANSPOSED = ("visual.proj", "text.proj")  # nn.Linear(width, embed, bias=False).weight -> (width, embed)


def fuse_qkv_parts(mapped: MappedStateDict) -> MappedStateDict:
    """Concatenate tensors a key map named `<name>:q`, `<name>:k`, `<name>:v` into `<name>` ([q; k; v]).

    Incomplete triples stay as they are, so the strict load reports them as unexpected.
    """
    groups: dict[str, dict[str, str]] = {}
    for name in mapped.tensors:
        match = _FUSED_PART.fullmatch(name)
        if match:
            groups.setdefault(match.group(1), {})[match.group(2)] = name
    for fused, parts in groups.items():
        if set(parts) != {"q", "k", "v"}:
            continue
        names = [parts[p] for p in "qkv"]
        mapped.tensors[fused] = torch.cat([mapped.tensors.pop(n) for n in names])
        mapped.source_of[fused] = " + ".join(mapped.source_of.pop(n) for n in names)
    return mapped


def unwrap_state_dict(obj: Any, source: str) -> dict[str, Tensor]:
    """A state dict of tensors from a bare dict or a trainer checkpoint's `state_dict`, `module.` prefix removed."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        raise CheckpointError(source, "expected a CLIP state dict (names -> tensors) or a checkpoint holding one")
    return strip_prefix(obj, "module.")


def clip_format(state_dict: Mapping[str, Tensor]) -> str | None:
    """'openai' (OpenAI / open_clip names), 'hf' (transformers CLIPModel), 'vidlab' (vidlab's `CLIP`) or None."""
    if _OPENAI_MARKER in state_dict:
        return "openai"
    if _HF_MARKER in state_dict:
        return "hf"
    if _VIDLAB_MARKER in state_dict:
        return "vidlab"
    return None


def read_clip_state_dict(source: str | Path | Mapping[str, Any]) -> tuple[dict[str, Tensor], str]:
    """(state dict as stored, source name) of a CLIP file in any supported format, or of an in-memory dict."""
    if isinstance(source, Mapping):
        return unwrap_state_dict(source, "<in-memory CLIP state dict>"), "<in-memory CLIP state dict>"
    path = Path(source)
    if path.is_dir():
        files = vidlab_checkpoint_files(path)
        if files is None:
            raise CheckpointError(str(path), f"a folder without {WEIGHTS_FILE}: not a vidlab checkpoint")
        path = files[0]
    if not path.is_file():
        raise CheckpointError(str(path), "file not found")
    if is_torchscript_archive(path):
        obj: Any = read_torchscript_state_dict(path)
    elif path.suffix == ".safetensors":
        obj = read_safetensors(path)
    else:
        obj = load_pickled_checkpoint(path)
    return unwrap_state_dict(obj, str(path)), str(path)


def map_clip_state_dict(state_dict: Mapping[str, Tensor], source: str = "CLIP state dict") -> MappedStateDict:
    """Rename a CLIP state dict of any supported format to vidlab's `CLIP` names (HF q/k/v fused, HF
    projections transposed)."""
    fmt = clip_format(state_dict)
    if fmt is None:
        raise CheckpointError(
            source,
            f"not a CLIP state dict: neither {_OPENAI_MARKER!r} (OpenAI/open_clip), {_HF_MARKER!r} (HF) "
            f"nor {_VIDLAB_MARKER!r} (vidlab)",
        )
    if fmt == "vidlab":
        return MappedStateDict(tensors=dict(state_dict), source_of={k: k for k in state_dict})
    if fmt == "openai":
        if "visual.class_embedding" not in state_dict:
            raise CheckpointError(source, "a ResNet CLIP image tower (RN50 ...): vidlab implements ViT towers only")
        return OPENAI_CLIP_KEY_MAP.apply(state_dict)
    mapped = fuse_qkv_parts(HF_CLIP_KEY_MAP.apply(state_dict))
    for name in _HF_TRANSPOSED:
        if name in mapped.tensors:
            mapped.tensors[name] = mapped.tensors[name].T.contiguous()
    return mapped


def vision_tower_weights(mapped: MappedStateDict, with_head: bool) -> MappedStateDict:
    """The `visual.*` part of a mapped CLIP state dict, renamed to `CLIPVisionTower` names.

    The text tower and the logit scale are dropped on purpose, and so are `ln_post`/`proj` when the
    tower has no head (EVL's backbone); keys the CLIP map did not know stay unmapped.
    """
    head = ("ln_post.weight", "ln_post.bias", "proj")
    tower = MappedStateDict(tensors={}, unmapped=list(mapped.unmapped), ignored=list(mapped.ignored))
    for name, tensor in mapped.tensors.items():
        origin = mapped.source_of.get(name, name)
        local = name.removeprefix("visual.")
        if local == name or (not with_head and local in head):
            tower.ignored.append(origin)
            continue
        tower.tensors[local] = tensor
        tower.source_of[local] = origin
    return tower


def _count_blocks(tensors: Mapping[str, Tensor], prefix: str) -> int:
    pattern = re.compile(rf"{re.escape(prefix)}(\d+)\.")
    indices = {int(m.group(1)) for key in tensors if (m := pattern.match(key))}
    return max(indices) + 1 if indices else 0


def _heads(width: int, configured_width: int, configured_heads: int) -> int:
    """Head counts are not in the shapes: keep the configured count for the same width, else width // 64."""
    return configured_heads if width == configured_width else max(1, width // HEAD_WIDTH)


def infer_clip_config(tensors: Mapping[str, Tensor], base: DictConfig | None = None) -> DictConfig:
    """A CLIP config with the sizes of a vidlab-named state dict (OpenAI `build_model`'s inference rules).

    Head counts follow `base` when its widths match, else OpenAI's width // 64.
    """
    cfg = copy.deepcopy(base) if base is not None else typed_model_config({"family": FAMILY})
    try:
        width, _, patch_size, _ = tensors["visual.patch_embed.weight"].shape
        grid = round(math.sqrt(tensors["visual.pos_embed"].shape[0] - 1))
        text_width = tensors["text.ln_final.weight"].shape[0]
        vocab_size = tensors["text.token_embedding.weight"].shape[0]
        vision = dict(
            image_size=int(grid * patch_size),
            patch_size=int(patch_size),
            width=int(width),
            layers=_count_blocks(tensors, "visual.blocks."),
            heads=_heads(int(width), cfg.vision.width, cfg.vision.heads),
            mlp_ratio=tensors["visual.blocks.0.mlp.fc1.weight"].shape[0] / width,
        )
        text = dict(
            context_length=int(tensors["text.pos_embed"].shape[0]),
            vocab_size=int(vocab_size),
            width=int(text_width),
            layers=_count_blocks(tensors, "text.blocks."),
            heads=_heads(int(text_width), cfg.text.width, cfg.text.heads),
            mlp_ratio=tensors["text.blocks.0.mlp.fc1.weight"].shape[0] / text_width,
        )
        embed_dim = int(tensors["text.proj"].shape[1])
    except KeyError as e:
        raise CheckpointError("CLIP state dict", f"cannot infer the architecture: no {e.args[0]!r}") from None
    cfg.vision.update(vision)
    cfg.text.update(text)
    cfg.embed_dim = embed_dim
    cfg.logit_bias = "logit_bias" in tensors
    return cfg


def clip_config_from_official(kwargs: Mapping[str, Any]) -> DictConfig:
    """OpenAI's `clip.model.CLIP(**kwargs)` arguments -> a vidlab config (vision heads = width // 64, as CLIP)."""
    if isinstance(kwargs.get("vision_layers"), (list, tuple)):
        raise ConfigError("vision_layers as a tuple means a ResNet image tower: vidlab implements ViT towers only")
    return typed_model_config(
        dict(
            family=FAMILY,
            embed_dim=kwargs["embed_dim"],
            vision=dict(
                image_size=kwargs["image_resolution"],
                patch_size=kwargs["vision_patch_size"],
                width=kwargs["vision_width"],
                layers=kwargs["vision_layers"],
                heads=kwargs["vision_width"] // HEAD_WIDTH,
            ),
            text=dict(
                context_length=kwargs["context_length"],
                vocab_size=kwargs["vocab_size"],
                width=kwargs["transformer_width"],
                layers=kwargs["transformer_layers"],
                heads=kwargs["transformer_heads"],
            ),
        )
    )


def recorded_vision_sizes(source: str | Path) -> dict[str, Any]:
    """The image tower's sizes a vidlab CLIP checkpoint records beside its weights (`config.yaml`); empty for any
    other file, whose sizes only its tensors tell."""
    recorded = recorded_config(source, FAMILY)
    if recorded is None:
        return {}
    return {key: recorded.vision[key] for key in VISION_TOWER_KEYS if key in recorded.vision}


def load_clip_weights(model: CLIP, source: str | Path | Mapping[str, Any]) -> LoadReport:
    """Load CLIP weights of any supported format (file or in-memory) into `model` strictly; returns the report."""
    state_dict, name = read_clip_state_dict(source)
    return load_state_dict_strict(model, map_clip_state_dict(state_dict, name), name)


def is_clip_checkpoint(obj: Any) -> bool:
    """An OpenAI / open_clip / HF CLIP state dict, bare or inside a trainer checkpoint's `state_dict`."""
    state = obj.get("state_dict", obj) if isinstance(obj, Mapping) else None
    if not isinstance(state, Mapping):
        return False
    keys = {key.removeprefix("module.") for key in state if isinstance(key, str)}
    return _OPENAI_MARKER in keys or _HF_MARKER in keys


def convert_clip_checkpoint(obj: Any, cfg: DictConfig | None) -> tuple[DictConfig, MappedStateDict]:
    """CLIP checkpoint -> (config, vidlab-named weights); the config is `cfg`, else inferred from the shapes."""
    mapped = map_clip_state_dict(unwrap_state_dict(obj, "CLIP checkpoint"))
    if cfg is None:
        cfg = infer_clip_config(mapped.tensors)
    return cfg, mapped


register_checkpoint_format(
    "clip (OpenAI TorchScript / state dict, open_clip, HF CLIPModel)", is_clip_checkpoint, convert_clip_checkpoint
)

__all__ = [
    "OPENAI_CLIP_KEY_MAP",
    "HF_CLIP_KEY_MAP",
    "fuse_qkv_parts",
    "unwrap_state_dict",
    "clip_format",
    "read_clip_state_dict",
    "map_clip_state_dict",
    "vision_tower_weights",
    "infer_clip_config",
    "clip_config_from_official",
    "recorded_vision_sizes",
    "load_clip_weights",
    "is_clip_checkpoint",
    "convert_clip_checkpoint",
]
