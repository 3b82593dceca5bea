from dataclasses import dataclass, field

import pytest

from vidlab.config import load_config, save_config
from vidlab.errors import ConfigError


@dataclass
class DataDefaults:
    num_frames: int = 4
    size: int = 224


@dataclass
class Defaults:
    name: str = "run"
    lr: float = 1e-4
    data: DataDefaults = field(default_factory=DataDefaults)


def test_yaml_over_defaults_then_overrides(tmp_path):
    (tmp_path / "c.yaml").write_text("lr: 0.5\ndata:\n  num_frames: 8\n")
    cfg = load_config(tmp_path / "c.yaml", ["data.size=112", "name=x"], Defaults)
    assert (cfg.lr, cfg.data.num_frames, cfg.data.size, cfg.name) == (0.5, 8, 112, "x")


def test_base_chain_is_merged_in_order(tmp_path):
    (tmp_path / "base.yaml").write_text("lr: 0.1\nname: base\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\nname: child\n")
    cfg = load_config(tmp_path / "child.yaml", [], Defaults)
    assert (cfg.lr, cfg.name) == (0.1, "child")
    assert "_base_" not in cfg


def test_circular_base_is_reported(tmp_path):
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(tmp_path / "a.yaml")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.num_frame=3"], "num_frame"),  # unknown key, typo
        (["data.num_frames=four"], "num_frames"),  # wrong type
        (["lr"], "key=value"),  # not an override
        # YAML reads {a:b} as the key 'a:b': say so, instead of an unknown key 'a:b' deep in the config
        (["data={num_frames:3}"], "YAML reads 'num_frames:3' as one key without a value; write a space after each colon"),
        (["data.list=[{a: 1, b:2}]"], "YAML reads 'b:2' as one key"),
    ],
)
def test_bad_overrides_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides, Defaults)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")


def test_save_roundtrip(tmp_path):
    cfg = load_config(None, ["lr=0.25"], Defaults)
    save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(tmp_path / "run" / "config.yaml", [], Defaults) == cfg


def test_list_items_can_be_overridden_by_index(tmp_path):
    (tmp_path / "c.yaml").write_text("data:\n  train:\n    - {path: a.json, weight: 1}\n    - {path: b.json, weight: 1}\n")
    cfg = load_config(tmp_path / "c.yaml", ["data.train.1.path=c.json", "data.train.0.weight=3"])
    assert [d.path for d in cfg.data.train] == ["a.json", "c.json"]
    assert cfg.data.train[0].weight == 3  # parsed as an int, as a dotlist value is
    with pytest.raises(ConfigError, match="train"):
        load_config(tmp_path / "c.yaml", ["data.train.5.path=x"])
