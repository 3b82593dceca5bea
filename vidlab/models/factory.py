"""Model registry and `create_model`: architectures are small YAML files, weights come separately.

- A *family* (e.g. `frozen_in_time`) registers its typed config defaults, a builder and a state-dict
  adapter; a YAML file under `vidlab/models/configs/` names a family and sets its sizes. `list_models()`
  lists those files, `create_model(name)` builds one.
- A *checkpoint format* (e.g. the official FiT trainer file) registers a recogniser and a converter to
  vidlab names; `create_model(..., checkpoint=path)` finds the format, converts, then loads strictly.
- vidlab's own checkpoints (`model.safetensors` + `config.yaml`) need no converter; an official checkpoint
  folder (e.g. VIMPAC's snapshot with its `args.pickle`) is read by a registered folder reader.
"""

from __future__ import annotations

import copy
import importlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import Tensor, nn

from vidlab.config import load_config
from vidlab.errors import ConfigError
from vidlab.models.checkpoint import (
    WEIGHTS_FILE,
    LoadReport,
    MappedStateDict,
    load_pickled_checkpoint,
    load_state_dict_strict,
    read_safetensors,
    summarize_keys,
    vidlab_checkpoint_files,
)
from vidlab.models.errors import CheckpointError
from vidlab.models.torchscript import is_torchscript_archive, read_torchscript_state_dict

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "configs"
# Modules that register a family (and its checkpoint formats) when imported.
FAMILY_MODULES = (
    "vidlab.models.fit",
    "vidlab.models.clip",
    "vidlab.models.clip_weights",
    "vidlab.models.evl",
    "vidlab.models.singularity",
    "vidlab.models.vimpac",
    "vidlab.models.dalle_encoder",
    "vidlab.models.vq_tokenizer",
    "vidlab.models.gdt",
    "vidlab.models.gdt_classifier",
)


@dataclass(frozen=True)
class ModelFamily:
    name: str
    config_class: type  # dataclass of typed defaults
    build: Callable[..., nn.Module]  # (cfg, init_weights: bool) -> model
    adapt_state_dict: Callable[[DictConfig, dict[str, Tensor]], tuple[dict[str, Tensor], list[str]]]
    # regexes of model keys a checkpoint may lack (they keep their init and are listed in the report)
    allowed_missing: Callable[[DictConfig], tuple[str, ...]] | None = None
    # dotted keys of the sizes a vidlab checkpoint records beside its weights and a model starting from it adopts;
    # `section.*` is every entry of a section
    size_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class CheckpointFormat:
    name: str
    recognize: Callable[[Any], bool]  # unpickled object -> is it this format?
    convert: Callable[[Any, DictConfig | None], tuple[DictConfig, MappedStateDict]]


@dataclass
class CreatedModel:
    model: nn.Module
    config: DictConfig
    report: LoadReport | None  # None when no checkpoint was loaded


_FAMILIES: dict[str, ModelFamily] = {}
_FORMATS: list[CheckpointFormat] = []
# Readers of official checkpoint FOLDERS (e.g. VIMPAC's snap/<run>/last/): folder -> the object a format
# recognizes, or None when the folder is not theirs.
_FOLDER_READERS: list[Callable[[Path], Any | None]] = []


def register_family(family: ModelFamily) -> None:
    _FAMILIES[family.name] = family


def register_checkpoint_format(
    name: str,
    recognize: Callable[[Any], bool],
    convert: Callable[[Any, DictConfig | None], tuple[DictConfig, MappedStateDict]],
) -> None:
    if all(f.name != name for f in _FORMATS):
        _FORMATS.append(CheckpointFormat(name, recognize, convert))


def register_folder_reader(reader: Callable[[Path], Any | None]) -> None:
    if reader not in _FOLDER_READERS:
        _FOLDER_READERS.append(reader)


def _import_families() -> None:
    for module in FAMILY_MODULES:
        importlib.import_module(module)


def get_family(name: str) -> ModelFamily:
    _import_families()
    if name not in _FAMILIES:
        raise ConfigError(f"unknown model family {name!r} (known: {', '.join(sorted(_FAMILIES))})")
    return _FAMILIES[name]


