"""Decoding backends behind one interface; `get_backend` picks one by name.

PyAV is always available (a required dependency); torchcodec and decord2 (`import decord`)
are used only when importable.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
from collections.abc import Callable

from vidlab.errors import VidlabError
from vidlab.io.backends.base import VideoBackend

DEFAULT_BACKEND = "pyav"


class BackendUnavailableError(VidlabError):
    """A backend was asked for by name but is unknown or its library is not installed."""


def _make_pyav() -> VideoBackend:
    from vidlab.io.backends.pyav import PyAVBackend

    return PyAVBackend()


def _make_torchcodec() -> VideoBackend:
    from vidlab.io.backends.torchcodec import TorchCodecBackend

    return TorchCodecBackend()


def _make_decord() -> VideoBackend:
    # decord2 loads its bundled FFmpeg and dav1d into the global symbol scope; torchcodec loaded
    # after it binds to those instead of the system FFmpeg and segfaults on AV1. Loading
    # torchcodec first (when installed) makes the two safe in one process.
    _importable("torchcodec.decoders")
    from vidlab.io.backends.decord import DecordBackend

    return DecordBackend()


# name -> (module that must import, factory, how to install)
_BACKENDS: dict[str, tuple[str, Callable[[], VideoBackend], str]] = {
    "pyav": ("av", _make_pyav, "pip install av"),
    "torchcodec": (
        "torchcodec.decoders",
        _make_torchcodec,
        "pip install 'vidlab[torchcodec]' plus FFmpeg shared libraries; it cannot load after decord2 in one process",
    ),
    "decord": ("decord", _make_decord, "pip install 'vidlab[decord]' (decord2)"),
}


@functools.cache
def _importable(module: str) -> bool:
    try:
        if importlib.util.find_spec(module) is None:
            return False
    except ModuleNotFoundError:  # parent package missing
        return False
    if module.startswith("torchcodec") and module not in sys.modules and "decord" in sys.modules:
        return False  # see _make_decord: torchcodec after decord2 crashes
    try:
        importlib.import_module(module)
    except Exception:  # noqa: BLE001 - a broken install (e.g. missing FFmpeg libraries) means unavailable
        return False
    return True


def available_backends() -> list[str]:
    """Names of the backends whose libraries import on this machine, default first."""
    return [name for name, (module, _, _) in _BACKENDS.items() if _importable(module)]


def check_backend(name: str) -> str:
    """`name` when it is a known backend whose library imports here: datasets check it when they are built, so a
    bad name fails in the main process, not inside a data-loading worker."""
    if name not in _BACKENDS:
        raise BackendUnavailableError(f"unknown video backend {name!r}; known: {', '.join(_BACKENDS)}")
    module, _, install = _BACKENDS[name]
    if not _importable(module):
        raise BackendUnavailableError(f"video backend {name!r} is not installed or fails to import ({install})")
    return name


@functools.cache
def get_backend(name: str) -> VideoBackend:
    """The (shared) backend instance called `name`."""
    return _BACKENDS[check_backend(name)][1]()


__all__ = ["DEFAULT_BACKEND", "BackendUnavailableError", "VideoBackend", "available_backends", "check_backend", "get_backend"]
