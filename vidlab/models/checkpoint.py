"""Checkpoint files: safe unpickling, explicit key maps, strict loading with a readable report, vidlab's format.

- `load_pickled_checkpoint` reads `torch.save` files (zip or legacy) through a restricted unpickler: it
  rebuilds tensors, OrderedDicts and plain containers, turns objects of classes that do not exist in this
  environment (such as the official FiT repo's `parse_config.ConfigParser`) or that are pickled data
  (OmegaConf configs, whole pickled `nn.Module`s such as DALL-E's `encoder.pkl`) into inert `ForeignObject`
  records, and refuses any other global, so a file that would run code when unpickled runs nothing;
  `recorded_module_state_dict` reads a recorded module's tensors.
- `KeyMap` renames a foreign state dict with an explicit table of (source pattern -> vidlab name) rules.
- `load_state_dict_strict` loads exactly (strict=True) or raises `StateDictMismatchError` whose message
  lists the missing / unexpected / misshapen keys grouped by prefix.
- vidlab's own checkpoints are a directory with `model.safetensors` and the model's `config.yaml`.
"""

from __future__ import annotations

import _compat_pickle
import importlib.util
import logging
import pickle
import re
import sys
import types
import zipfile
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import torch
from omegaconf import DictConfig
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from vidlab.config import save_config
from vidlab.files import atomic_path
from vidlab.models.errors import CheckpointError, StateDictMismatchError, UnsafeCheckpointError

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"

# ---------------------------------------------------------------------------------------------------------
# Restricted unpickling


class ForeignObject:
    """Inert record of a pickled object whose class is not available here: class name, arguments and state.

    Nothing of the foreign class runs: construction only stores the arguments, and `__setstate__` only
    stores the state (for a pickled instance, usually the dict of its attributes).
    """

    foreign_class: ClassVar[str] = ""
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    state: Any

    def __new__(cls, *args: Any, **kwargs: Any) -> ForeignObject:  # noqa: PYI034 (classes made at load time)
        record = super().__new__(cls)
        record.args, record.kwargs, record.state = args, kwargs, None
        return record

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<foreign {self.foreign_class} args={self.args!r}>"


def _foreign_class(module: str, name: str) -> type[ForeignObject]:
    return type(name, (ForeignObject,), {"foreign_class": f"{module}.{name}", "__module__": __name__})


# Globals rebuilt for real: tensor/storage reconstruction and data-only containers.
_SAFE_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    [("collections", "OrderedDict"), ("collections", "defaultdict"), ("collections", "Counter"), ("_codecs", "encode"), ("typing", "Any")]
    + [
        ("builtins", n)
        for n in (
            "dict",
            "list",
            "tuple",
            "set",
            "frozenset",
            "int",
            "float",
            "complex",
            "str",
            "bytes",
            "bytearray",
            "bool",
            "slice",
            "range",
            "object",
        )
    ]
    + [
        ("torch._utils", n)
        for n in (
            "_rebuild_tensor",
            "_rebuild_tensor_v2",
            "_rebuild_tensor_v3",
            "_rebuild_parameter",
            "_rebuild_parameter_with_state",
        )
    ]
    + [
        ("torch._tensor", "_rebuild_from_type_v2"),
        ("torch", "Size"),
        ("torch", "device"),
        ("torch", "Tensor"),
        ("torch.nn.parameter", "Parameter"),
    ]
    + [(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")]
    + [("numpy", "ndarray"), ("numpy", "dtype")]
)
# Classes present here whose pickled state is plain data: recorded as ForeignObject, never built.
_RECORDED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    [("pathlib", n) for n in ("Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath")]
    + [("argparse", "Namespace"), ("parse_config", "ConfigParser")]  # the last: FiT's pickled trainer config
)
# Packages whose pickled objects are recorded, never built: OmegaConf configs (Singularity) and whole pickled
# modules (DALL-E's encoder.pkl: its own classes and torch.nn containers), whose tensors `recorded_module_state_dict`
# reads back.
_RECORDED_PACKAGES = ("omegaconf", "dall_e", "torch.nn.modules")


def _module_exists(module: str) -> bool:
    """Whether `module`'s top-level package is importable here (checked without importing anything)."""
    top = module.split(".")[0]
    if top in sys.modules or top in sys.builtin_module_names:
        return True
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return True  # cannot tell: treat as present, i.e. refuse rather than record


