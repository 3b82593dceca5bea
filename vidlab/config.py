"""YAML configs merged over typed defaults, with `a.b=c` command-line overrides (OmegaConf)."""

from __future__ import annotations

import errno
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Sequence

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vidlab.errors import ConfigError, one_line
from vidlab.files import TEMP_MARK, atomic_path

BASE_KEY = "_base_"


def _load_yaml(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    """Load a YAML file, first merging the files its `_base_` key names (paths relative to it)."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: circular {BASE_KEY} chain")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        cfg = OmegaConf.load(path)
    except Exception as e:  # yaml.YAMLError and friends, an unreadable file
        raise ConfigError(f"{path}: invalid YAML{_yaml_problem(e, position=True)}") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: top level must be a mapping")
    bases = cfg.pop(BASE_KEY, None)
    if bases is None:
        return cfg
    merged = OmegaConf.create()
    for base in [bases] if isinstance(bases, str) else list(bases):
        merged = OmegaConf.merge(merged, _load_yaml(path.parent / base, seen + (path,)))
    return OmegaConf.merge(merged, cfg)


def _yaml_problem(e: Exception, position: bool) -> str:
    """A YAML error in one line (its text spans several): ' at line L, column C: while parsing X: problem'."""
    problem = getattr(e, "problem", None)
    if not problem:
        return f": {one_line(str(e).splitlines()[0] if str(e) else type(e).__name__)}"
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if position and mark is not None else ""
    context = getattr(e, "context", None)
    return f"{where}: {context + ': ' if context else ''}{problem}"


def _non_finite(value: Any, key: str = "") -> Iterator[tuple[str, float]]:
    """(key, value) of every NaN or infinite number under `value` (a plain container)."""
    if isinstance(value, float) and not math.isfinite(value):
        yield key, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _non_finite(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _non_finite(v, f"{key}[{i}]")


def _glued_keys(value: Any) -> list[str]:
    """Keys like 'size:32' with no value: what YAML makes of `{size:32}`, a mapping written without the space."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=False)
    if isinstance(value, dict):
        glued = [str(k) for k, v in value.items() if ":" in str(k) and v is None]
        return glued + [k for v in value.values() for k in _glued_keys(v)]
    if isinstance(value, list):
        return [k for v in value for k in _glued_keys(v)]
    return []


def load_config(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    defaults: Any = None,
) -> DictConfig:
    """Typed defaults (a dataclass or mapping) <- YAML file <- `a.b=c` overrides.

    With a dataclass as defaults, unknown keys and wrongly typed values are errors, reported with
    the offending key instead of a deep traceback. A NaN or infinite number is an error anywhere: it passes
    every range check (`nan >= 0` is False, so `< 0` is too) and fails only once a run is under way.
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. data.num_frames=4)")
    try:
        cfg = OmegaConf.structured(defaults) if defaults is not None else OmegaConf.create()
        if path is not None:
            cfg = OmegaConf.merge(cfg, _load_yaml(Path(path)))
        for item in overrides:
            key, value = item.split("=", 1)
            # Parse the value as OmegaConf parses dotlists, then set it in place so that list items
            # (`data.train.0.path=...`) and typed fields are addressed like any other key.
            try:
                parsed = OmegaConf.from_dotlist([f"value={value}"])["value"]
            except yaml.YAMLError as e:
                raise ConfigError(f"override {item!r}: invalid YAML{_yaml_problem(e, position=False)}") from None
            glued = _glued_keys(parsed)
            if glued:
                raise ConfigError(
                    f"override {item!r}: YAML reads {glued[0]!r} as one key without a value; "
                    "write a space after each colon, e.g. 'data.transform={preset: fit, size: 32}'"
                )
            OmegaConf.update(cfg, key, parsed, merge=True)
    except OmegaConfBaseException as e:
        first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
        key = getattr(e, "full_key", None)
        raise ConfigError(f"{key}: {first_line}" if key else first_line) from None
    for key, value in _non_finite(OmegaConf.to_container(cfg, resolve=False)):
        raise ConfigError(f"{key} must be a finite number, got {value}")
    return cfg


def save_config(cfg: DictConfig, path: str | Path) -> None:
    """Write the resolved config, so a run records exactly what it ran with (atomically). A folder that cannot be
    written is a one-line ConfigError (the folder comes from the config: output_dir, run_dir), not a traceback."""
    path = Path(path)
    text = OmegaConf.to_yaml(cfg, resolve=True)
    try:
        with atomic_path(path) as temp:
            temp.write_text(text)
    except OSError as e:
        failed = path if e.filename is None or TEMP_MARK in Path(e.filename).name else e.filename
        why = ": the folder is not writable" if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else ""
        raise ConfigError(f"cannot write {path}{why} ({failed}: {e.strerror or e})") from None
