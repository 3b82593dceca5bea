"""Official-format Frozen in Time checkpoints for the model tests, written the way the official trainer does.

The key names and shapes below are written from the official checkpoint layout (reference notes A5), not
derived from vidlab's key map, so loading them tests that map.
"""

from __future__ import annotations

import sys
import types
from collections import OrderedDict
from pathlib import Path

import torch

# The tiny size of vidlab/models/configs/fit-tiny.yaml.
TINY = dict(img=32, patch=8, dim=64, depth=2, text_dim=64, text_layers=2, ffn=128, vocab=1000, max_pos=64, proj=32)
TINY_OFFICIAL_ARGS = {
    "video_params": {
        "model": "SpaceTimeTransformer",
        "arch_config": "base_patch16_224",
        "num_frames": 4,
        "pretrained": False,
        "time_init": "zeros",
    },
    "text_params": {"model": "distilbert-base-uncased", "pretrained": True, "input": "text"},
    "projection": "minimal",
    "projection_dim": TINY["proj"],
    "load_checkpoint": "",
}


def official_fit_state_dict(num_frames: int, seed: int = 0, prefix: str = "module.") -> OrderedDict:
    """Random tensors under the official FrozenInTime state-dict names (tiny sizes)."""
    g = torch.Generator().manual_seed(seed)
    d, t, n_patches = TINY["dim"], TINY["text_dim"], (TINY["img"] // TINY["patch"]) ** 2
    shapes: dict[str, tuple[int, ...]] = {
        "video_model.cls_token": (1, 1, d),
        "video_model.pos_embed": (1, 1 + n_patches, d),
        "video_model.temporal_embed": (1, num_frames, d),
        "video_model.patch_embed.proj.weight": (d, 3, TINY["patch"], TINY["patch"]),
        "video_model.patch_embed.proj.bias": (d,),
        "video_model.norm.weight": (d,),
        "video_model.norm.bias": (d,),
        "text_model.embeddings.word_embeddings.weight": (TINY["vocab"], t),
        "text_model.embeddings.position_embeddings.weight": (TINY["max_pos"], t),
        "text_model.embeddings.LayerNorm.weight": (t,),
        "text_model.embeddings.LayerNorm.bias": (t,),
        "txt_proj.1.weight": (TINY["proj"], t),
        "txt_proj.1.bias": (TINY["proj"],),
        "vid_proj.0.weight": (TINY["proj"], d),
        "vid_proj.0.bias": (TINY["proj"],),
    }
    for i in range(TINY["depth"]):
        b = f"video_model.blocks.{i}."
        for norm in ("norm1", "norm2", "norm3"):
            shapes[b + norm + ".weight"] = shapes[b + norm + ".bias"] = (d,)
        for attn in ("attn", "timeattn"):
            shapes[b + attn + ".qkv.weight"], shapes[b + attn + ".qkv.bias"] = (3 * d, d), (3 * d,)
            shapes[b + attn + ".proj.weight"], shapes[b + attn + ".proj.bias"] = (d, d), (d,)
        shapes[b + "mlp.fc1.weight"], shapes[b + "mlp.fc1.bias"] = (4 * d, d), (4 * d,)
        shapes[b + "mlp.fc2.weight"], shapes[b + "mlp.fc2.bias"] = (d, 4 * d), (d,)
    for i in range(TINY["text_layers"]):
        b = f"text_model.transformer.layer.{i}."
        for lin in ("q_lin", "k_lin", "v_lin", "out_lin"):
            shapes[b + f"attention.{lin}.weight"], shapes[b + f"attention.{lin}.bias"] = (t, t), (t,)
        for norm in ("sa_layer_norm", "output_layer_norm"):
            shapes[b + norm + ".weight"] = shapes[b + norm + ".bias"] = (t,)
        shapes[b + "ffn.lin1.weight"], shapes[b + "ffn.lin1.bias"] = (TINY["ffn"], t), (TINY["ffn"],)
        shapes[b + "ffn.lin2.weight"], shapes[b + "ffn.lin2.bias"] = (t, TINY["ffn"]), (t,)
    state = OrderedDict()
    for name, shape in shapes.items():
        tensor = torch.randn(shape, generator=g) * (0.2 if len(shape) > 1 else 0.05)
        if name.endswith(".weight") and ("norm" in name or "LayerNorm" in name):
            tensor = 1 + 0.1 * torch.randn(shape, generator=g)
        state[prefix + name] = tensor
    return state


def save_official_checkpoint(path: Path, state_dict: OrderedDict, arch_args: dict | None) -> Path:
    """torch.save the trainer's dict, with `config` an object of a class named parse_config.ConfigParser."""
    module = types.ModuleType("parse_config")

    class ConfigParser:
        pass

    ConfigParser.__module__, ConfigParser.__qualname__ = "parse_config", "ConfigParser"
    module.ConfigParser = ConfigParser  # type: ignore[attr-defined]
    config = ConfigParser()
    config._config = {"name": "test", "n_gpu": 4, "arch": {"type": "FrozenInTime", "args": arch_args or {}}}
    config.cfg_fname = Path("configs") / "test.json"
    checkpoint = {
        "arch": "DataParallel",
        "epoch": 3,
        "state_dict": state_dict,
        "optimizer": {"state": {}},
        "monitor_best": 0.5,
        "config": config,
    }
    sys.modules["parse_config"] = module
    try:
        torch.save(checkpoint, path)
    finally:
        del sys.modules["parse_config"]
    return path