def resolve_global(module: str, name: str, source: str) -> Any:
    # Protocol-2 pickles name Python 2 modules (e.g. '__builtin__.eval'): judge the Python 3 object they mean.
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    if (module, name) in _SAFE_GLOBALS:
        return getattr(importlib.import_module(module), name)
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    recorded = (module, name) in _RECORDED_GLOBALS or any(
        module == p or module.startswith(p + ".") for p in _RECORDED_PACKAGES
    )
    if recorded or not _module_exists(module):
        return _foreign_class(module, name)
    raise UnsafeCheckpointError(
        source,
        f"refusing to unpickle global '{module}.{name}': it is not tensor data and could run code when "
        "loaded; nothing was executed",
    )


def _restricted_pickle_module(source: str) -> types.ModuleType:
    """A stand-in for the `pickle` module (as `torch.load(pickle_module=...)` wants) that resolves globals safely."""

    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            return resolve_global(module, name, source)

    def load(file: BinaryIO, **kwargs: Any) -> Any:
        return RestrictedUnpickler(file, **kwargs).load()

    module = types.ModuleType("vidlab_restricted_pickle")
    module.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
    module.load = load  # type: ignore[attr-defined]
    return module


def _is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist())


def load_pickled_checkpoint(path: str | Path) -> Any:
    """Read a `torch.save` file on the CPU without executing anything it references.

    Raises `UnsafeCheckpointError` for a file that references code (e.g. `os.system`, `builtins.eval`)
    and `CheckpointError` for a missing or unreadable file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(str(path), "file not found")
    if _is_torchscript_archive(path):
        raise CheckpointError(str(path), "TorchScript archive: holds code, not a checkpoint this loader reads")
    try:
        return torch.load(
            path, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle_module(str(path))
        )
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - any pickle/zip/storage failure means: not a torch checkpoint
        raise CheckpointError(str(path), f"not a readable torch checkpoint ({type(e).__name__}: {e})") from None


def load_restricted_pickle(path: str | Path) -> Any:
    """Read a plain `pickle.dump` file (not a `torch.save` one, e.g. an official argparse `args.pickle`) through the
    same restricted unpickler: data and inert records only, nothing executed."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(str(path), "file not found")
    try:
        with path.open("rb") as f:
            return _restricted_pickle_module(str(path)).load(f)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - any unpickling failure means: not a readable pickle
        raise CheckpointError(str(path), f"not a readable pickle ({type(e).__name__}: {e})") from None


def find_foreign(obj: Any, foreign_class: str) -> ForeignObject | None:
    """The first ForeignObject of class `foreign_class` (e.g. 'parse_config.ConfigParser') inside `obj`."""
    if isinstance(obj, ForeignObject):
        return obj if obj.foreign_class == foreign_class else None
    if isinstance(obj, Mapping):
        children: Iterable[Any] = obj.values()
    elif isinstance(obj, (list, tuple)):
        children = obj
    else:
        return None
    for child in children:
        found = find_foreign(child, foreign_class)
        if found is not None:
            return found
    return None


def recorded_module_state_dict(module: ForeignObject, prefix: str = "") -> dict[str, Tensor]:
    """The `state_dict()` of a whole pickled `nn.Module` read as ForeignObjects (its `_parameters`, persistent
    `_buffers` and `_modules`, recursively), without building any of its classes."""
    state = module.state if isinstance(module.state, Mapping) else {}
    tensors: dict[str, Tensor] = {}
    for name, param in (state.get("_parameters") or {}).items():
        if isinstance(param, Tensor):
            tensors[prefix + name] = param.detach()
    skipped = state.get("_non_persistent_buffers_set") or set()
    for name, buffer in (state.get("_buffers") or {}).items():
        if isinstance(buffer, Tensor) and name not in skipped:
            tensors[prefix + name] = buffer
    for name, child in (state.get("_modules") or {}).items():
        if isinstance(child, ForeignObject):
            tensors.update(recorded_module_state_dict(child, f"{prefix}{name}."))
    return tensors


# ---------------------------------------------------------------------------------------------------------
# Key maps


