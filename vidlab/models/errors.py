"""Typed errors of the model layer: a bad checkpoint file, a state dict that does not fit, a bad input."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vidlab.errors import VidlabError

if TYPE_CHECKING:
    from vidlab.models.checkpoint import LoadReport


class CheckpointError(VidlabError):
    """A checkpoint or weights file cannot be used: `path` says which, the message says why."""

    def __init__(self, path: str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class UnsafeCheckpointError(CheckpointError):
    """The file would run code when unpickled (it references a callable vidlab refuses to build)."""


class StateDictMismatchError(CheckpointError):
    """The mapped weights do not fit the model exactly; `report` lists the missing/unexpected/misshapen keys."""

    def __init__(self, path: str, report: LoadReport):
        self.report = report
        super().__init__(path, "weights do not match the model (strict load)\n" + report.format())


class ModelInputError(VidlabError, ValueError):
    """A tensor given to a model has the wrong shape or size for its configuration."""
