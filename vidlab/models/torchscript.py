"""The weights of a TorchScript archive (e.g. OpenAI's CLIP `ViT-B-16.pt`), read without running its code.

`torch.jit.load` compiles and runs the archive's TorchScript; vidlab needs only the tensors. The archive is
a zip with the same records as a `torch.save` file: `data.pkl` pickles the module tree (each module an
object of a `__torch__.*` class whose state is its attribute dict) and `data/<key>` holds the raw bytes
of each storage. Here `data.pkl` is unpickled with a restricted unpickler: `__torch__` objects become
inert `ScriptObjectRecord`s, storages are rebuilt from the `data/` records, and any other global that is
not tensor data is refused (`UnsafeCheckpointError`), exactly as for pickled checkpoints. Which
attributes are parameters or buffers is read (as text, never executed) from the `__parameters__` /
`__buffers__` declarations in the archive's `code/` records, so the result equals
`torch.jit.load(path).state_dict()`: same names, order, values and dtypes.
"""

from __future__ import annotations

import pickle
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vidlab.models.checkpoint import resolve_global
from vidlab.models.errors import CheckpointError

SCRIPT_MODULE_PREFIX = "__torch__"
# The legacy storage classes data.pkl names, by the dtype their bytes hold.
_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
}
_DECLARATION = re.compile(
    r"^class (\w+)\(Module\):\n  __parameters__ = \[([^\]]*)\]\n  __buffers__ = \[([^\]]*)\]", re.MULTILINE
)


class ScriptObjectRecord:
    """Inert stand-in for a pickled TorchScript object: its qualified class name and its attribute dict."""

    qualified_name: str = ""
    attributes: dict[str, Any]

    def __new__(cls, *args: Any) -> ScriptObjectRecord:  # noqa: PYI034 (classes made at load time)
        record = super().__new__(cls)
        record.attributes = {}
        return record

    def __setstate__(self, state: Any) -> None:
        self.attributes = dict(state) if isinstance(state, dict) else {}


def is_torchscript_archive(path: str | Path) -> bool:
    """Whether `path` is a zip holding TorchScript code (its `constants.pkl` or `code/` records)."""
    path = Path(path)
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") or "/code/" in name for name in archive.namelist())


def _archive_root(archive: zipfile.ZipFile, source: str) -> str:
    roots = {name.split("/", 1)[0] for name in archive.namelist() if name.endswith("/data.pkl")}
    if len(roots) != 1:
        raise CheckpointError(source, "not a TorchScript archive: expected exactly one '<root>/data.pkl' record")
    return roots.pop()


def _state_declarations(archive: zipfile.ZipFile, root: str) -> dict[str, set[str]]:
    """Qualified class name -> the attribute names it declares as parameters or buffers."""
    declared: dict[str, set[str]] = {}
    code_prefix = f"{root}/code/"
    for name in archive.namelist():
        if not (name.startswith(code_prefix) and name.endswith(".py")):
            continue
        module = name[len(code_prefix) : -len(".py")].replace("/", ".")
        for match in _DECLARATION.finditer(archive.read(name).decode("utf-8", errors="replace")):
            class_name, parameters, buffers = match.groups()
            declared[f"{module}.{class_name}"] = set(re.findall(r'"([^"]+)"', parameters + buffers))
    return declared


def _unpickle_module_tree(archive: zipfile.ZipFile, root: str, source: str) -> Any:
    byteorder_record = f"{root}/byteorder"
    has_byteorder = byteorder_record in archive.namelist()
    archive_order = archive.read(byteorder_record).decode().strip() if has_byteorder else "little"
    if archive_order != sys.byteorder:
        raise CheckpointError(source, f"archive is {archive_order}-endian, this machine {sys.byteorder}-endian")
    storages: dict[str, torch.storage.TypedStorage] = {}
    record_classes: dict[str, type[ScriptObjectRecord]] = {}

    class ArchiveUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if module.split(".")[0] == SCRIPT_MODULE_PREFIX:
                qualified = f"{module}.{name}"
                if qualified not in record_classes:
                    record_classes[qualified] = type(name, (ScriptObjectRecord,), {"qualified_name": qualified})
                return record_classes[qualified]
            if module == "torch" and name in _STORAGE_DTYPES:
                return _STORAGE_DTYPES[name]
            return resolve_global(module, name, source)

        def persistent_load(self, saved_id: Any) -> Any:
            kind, dtype, key, _location, numel = saved_id
            if kind != "storage" or not isinstance(dtype, torch.dtype):
                raise CheckpointError(source, f"unsupported persistent record {saved_id!r} in data.pkl")
            if key not in storages:
                raw = bytearray(archive.read(f"{root}/data/{key}"))
                flat = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
                if flat.numel() != numel:
                    raise CheckpointError(source, f"storage {key}: {flat.numel()} elements, data.pkl says {numel}")
                storages[key] = torch.storage.TypedStorage(
                    wrap_storage=flat.untyped_storage(), dtype=dtype, _internal=True
                )
            return storages[key]

    with archive.open(f"{root}/data.pkl") as data:
        return ArchiveUnpickler(data).load()


def _collect_state(
    record: ScriptObjectRecord, declared: dict[str, set[str]], prefix: str, out: dict[str, Tensor]
) -> None:
    """Parameters and buffers of `record` and its submodules, in module order (as `state_dict()` lists them)."""
    state_names = declared.get(record.qualified_name)
    if state_names is None:  # not a Module (a TorchScript class object): no state_dict entries
        return
    for name, value in record.attributes.items():
        if isinstance(value, Tensor) and name in state_names:
            out[prefix + name] = value
    for name, value in record.attributes.items():
        if isinstance(value, ScriptObjectRecord):
            _collect_state(value, declared, f"{prefix}{name}.", out)


def read_torchscript_state_dict(path: str | Path) -> dict[str, Tensor]:
    """`torch.jit.load(path).state_dict()` on the CPU, without compiling or running any of the archive's code."""
    path = Path(path)
    source = str(path)
    if not is_torchscript_archive(path):
        raise CheckpointError(source, "not a TorchScript archive (a zip with code/ and constants.pkl records)")
    try:
        with zipfile.ZipFile(path) as archive:
            root = _archive_root(archive, source)
            tree = _unpickle_module_tree(archive, root, source)
            declared = _state_declarations(archive, root)
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, KeyError, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise CheckpointError(source, f"unreadable TorchScript archive ({type(e).__name__}: {e})") from None
    if not isinstance(tree, ScriptObjectRecord):
        raise CheckpointError(source, "data.pkl does not hold a TorchScript module")
    state: dict[str, Tensor] = {}
    _collect_state(tree, declared, "", state)
    return state


__all__ = ["ScriptObjectRecord", "is_torchscript_archive", "read_torchscript_state_dict"]