@dataclass
class MappedStateDict:
    """A state dict renamed to vidlab's names, with the bookkeeping the load report needs."""

    tensors: dict[str, Tensor]
    source_of: dict[str, str] = field(default_factory=dict)  # vidlab name -> name in the file
    unmapped: list[str] = field(default_factory=list)  # file keys no rule matched
    ignored: list[str] = field(default_factory=list)  # file keys dropped on purpose


@dataclass(frozen=True)
class KeyMap:
    """Explicit renaming table: each rule is (regex matching a whole source key, target with \\1 groups).

    `ignore` lists source keys that are dropped on purpose (e.g. a classifier head, a buffer that older
    library versions saved); every other key must match a rule or it is reported as unexpected.
    """

    rules: tuple[tuple[str, str], ...]
    ignore: tuple[str, ...] = ()

    def nested(self, source_prefix: str, target_prefix: str) -> tuple[tuple[str, str], ...]:
        """The rules for the same keys nested under `source_prefix` in a checkpoint and `target_prefix` in a model."""
        return tuple((re.escape(source_prefix) + pattern, target_prefix + target) for pattern, target in self.rules)

    def apply(self, state_dict: Mapping[str, Tensor]) -> MappedStateDict:
        compiled = [(re.compile(pattern), target) for pattern, target in self.rules]
        ignored = [re.compile(pattern) for pattern in self.ignore]
        mapped = MappedStateDict(tensors={})
        for key, tensor in state_dict.items():
            if any(p.fullmatch(key) for p in ignored):
                mapped.ignored.append(key)
                continue
            for pattern, target in compiled:
                match = pattern.fullmatch(key)
                if match:
                    name = match.expand(target)
                    if name in mapped.tensors:
                        raise CheckpointError(
                            "state dict", f"{key!r} and {mapped.source_of[name]!r} both map to {name!r}"
                        )
                    mapped.tensors[name] = tensor
                    mapped.source_of[name] = key
                    break
            else:
                mapped.unmapped.append(key)
        return mapped


