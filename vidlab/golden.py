"""Golden cases: vectors produced by the official research code, checked against vidlab.

A golden folder (``shared/golden`` beside the repository, or any folder of the same format named by the
``VIDLAB_GOLDEN_DIR`` environment variable) has an ``index.json`` listing its cases; each ``<case>.json``
says what it checks and with which official constructor arguments, and ``<case>.safetensors`` holds its
tensors. Every case belongs to a family: its name, or the registered prefix before an underscore
(``fit_spacetime`` -> ``fit``). `FAMILIES` maps a family to the function that checks its cases, so adding a
family is one checker module under `vidlab.golden_checks` plus one line there.

Comparisons: tensors within atol 1e-5 / rtol 1e-4 (`assert_tensor_close`); metrics and frame indices
exactly. A checker raises `GoldenMismatch` listing what differs.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from vidlab.errors import VidlabError

GOLDEN_DIR_ENV = "VIDLAB_GOLDEN_DIR"
TENSOR_ATOL = 1e-5
TENSOR_RTOL = 1e-4
MAX_REPORTED_MISMATCHES = 20


class GoldenError(VidlabError):
    """The golden folder or one of its cases cannot be read (missing, malformed, corrupt, unknown family)."""


class GoldenMismatch(AssertionError):
    """vidlab's output differs from the official code's."""


@dataclass(frozen=True)
class GoldenCase:
    """One case: its name, its folder and the parsed ``<name>.json``."""

    name: str
    folder: Path
    spec: dict[str, Any]

    def tensors(self) -> dict[str, torch.Tensor]:
        """The case's tensors, keyed as the json describes them ('input.', 'output.', 'state_dict.' ...)."""
        from safetensors.torch import load_file

        path = self.folder / f"{self.name}.safetensors"
        if not path.is_file():
            raise GoldenError(f"{path}: golden case {self.name!r} has no tensor file")
        return load_file(path)


Checker = Callable[[GoldenCase], None]


def golden_dir(repo_root: Path) -> Path:
    """The golden folder: ``$VIDLAB_GOLDEN_DIR`` if set, else ``<repo_root>/../shared/golden``."""
    configured = os.environ.get(GOLDEN_DIR_ENV)
    return Path(configured) if configured else repo_root.parent / "shared" / "golden"


def read_index(folder: Path) -> dict[str, Any]:
    """The folder's ``index.json``, with a message that says how to point vidlab at the right folder."""
    index_path = folder / "index.json"
    if not index_path.is_file():
        raise GoldenError(
            f"no golden index at {index_path}: the golden vectors live in shared/golden beside the repository; "
            f"set {GOLDEN_DIR_ENV} to a folder holding index.json to use another"
        )
    index = _read_json(index_path)
    if not isinstance(index.get("cases"), dict):
        raise GoldenError(f"{index_path}: expected a 'cases' mapping of case name -> description")
    return index


def list_cases(folder: Path) -> list[str]:
    """Names of the cases ``index.json`` lists, in its order."""
    return list(read_index(folder)["cases"])


def load_case(folder: Path, name: str) -> GoldenCase:
    """Read one case after checking its files against the sizes and sha256 sums the index records."""
    index = read_index(folder)
    if name not in index["cases"]:
        raise GoldenError(f"{folder / 'index.json'}: no case named {name!r}")
    recorded = index.get("files", {})
    for file_name in index["cases"][name].get("files", [f"{name}.json"]):
        _verify_file(folder / file_name, recorded.get(file_name))
    return GoldenCase(name, folder, _read_json(folder / f"{name}.json"))


def family_of(name: str) -> str:
    """The registered family of a case name: the name itself, or its longest registered '<family>_' prefix."""
    if name in FAMILIES:
        return name
    prefixes = [family for family in FAMILIES if name.startswith(family + "_")]
    if not prefixes:
        raise GoldenError(
            f"golden case {name!r} belongs to no known family ({', '.join(sorted(FAMILIES))}); "
            "register its checker in vidlab/golden.py FAMILIES"
        )
    return max(prefixes, key=len)


def run_case(folder: Path, name: str) -> None:
    """Check one case; raises `GoldenMismatch` on a difference."""
    checker_of(family_of(name))(load_case(folder, name))