def list_models() -> list[str]:
    """Names of the architectures shipped with vidlab (YAML files in vidlab/models/configs)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def typed_model_config(raw: Mapping[str, Any] | DictConfig) -> DictConfig:
    """Merge a raw model config over its family's typed defaults (unknown keys / wrong types -> ConfigError)."""
    try:
        raw = raw if isinstance(raw, DictConfig) else OmegaConf.create(dict(raw))
        family_name = raw.get("family")
        if family_name is None:
            raise ConfigError("model config has no 'family' key (e.g. family: frozen_in_time)")
        defaults = OmegaConf.structured(get_family(family_name).config_class)
        return OmegaConf.merge(defaults, raw)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        raise ConfigError(f"model config: {str(e).splitlines()[0]}") from None


def model_config(name_or_config: str | Path | Mapping[str, Any] | DictConfig) -> DictConfig:
    """A registered model name, a YAML file, or a mapping -> typed model config."""
    if isinstance(name_or_config, (Mapping, DictConfig)):
        return typed_model_config(name_or_config)
    registered = CONFIG_DIR / f"{name_or_config}.yaml"
    if isinstance(name_or_config, str) and "/" not in name_or_config and registered.is_file():
        return typed_model_config(load_config(registered))
    path = Path(name_or_config)
    if path.is_file():
        return typed_model_config(load_config(path))
    raise ConfigError(f"unknown model {str(name_or_config)!r}: not a file, and not one of {', '.join(list_models())}")


def apply_overrides(cfg: DictConfig, overrides: Mapping[str, Any]) -> DictConfig:
    """Set `key` or dotted `a.b` entries (`**{"video.num_frames": 8}`); values may be nested mappings."""
    cfg = copy.deepcopy(cfg)
    for key, value in overrides.items():
        try:
            OmegaConf.update(cfg, key, value, merge=True)
        except OmegaConfBaseException as e:
            raise ConfigError(f"override {key}={value!r}: {str(e).splitlines()[0]}") from None
    return cfg


def recorded_config(source: str | Path, family: str) -> DictConfig | None:
    """The model config a vidlab checkpoint of `family` records beside its weights (`config.yaml`); None for any other
    file (an official one records none) or family (`read_checkpoint` names that mismatch when it loads)."""
    files = vidlab_checkpoint_files(source)
    if files is None or files[1] is None:
        return None
    recorded = load_config(files[1])
    return recorded if recorded.get("family") == family else None


def recorded_sizes(source: str | Path, family: str) -> dict[str, Any]:
    """The family's `size_keys` a vidlab checkpoint records beside its weights, as dotted keys; empty for any other
    file (an official checkpoint's sizes come from the config, or from its own shapes)."""
    recorded = recorded_config(source, family)
    if recorded is None:
        return {}
    sizes: dict[str, Any] = {}
    for key in get_family(family).size_keys:
        if key.endswith(".*"):
            section = OmegaConf.select(recorded, key[:-2])
            sizes.update({f"{key[:-2]}.{name}": _plain(value) for name, value in section.items()})
        elif (value := OmegaConf.select(recorded, key)) is not None:
            sizes[key] = _plain(value)
    return sizes


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value


@dataclass(frozen=True)
class Decided:
    """A model key a recipe sets from elsewhere (the data, the tokenizer, the task): a config that states another
    value for it is an error naming `reason`."""

    value: Any
    reason: str