def strip_prefix(state_dict: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Remove `prefix` from every key that has it (e.g. 'module.' added by (Distributed)DataParallel)."""
    return {k.removeprefix(prefix): v for k, v in state_dict.items()}


# ---------------------------------------------------------------------------------------------------------
# Strict loading and its report


def summarize_keys(keys: Iterable[str]) -> list[str]:
    """Group keys for reading: 'blocks.0.a.weight', 'blocks.1.a.bias' -> 'blocks.{0,1}.a.{bias,weight}'."""
    leaves: dict[str, set[str]] = defaultdict(set)
    for key in keys:
        parent, _, leaf = key.rpartition(".")
        leaves[parent].add(leaf)
    groups: dict[tuple[str, tuple[str, ...]], list[list[str]]] = defaultdict(list)
    for parent, leaf_set in leaves.items():
        parts = parent.split(".") if parent else []
        pattern = ".".join("#" if p.isdigit() else p for p in parts)
        groups[(pattern, tuple(sorted(leaf_set)))].append([p for p in parts if p.isdigit()])
    lines = []
    for (pattern, leaf_names), index_lists in sorted(groups.items()):
        text = pattern
        for position in range(pattern.split(".").count("#")):
            values = sorted({int(ix[position]) for ix in index_lists})
            text = text.replace("#", str(values[0]) if len(values) == 1 else "{" + ",".join(map(str, values)) + "}", 1)
        leaf = leaf_names[0] if len(leaf_names) == 1 else "{" + ",".join(leaf_names) + "}"
        lines.append(f"{text}.{leaf}" if text else leaf)
    return lines


@dataclass
class LoadReport:
    """What happened to every key of a checkpoint when it was loaded into a model."""

    source: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)  # model keys the checkpoint does not provide
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys with no place in the model
    shape_mismatch: list[str] = field(default_factory=list)  # 'key: checkpoint (..) vs model (..)'
    ignored: list[str] = field(default_factory=list)  # checkpoint keys dropped on purpose
    kept_from_init: list[str] = field(default_factory=list)  # model keys allowed to keep their init
    adapted: list[str] = field(default_factory=list)  # notes on tensors changed to fit (e.g. inflation)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def format(self) -> str:
        lines = [f"{self.source}: {self.loaded} tensors loaded"]
        sections = [
            ("missing (in the model, not in the checkpoint)", self.missing),
            ("unexpected (in the checkpoint, no place in the model)", self.unexpected),
            ("ignored on purpose", self.ignored),
            ("kept from initialization", self.kept_from_init),
        ]
        for title, keys in sections:
            if keys:
                lines.append(f"  {title}: {len(keys)} keys")
                lines.extend(f"    {line}" for line in summarize_keys(keys))
        if self.shape_mismatch:
            lines.append(f"  shape mismatch: {len(self.shape_mismatch)} keys")
            lines.extend(f"    {line}" for line in self.shape_mismatch)
        lines.extend(f"  adapted: {note}" for note in self.adapted)
        return "\n".join(lines)


def load_state_dict_strict(
    model: nn.Module,
    mapped: MappedStateDict,
    source: str,
    allowed_missing: tuple[str, ...] = (),
    adapted: Iterable[str] = (),
) -> LoadReport:
    """Load `mapped` into `model` exactly, or raise `StateDictMismatchError` listing every bad key.

    `allowed_missing` (regexes over model keys) names parameters a partial source legitimately lacks,
    e.g. the temporal parts of a video model initialised from image weights; they keep their init.
    """
    expected = model.state_dict()
    allowed = [re.compile(p) for p in allowed_missing]
    report = LoadReport(source=source, ignored=list(mapped.ignored), adapted=list(adapted))
    report.unexpected = list(mapped.unmapped)
    for name, tensor in mapped.tensors.items():
        origin = mapped.source_of.get(name, name)
        label = name if origin == name else f"{origin} (as {name})"
        if name not in expected:
            report.unexpected.append(origin)
        elif tuple(tensor.shape) != tuple(expected[name].shape):
            report.shape_mismatch.append(
                f"{label}: checkpoint {tuple(tensor.shape)} vs model {tuple(expected[name].shape)}"
            )
    for name in expected:
        if name not in mapped.tensors:
            (report.kept_from_init if any(p.fullmatch(name) for p in allowed) else report.missing).append(name)
    if not report.ok:
        raise StateDictMismatchError(source, report)
    full = dict(mapped.tensors)
    full.update({name: expected[name] for name in report.kept_from_init})
    model.load_state_dict(full, strict=True)
    report.loaded = len(mapped.tensors)
    return report


# ---------------------------------------------------------------------------------------------------------
# vidlab's own format


def save_vidlab_checkpoint(model: nn.Module, config: DictConfig, directory: str | Path) -> Path:
    """Write `model.safetensors` (weights) and `config.yaml` (the model config) into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Tensor] = {}
    seen_storages: set[int] = set()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        storage = tensor.untyped_storage().data_ptr()
        tensors[name] = tensor.clone() if storage in seen_storages else tensor  # safetensors refuses shared memory
        seen_storages.add(storage)
    with atomic_path(directory / WEIGHTS_FILE) as temp:
        save_file(tensors, str(temp), metadata={"format": "vidlab", "family": str(config.family)})
    save_config(config, directory / CONFIG_FILE)
    return directory


def vidlab_checkpoint_files(path: str | Path) -> tuple[Path, Path | None] | None:
    """(weights, config or None) if `path` is a vidlab checkpoint directory or a `.safetensors` file, else None.

    The config is `<stem>.yaml` or `config.yaml` beside the weights.
    """
    path = Path(path)
    weights = path / WEIGHTS_FILE if path.is_dir() else path
    if weights.suffix != ".safetensors" or not weights.is_file():
        return None
    configs = [c for c in (weights.with_suffix(".yaml"), weights.parent / CONFIG_FILE) if c.is_file()]
    return weights, (configs[0] if configs else None)


def read_safetensors(path: str | Path) -> dict[str, Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(str(path), f"not a readable safetensors file ({e})") from None


__all__ = [
    "ForeignObject",
    "load_pickled_checkpoint",
    "load_restricted_pickle",
    "find_foreign",
    "recorded_module_state_dict",
    "KeyMap",
    "MappedStateDict",
    "strip_prefix",
    "LoadReport",
    "load_state_dict_strict",
    "summarize_keys",
    "save_vidlab_checkpoint",
    "vidlab_checkpoint_files",
    "read_safetensors",
]
