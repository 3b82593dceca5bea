import os
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
        (["data={num_frames: 3"], r"override 'data={num_frames: 3': invalid YAML: while parsing a flow mapping: did not find expected"),
        (["lr=nan"], "lr must be a finite number, got nan"),
    ],
)
def test_bad_overrides_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(None, overrides, Defaults)
    assert len(str(info.value).splitlines()) == 1


def test_a_non_finite_number_is_named_wherever_it_is(tmp_path):
    (tmp_path / "c.yaml").write_text("model:\n  towers: [{temperature: 0.07}, {temperature: .inf}]\n")
    with pytest.raises(ConfigError, match=r"^model.towers\[1\].temperature must be a finite number, got inf$"):
        load_config(tmp_path / "c.yaml")


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: invalid YAML at line 2, column 1: while parsing a flow sequence: did not find") as info:
        load_config(tmp_path / "bad.yaml")
    assert len(str(info.value).splitlines()) == 1
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")


def test_save_roundtrip(tmp_path):
    cfg = load_config(None, ["lr=0.25"], Defaults)
    save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(tmp_path / "run" / "config.yaml", [], Defaults) == cfg


def test_saving_into_a_folder_that_cannot_be_written_is_a_one_line_error(tmp_path):
    (tmp_path / "runs").write_text("a file where the run folder should go")
    with pytest.raises(ConfigError, match=r"cannot write .*runs/x/config.yaml \(.*runs/x: Not a directory\)$"):
        save_config(load_config(None, [], Defaults), tmp_path / "runs" / "x" / "config.yaml")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_saving_into_a_read_only_folder_says_so(tmp_path):
    (tmp_path / "runs").mkdir(mode=0o555)
    with pytest.raises(ConfigError, match=r"cannot write .*runs/x/config.yaml: the folder is not writable \(.*Permission denied\)$"):
        save_config(load_config(None, [], Defaults), tmp_path / "runs" / "x" / "config.yaml")
    assert not list((tmp_path / "runs").iterdir())


def test_save_leaves_no_partial_file(tmp_path):
    save_config(load_config(None, ["lr=0.25"], Defaults), tmp_path / "config.yaml")
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_list_items_can_be_overridden_by_index(tmp_path):
    (tmp_path / "c.yaml").write_text("data:\n  train:\n    - {path: a.json, weight: 1}\n    - {path: b.json, weight: 1}\n")
    cfg = load_config(tmp_path / "c.yaml", ["data.train.1.path=c.json", "data.train.0.weight=3"])
    assert [d.path for d in cfg.data.train] == ["a.json", "c.json"]
    assert cfg.data.train[0].weight == 3  # parsed as an int, as a dotlist value is
    with pytest.raises(ConfigError, match="train"):
        load_config(tmp_path / "c.yaml", ["data.train.5.path=x"])
