"""Image ViT weights (timm state dicts, Google vision_transformer / big_vision `.npz`) for video ViTs.

FiT initialises its SpaceTimeTransformer from an ImageNet ViT (`strict=False` in the official code).
Here every file is first brought to timm's key names, then renamed by an explicit key map; only the
parts an image model cannot have (temporal embedding, time attention and its norm) may stay at their
initialisation, everything else must match exactly and a classifier head is dropped on purpose.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from vidlab.models.checkpoint import (
    KeyMap,
    LoadReport,
    load_pickled_checkpoint,
    load_state_dict_strict,
    read_safetensors,
    strip_prefix,
)
from vidlab.models.errors import CheckpointError

_BLOCK = r"blocks\.(\d+)\."
_PARAM = r"(weight|bias)"

TIMM_VIT_TO_SPACE_TIME = KeyMap(
    rules=(
        (r"cls_token", "cls_token"),
        (r"pos_embed", "spatial_pos_embed"),
        (rf"patch_embed\.proj\.{_PARAM}", r"patch_embed.\1"),
        (rf"{_BLOCK}norm1\.{_PARAM}", r"blocks.\1.space_norm.\2"),
        (rf"{_BLOCK}attn\.(qkv|proj)\.{_PARAM}", r"blocks.\1.space_attn.\2.\3"),
        (rf"{_BLOCK}norm2\.{_PARAM}", r"blocks.\1.mlp_norm.\2"),
        (rf"{_BLOCK}mlp\.(fc1|fc2)\.{_PARAM}", r"blocks.\1.mlp.\2.\3"),
        (rf"norm\.{_PARAM}", r"final_norm.\1"),
    ),
    ignore=(r"head\..*", r"pre_logits\..*"),
)
# SpaceTimeTransformer parameters an image ViT does not have: they keep their (time_init) initialisation.
SPACE_TIME_ONLY_KEYS = (r"temporal_embed", rf"{_BLOCK}time_norm\.{_PARAM}", rf"{_BLOCK}time_attn\..*")


def _npz_prefix(names: set[str]) -> str:
    for name in names:
        if name.endswith("embedding/kernel") and not name.endswith("pos_embedding/kernel"):
            return name[: -len("embedding/kernel")]
    raise CheckpointError("npz", "no 'embedding/kernel' array: not a ViT checkpoint")


def vit_npz_to_timm(arrays: Mapping[str, np.ndarray]) -> dict[str, Tensor]:
    """Google ViT arrays (flax layout: HWIO kernels, per-head q/k/v) -> timm-named torch tensors.

    Handles the original vision_transformer layout (MultiHeadDotProductAttention_1, MlpBlock_3,
    LayerNorm_2), big_vision's (..._0, MlpBlock_0, LayerNorm_1, top-level pos_embedding), and scanned
    checkpoints with one stacked `Transformer/encoderblock/` entry. Arrays not understood are returned
    under their own names, so that the key map reports them.
    """
    names = set(arrays)
    prefix = _npz_prefix(names)
    big_vision = f"{prefix}Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel" not in names and (
        f"{prefix}Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel" in names
        or f"{prefix}Transformer/encoderblock/MlpBlock_0/Dense_0/kernel" in names
    )
    mha, mlp, ln2 = (
        ("MultiHeadDotProductAttention_0", "MlpBlock_0", "LayerNorm_1")
        if big_vision
        else ("MultiHeadDotProductAttention_1", "MlpBlock_3", "LayerNorm_2")
    )
    used: set[str] = set()
    out: dict[str, Tensor] = {}

    def take(name: str, index: int | None = None) -> Tensor:
        used.add(name)
        array = np.asarray(arrays[name])
        return torch.from_numpy(np.ascontiguousarray(array if index is None else array[index])).float()

    out["patch_embed.proj.weight"] = take(f"{prefix}embedding/kernel").permute(3, 2, 0, 1).contiguous()
    out["patch_embed.proj.bias"] = take(f"{prefix}embedding/bias")
    if f"{prefix}cls" in names:
        out["cls_token"] = take(f"{prefix}cls")
    for pos_name in (f"{prefix}Transformer/posembed_input/pos_embedding", f"{prefix}pos_embedding"):
        if pos_name in names:
            out["pos_embed"] = take(pos_name)
    out["norm.weight"] = take(f"{prefix}Transformer/encoder_norm/scale")
    out["norm.bias"] = take(f"{prefix}Transformer/encoder_norm/bias")

    scanned = f"{prefix}Transformer/encoderblock/LayerNorm_0/scale" in names
    if scanned:
        depth = int(np.asarray(arrays[f"{prefix}Transformer/encoderblock/LayerNorm_0/scale"]).shape[0])
    else:
        block_re = re.compile(rf"{re.escape(prefix)}Transformer/encoderblock_(\d+)/")
        depth = len({m.group(1) for n in names if (m := block_re.match(n))})
    qkv = ("query", "key", "value")
    for i in range(depth):
        block = f"{prefix}Transformer/encoderblock/" if scanned else f"{prefix}Transformer/encoderblock_{i}/"

        def get(name: str, block: str = block, index: int | None = i if scanned else None) -> Tensor:
            return take(block + name, index)

        timm = f"blocks.{i}."
        out[timm + "norm1.weight"], out[timm + "norm1.bias"] = get("LayerNorm_0/scale"), get("LayerNorm_0/bias")
        out[timm + "norm2.weight"], out[timm + "norm2.bias"] = get(f"{ln2}/scale"), get(f"{ln2}/bias")
        # q/k/v kernels are (D, heads, head_dim); timm's fused qkv weight is (3 * heads * head_dim, D).
        out[timm + "attn.qkv.weight"] = torch.cat([get(f"{mha}/{n}/kernel").flatten(1).T for n in qkv])
        out[timm + "attn.qkv.bias"] = torch.cat([get(f"{mha}/{n}/bias").reshape(-1) for n in qkv])
        out[timm + "attn.proj.weight"] = get(f"{mha}/out/kernel").flatten(0, 1).T.contiguous()
        out[timm + "attn.proj.bias"] = get(f"{mha}/out/bias")
        for r in range(2):
            out[timm + f"mlp.fc{r + 1}.weight"] = get(f"{mlp}/Dense_{r}/kernel").T.contiguous()
            out[timm + f"mlp.fc{r + 1}.bias"] = get(f"{mlp}/Dense_{r}/bias")
    heads = {
        "head/kernel": "head.weight",
        "head/bias": "head.bias",
        "pre_logits/kernel": "pre_logits.fc.weight",
        "pre_logits/bias": "pre_logits.fc.bias",
    }
    for flax_name, timm_name in heads.items():
        if prefix + flax_name in names:
            tensor = take(prefix + flax_name)
            out[timm_name] = tensor.T.contiguous() if flax_name.endswith("kernel") else tensor
    for name in sorted(names - used):
        out[name] = torch.from_numpy(np.asarray(arrays[name]))
    return out


def read_vit_weights(path: str | Path) -> dict[str, Tensor]:
    """Any supported image ViT file -> a timm-named state dict."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(str(path), "file not found")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as arrays:
                return vit_npz_to_timm({k: arrays[k] for k in arrays.files})
        except (ValueError, OSError) as e:
            raise CheckpointError(str(path), f"not a readable npz file ({e})") from None
    state = read_safetensors(path) if path.suffix == ".safetensors" else load_pickled_checkpoint(path)
    for wrapper in ("model", "state_dict"):  # DeiT-style / trainer-style containers
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(str(path), "expected a state dict of tensors (timm ViT layout)")
    return strip_prefix(state, "module.")


def load_image_vit_weights(model: nn.Module, path: str | Path) -> LoadReport:
    """Initialise a SpaceTimeTransformer's spatial parameters from an image ViT file; strict otherwise."""
    mapped = TIMM_VIT_TO_SPACE_TIME.apply(read_vit_weights(path))
    return load_state_dict_strict(model, mapped, str(path), allowed_missing=SPACE_TIME_ONLY_KEYS)