def resolve_model_config(
    section: Mapping[str, Any] | DictConfig,
    family: str,
    *,
    derived: Callable[[DictConfig], Iterable[tuple[str, Mapping[str, Any]]]] | None = None,
    start: str | None = None,
    decided: Mapping[str, Decided] | None = None,
) -> DictConfig:
    """The typed config of the model a recipe trains, from its `model` section (`base`: a registered name or YAML,
    the other keys over it), resolved the one way every recipe does it. Precedence, lowest first: the base; the
    sizes `derived` returns (`(source, dotted sizes)` pairs for the weights or data the requested config refers
    to, e.g. a text tower's folder); the sizes recorded beside the `start` weights (a vidlab checkpoint); the keys
    the section states; the `decided` keys (a stated key that contradicts one is an error)."""
    raw: dict[str, Any] = dict(OmegaConf.to_container(OmegaConf.create(dict(section)), resolve=True))  # type: ignore[arg-type]
    base = raw.pop("base", None)
    stated = apply_overrides(OmegaConf.create({}), raw)
    cfg = apply_overrides(model_config(base), raw) if base else typed_model_config({"family": family, **raw})
    if cfg.family != family:
        raise ConfigError(f"model.base {base!r} is a {cfg.family!r} model; this recipe trains {family!r} models")
    sources = list(derived(cfg)) if derived is not None else []
    if start:
        sources.append((start, recorded_sizes(start, family)))
    for source, sizes in sources:
        adopt_recorded(cfg, sizes, stated, source)
    for key, rule in (decided or {}).items():
        given = OmegaConf.select(stated, key)
        if given is not None and given != rule.value:
            raise ConfigError(f"model.{key}={given!r} contradicts the recipe ({rule.reason}: {rule.value!r}); leave it out")
        OmegaConf.update(cfg, key, rule.value, merge=False)
    return typed_model_config(cfg)


def adopt_recorded(cfg: DictConfig, recorded: Mapping[str, Any], stated: DictConfig, source: str) -> None:
    """Set the dotted `recorded` entries (e.g. the sizes a checkpoint records beside its weights) in `cfg`, except
    those `stated` (what the user's config says under `model`) gives: a model starts at the sizes of the weights it
    starts from unless told otherwise. Logs what changed."""
    adopted = {k: v for k, v in recorded.items() if OmegaConf.select(stated, k) is None and OmegaConf.select(cfg, k) != v}
    if adopted:
        shown = ", ".join(k if isinstance(v, (Mapping, DictConfig)) else f"{k}={v}" for k, v in adopted.items())
        logger.info("model sizes from %s: %s", source, shown)
        for key, value in adopted.items():
            OmegaConf.update(cfg, key, value, merge=False)


def _format_of(obj: Any) -> CheckpointFormat | None:
    return next((fmt for fmt in _FORMATS if fmt.recognize(obj)), None)


def describe_contents(obj: Any, examples: int = 3) -> str:
    """What an unrecognized checkpoint holds, for its error: its top-level keys and a few names of each tensor
    dict in it (the file itself or a value such as 'model' / 'state_dict')."""

    def tensors(value: Any, name: str) -> str | None:
        if not isinstance(value, Mapping) or not value or not all(isinstance(v, Tensor) for v in value.values()):
            return None
        shown = summarize_keys(str(k) for k in value)
        more = f", ... ({len(shown) - examples} more groups)" if len(shown) > examples else ""
        count = f"{len(value)} tensor" + ("s" if len(value) > 1 else "")
        return f"{name}{count}: {', '.join(shown[:examples])}{more}"

    if not isinstance(obj, Mapping):
        return f"a {type(obj).__name__}"
    whole = tensors(obj, "")
    if whole is not None:
        return whole
    keys = [repr(k) for k in list(obj)[:8]] + (["..."] if len(obj) > 8 else [])
    parts = [f"keys {', '.join(keys)}"] + [d for k, v in obj.items() if (d := tensors(v, f"{k!r} holds ")) is not None]
    return "; ".join(parts)


