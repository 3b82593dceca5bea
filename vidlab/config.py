"""YAML configs merged over typed defaults, with `a.b=c` command-line overrides (OmegaConf)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vidlab.errors import ConfigError

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
    except Exception as e:  # yaml.YAMLError and friends carry line numbers in their text
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: top level must be a mapping")
    bases = cfg.pop(BASE_KEY, None)
    if bases is None:
        return cfg
    merged = OmegaConf.create()
    for base in [bases] if isinstance(bases, str) else list(bases):
        merged = OmegaConf.merge(merged, _load_yaml(path.parent / base, seen + (path,)))
    return OmegaConf.merge(merged, cfg)


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
    the offending key instead of a deep traceback.
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
            parsed = OmegaConf.from_dotlist([f"value={value}"])["value"]
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
    return cfg


def save_config(cfg: DictConfig, path: str | Path) -> None:
    """Write the resolved config, so a run records exactly what it ran with."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(OmegaConf.to_yaml(cfg, resolve=True))
