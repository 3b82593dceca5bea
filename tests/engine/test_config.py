import pytest

from vidlab.engine.config import load_train_config, resolve_stages
from vidlab.errors import ConfigError

BASE = """
recipe: fit
name: s
text: {tokenizer: somewhere}
data:
  num_frames: 4
  train: [{name: v, annotations: a.json, batch_size: 8}]
optim: {lr: 1.0e-4}
"""


def _write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_no_stages_is_one_stage_named_train(tmp_path):
    (stage,) = resolve_stages(load_train_config(_write(tmp_path, BASE)))
    assert (stage.index, stage.dirname, stage.config.optim.lr) == (0, "0-train", 1e-4)


def test_each_stage_merges_its_keys_over_the_base(tmp_path):
    text = BASE + """
stages:
  - {name: one, data: {num_frames: 1, train: [{name: i, annotations: b.json, batch_size: 96}]}, optim: {lr: 1.0e-3}}
  - {name: four}
"""
    one, four = resolve_stages(load_train_config(_write(tmp_path, text)))
    assert (one.dirname, one.config.data.num_frames, one.config.optim.lr) == ("0-one", 1, 1e-3)
    assert [t.batch_size for t in one.config.data.train] == [96]  # a list is replaced, not merged
    assert (four.dirname, four.config.data.num_frames, four.config.optim.lr) == ("1-four", 4, 1e-4)
    assert four.config.data.train[0].annotations == "a.json" and not four.config.stages


def test_a_wrong_key_in_a_stage_names_the_stage_and_key(tmp_path):
    with pytest.raises(ConfigError, match=r"stages\[0\] \(one\).*lrr"):
        load_train_config(_write(tmp_path, BASE + "stages:\n  - {name: one, optim: {lrr: 1}}\n"))


def test_wrong_keys_values_and_recipes_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="trainer.nope"):
        load_train_config(_write(tmp_path, BASE), ["trainer.nope=1"])
    with pytest.raises(ConfigError, match="warmup_steps or schedule.warmup_ratio"):
        load_train_config(_write(tmp_path, BASE), ["schedule.warmup_steps=5", "schedule.warmup_ratio=0.1"])
    with pytest.raises(ConfigError, match="precision"):
        load_train_config(_write(tmp_path, BASE), ["trainer.precision=fp8"])
    with pytest.raises(ConfigError, match="unknown recipe 'nope'"):
        load_train_config(_write(tmp_path, "recipe: nope\n"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.max_epochs=0", r"trainer.max_epochs must be >= 1 \(or -1 with trainer.max_steps\), got 0"),
        ("trainer.max_epochs=-1", r"or -1 with trainer.max_steps"),
        ("trainer.max_steps=0", r"trainer.max_steps must be >= 1 \(or -1: max_epochs decides\)"),
        ("trainer.log_every_n_steps=0", "trainer.log_every_n_steps must be >= 1"),
        ("data.num_workers=-1", "data.num_workers must be >= 0, got -1"),
        ("data.steps_per_epoch=0", "data.steps_per_epoch must be >= 1, got 0"),
        ("optim.lr=-0.1", "optim.lr must be >= 0, got -0.1"),
        ("optim.weight_decay=-1", "optim.weight_decay must be >= 0"),
        ("optim.lr_groups=[{patterns: [temporal], lr: -1.0}]", r"optim.lr_groups\[0\].lr must be >= 0"),
        ("optim.betas=[0.9]", r"optim.betas must be two numbers in \[0, 1\), got \[0.9\]"),
        ("optim.betas=[0.9,1.0]", "optim.betas must be two numbers"),
        # NaN passes every `< minimum` check; it and inf are refused for any number of the config
        ("optim.lr=nan", "optim.lr must be a finite number, got nan"),
        ("optim.weight_decay=inf", "optim.weight_decay must be a finite number, got inf"),
        ("optim.lr_groups=[{patterns: [temporal], lr: .nan}]", r"optim.lr_groups\[0\].lr must be a finite number"),
        ("schedule.min_lr_ratio=-.inf", "schedule.min_lr_ratio must be a finite number, got -inf"),
        ("checkpoint.every_n_steps=0", "checkpoint.every_n_steps must be >= 1, got 0"),
        ("checkpoint.keep=-2", "checkpoint.keep must be >= -1, got -2"),
        ("data.transform={size: 32", r"override 'data.transform={size: 32': invalid YAML: while parsing a flow mapping: did not find"),
    ],
)
def test_out_of_range_numbers_are_config_errors(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_train_config(_write(tmp_path, BASE), [override])
    assert len(str(info.value).splitlines()) == 1


def test_a_nan_in_a_stage_is_named_with_its_place(tmp_path):
    with pytest.raises(ConfigError, match=r"stages\[0\].optim.lr must be a finite number, got nan"):
        load_train_config(_write(tmp_path, BASE + "stages:\n  - {name: one, optim: {lr: .nan}}\n"))


def test_epochs_may_be_unbounded_when_steps_bound_the_run(tmp_path):
    cfg = load_train_config(_write(tmp_path, BASE), ["trainer.max_epochs=-1", "trainer.max_steps=100"])
    assert (cfg.trainer.max_epochs, cfg.trainer.max_steps) == (-1, 100)


def test_a_stage_with_an_out_of_range_number_is_caught_too(tmp_path):
    with pytest.raises(ConfigError, match="optim.lr must be >= 0"):
        load_train_config(_write(tmp_path, BASE + "stages:\n  - {name: one, optim: {lr: -1.0}}\n"))


def test_an_unset_required_value_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"required config values not set: text.tokenizer \(set them in the YAML or as KEY=VALUE\)"):
        load_train_config(_write(tmp_path, "recipe: fit\nname: s\n"))
    assert load_train_config(_write(tmp_path, "recipe: fit\nname: s\n"), ["text.tokenizer=somewhere"]).text.tokenizer == "somewhere"