def read_checkpoint(
    checkpoint: str | Path | Mapping[str, Any], cfg: DictConfig | None
) -> tuple[DictConfig, MappedStateDict, str]:
    """(config, vidlab-named weights, source name) of a vidlab checkpoint, a registered foreign format,
    or (with `cfg`) a bare vidlab-named state dict. `cfg`, when given, takes precedence over the file's.
    """
    _import_families()
    if isinstance(checkpoint, Mapping):
        source, obj = "<in-memory checkpoint>", checkpoint
    else:
        source = str(checkpoint)
        files = vidlab_checkpoint_files(checkpoint)
        if files is not None:
            weights, config_file = files
            obj = read_safetensors(weights)
            if _format_of(obj) is None:  # vidlab names; else a foreign safetensors file (e.g. HF CLIPModel)
                if cfg is None and config_file is None:
                    raise CheckpointError(source, "no config.yaml beside the weights: pass the model name or config")
                saved = load_config(config_file) if config_file is not None else None
                if cfg is None:
                    cfg = typed_model_config(saved)
                elif saved is not None and saved.get("family", cfg.family) != cfg.family:
                    raise CheckpointError(source, f"a {saved.family!r} model, but the config builds a {cfg.family!r} one")
                return cfg, MappedStateDict(obj), source
        elif Path(checkpoint).is_dir():
            obj = next((o for read in _FOLDER_READERS if (o := read(Path(checkpoint))) is not None), None)
            if obj is None:
                raise CheckpointError(source, f"a folder without {WEIGHTS_FILE}: not a vidlab checkpoint")
        elif is_torchscript_archive(checkpoint):  # e.g. OpenAI CLIP's ViT-B-16.pt: weights read, code never run
            obj = read_torchscript_state_dict(checkpoint)
        else:
            obj = load_pickled_checkpoint(checkpoint)
    fmt = _format_of(obj)
    if fmt is not None:
        logger.info("%s: %s checkpoint", source, fmt.name)
        converted_cfg, mapped = fmt.convert(obj, cfg)
        return converted_cfg, mapped, source
    if cfg is not None and isinstance(obj, Mapping) and all(isinstance(v, Tensor) for v in obj.values()):
        return cfg, MappedStateDict(dict(obj)), source
    known = ", ".join(["vidlab (model.safetensors + config.yaml)"] + [f.name for f in _FORMATS])
    raise CheckpointError(source, f"unrecognized checkpoint ({describe_contents(obj)}); known formats: {known}")


def create_model_with_report(
    name_or_config: str | Path | Mapping[str, Any] | DictConfig | None = None,
    checkpoint: str | Path | Mapping[str, Any] | None = None,
    **overrides: Any,
) -> CreatedModel:
    """`create_model`, also returning the final config and the checkpoint load report."""
    cfg = model_config(name_or_config) if name_or_config is not None else None
    mapped = source = None
    if checkpoint is not None:
        cfg, mapped, source = read_checkpoint(checkpoint, cfg)
    elif cfg is None:
        raise ConfigError("create_model needs a model name, a config or a checkpoint")
    return build_with_report(apply_overrides(cfg, overrides), mapped, source)


def build_with_report(cfg: DictConfig, mapped: MappedStateDict | None = None, source: str | None = None) -> CreatedModel:
    """Build the model `cfg` describes and, when given, load `mapped` (`read_checkpoint`'s weights) into it strictly:
    for a caller that reads the checkpoint's config before deciding on the model's."""
    family = get_family(cfg.family)
    model = family.build(cfg, init_weights=mapped is None)
    report = None
    if mapped is not None:
        mapped.tensors, notes = family.adapt_state_dict(cfg, mapped.tensors)
        allowed = family.allowed_missing(cfg) if family.allowed_missing is not None else ()
        report = load_state_dict_strict(model, mapped, str(source), allowed_missing=allowed, adapted=notes)
        logger.info("%s", report.format())
    return CreatedModel(model.eval(), cfg, report)


def create_model(
    name_or_config: str | Path | Mapping[str, Any] | DictConfig | None = None,
    checkpoint: str | Path | Mapping[str, Any] | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build a registered architecture (name, YAML file or mapping) and optionally load weights strictly.

    `checkpoint`: a vidlab checkpoint directory (or its `.safetensors`), a foreign checkpoint file such
    as the official FiT `model_best.pth` (read without running any pickled code), or an already loaded
    checkpoint mapping. Without a name, the architecture comes from the checkpoint. `overrides` set
    config entries, dotted for nested ones: `create_model("fit-base-p16-224", **{"video.num_frames": 8})`.
    The model is returned in eval mode.
    """
    return create_model_with_report(name_or_config, checkpoint, **overrides).model