def assert_tensor_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Golden tolerance for tensors (atol 1e-5, rtol 1e-4), reported as a GoldenMismatch naming `what`."""
    try:
        torch.testing.assert_close(actual, expected, atol=TENSOR_ATOL, rtol=TENSOR_RTOL)
    except AssertionError as e:
        raise GoldenMismatch(f"{what}: {e}") from None


class Mismatches:
    """Collects every difference of a case so one run reports them all, not just the first."""

    def __init__(self, case: str):
        self.case = case
        self.items: list[str] = []
        self.checked = 0

    def expect(self, ok: bool, message: str) -> None:
        self.checked += 1
        if not ok:
            self.items.append(message)

    def raise_if_any(self) -> None:
        if self.checked == 0:
            raise GoldenMismatch(f"{self.case}: the case holds nothing vidlab knows how to compare")
        if self.items:
            shown = "\n  ".join(self.items[:MAX_REPORTED_MISMATCHES])
            more = len(self.items) - MAX_REPORTED_MISMATCHES
            tail = f"\n  ... and {more} more" if more > 0 else ""
            raise GoldenMismatch(f"{self.case}: {len(self.items)} of {self.checked} checks differ:\n  {shown}{tail}")


Outputs = dict[str, Callable[[], torch.Tensor]]  # golden tensor name -> how vidlab computes it (lazily)


def suggested_tolerance(spec: dict[str, Any], *keys: str) -> tuple[float, float]:
    """(atol, rtol) a case's json suggests under `tolerance(s).suggested` (the first of `keys` present there
    replaces `atol`), else the golden defaults."""
    suggested = spec.get("tolerance", spec.get("tolerances", {})).get("suggested", {})
    atol = next((float(suggested[k]) for k in keys if k in suggested), float(suggested.get("atol", TENSOR_ATOL)))
    return atol, float(suggested.get("rtol", TENSOR_RTOL))


def expected_outputs(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The tensors of a case that vidlab must reproduce: its `output.` and `debug.` entries."""
    return [name for name in tensors if name.startswith(("output.", "debug."))]


def compare_outputs(
    found: Mismatches,
    tensors: dict[str, torch.Tensor],
    computed: Outputs,
    names: list[str] | None = None,
    tolerance: tuple[float, float] | Callable[[str], tuple[float, float]] = (TENSOR_ATOL, TENSOR_RTOL),
    label: str = "",
) -> None:
    """Each named tensor (default: `expected_outputs`) needs a vidlab counterpart in `computed`: integer tensors
    equal, float ones close at `tolerance` (a pair, or a function of the name)."""
    prefix = f"{label}: " if label else ""
    with torch.no_grad():
        for name in expected_outputs(tensors) if names is None else names:
            if name not in computed:
                found.expect(False, f"{prefix}no vidlab counterpart for {name}")
                continue
            got, want = computed[name](), tensors[name]
            if tuple(got.shape) != tuple(want.shape):
                found.expect(False, f"{prefix}{name}: shape {tuple(got.shape)}, golden {tuple(want.shape)}")
            elif not want.is_floating_point():
                got = got.to(want.dtype)
                found.expect(torch.equal(got, want), f"{prefix}{name}: {int((got != want).sum())} values differ")
            else:
                atol, rtol = tolerance(name) if callable(tolerance) else tolerance
                got = got.to(want.dtype)
                diff = (got - want).abs().max().item() if want.numel() else 0.0
                ok = torch.allclose(got, want, atol=atol, rtol=rtol)
                found.expect(ok, f"{prefix}{name}: max abs diff {diff:.3g} (atol {atol}, rtol {rtol})")


# A family's checker is "module:function" under vidlab.golden_checks, imported only when its cases run.
FAMILIES: dict[str, str] = {
    "sampling": "sampling:check_sampling",
    "metrics": "metrics:check_metrics",
    "fit": "fit:check_fit",
    "clip_visual": "clip:check_clip_visual",
    "evl": "clip:check_evl",
    "singularity": "singularity:check_singularity",
    "vimpac": "vimpac:check_vimpac",
    "gdt": "gdt:check_gdt",
    "stica": "gdt:check_stica",
}


def checker_of(family: str) -> Checker:
    module, function = FAMILIES[family].split(":")
    return getattr(importlib.import_module(f"vidlab.golden_checks.{module}"), function)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise GoldenError(f"{path}: golden file is missing")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GoldenError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise GoldenError(f"{path}: expected a JSON object at the top level")
    return data


def _verify_file(path: Path, recorded: dict[str, Any] | None) -> None:
    """A listed file must exist and, where the index records them, match its size and sha256."""
    if not path.is_file():
        raise GoldenError(f"{path}: golden file listed in index.json is missing")
    if recorded is None:
        return
    if path.stat().st_size != recorded.get("bytes", path.stat().st_size):
        raise GoldenError(
            f"{path}: size {path.stat().st_size} differs from index.json's {recorded['bytes']} (corrupt copy?)"
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if "sha256" in recorded and digest != recorded["sha256"]:
        raise GoldenError(f"{path}: sha256 differs from index.json (corrupt or edited golden file)")
