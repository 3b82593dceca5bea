import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from vidlab.engine.config import OptimConfig, ScheduleConfig
from vidlab.engine.optim import build_optimizer, build_scheduler, lr_factor, param_groups, warmup_steps
from vidlab.errors import ConfigError


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))  # 3-D but exempt by name
        self.proj = nn.Linear(4, 4)  # weight decayed, bias exempt
        self.norm = nn.LayerNorm(4)  # 1-D: exempt
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def _cfg(cls, **values):
    return OmegaConf.merge(OmegaConf.structured(cls), values)


def test_no_decay_groups_hold_biases_norms_and_named_parameters():
    model = Tiny()
    decay, exempt = param_groups(model, 0.05, ["cls_token"])
    assert decay["weight_decay"] == 0.05 and exempt["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model.proj.weight)}
    assert {id(p) for p in exempt["params"]} == {id(model.cls_token), id(model.proj.bias), id(model.norm.weight), id(model.norm.bias)}


def test_adamw_skips_frozen_parameters():
    optimizer = build_optimizer(Tiny(), _cfg(OptimConfig, lr=0.1, weight_decay=0.1))
    assert isinstance(optimizer, torch.optim.AdamW)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == 5


def test_lr_groups_give_matching_parameters_their_own_rate_under_the_same_schedule():
    """`optim.lr_groups` from a command-line override: the norm layer trains at 0.5, the rest at optim.lr, both
    warmed up alike; decay and no-decay stay apart within each rate."""
    model = Tiny()
    cfg = OmegaConf.merge(OmegaConf.structured(OptimConfig), {"lr": 0.1, "weight_decay": 0.1},
                          OmegaConf.from_dotlist(["lr_groups=[{patterns: [norm, nothing_else], lr: 0.5}]"]))
    optimizer = build_optimizer(model, cfg)
    by_params = {frozenset(id(p) for p in g["params"]): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups}
    assert by_params == {
        frozenset({id(model.proj.weight)}): (0.1, 0.1),
        frozenset({id(model.cls_token), id(model.proj.bias)}): (0.1, 0.0),
        frozenset({id(model.norm.weight), id(model.norm.bias)}): (0.5, 0.0),
    }
    scheduler = build_scheduler(optimizer, _cfg(ScheduleConfig, warmup_steps=4), 10)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.025, 0.025, 0.125])
    optimizer.step()
    scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.05, 0.05, 0.25])


def test_an_lr_group_that_matches_no_trainable_parameter_is_refused():
    with pytest.raises(ConfigError, match=r"no trainable parameter name matches \[\['frozen'\]\]"):
        param_groups(Tiny(), 0.0, [], [(["frozen"], 1.0)])


def test_warmup_as_ratio_or_steps():
    assert warmup_steps(_cfg(ScheduleConfig, warmup_ratio=0.1), 200) == 20
    assert warmup_steps(_cfg(ScheduleConfig, warmup_steps=7), 200) == 7


def test_cosine_warms_up_linearly_then_decays_to_the_floor():
    factor = lr_factor(_cfg(ScheduleConfig, name="cosine", warmup_steps=4, min_lr_ratio=0.1), 104)
    assert [factor(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert factor(4) == pytest.approx(1.0)
    assert factor(54) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the decay
    assert factor(104) == pytest.approx(0.1)


def test_linear_and_constant_schedules():
    linear = lr_factor(_cfg(ScheduleConfig, name="linear"), 10)
    assert [linear(s) for s in (0, 5, 10)] == pytest.approx([1.0, 0.5, 0.0])
    constant = lr_factor(_cfg(ScheduleConfig, name="constant", warmup_steps=2), 10)
    assert [constant(s) for s in (0, 1, 2, 9)] == pytest.approx([0.5, 1.0, 1.0, 1.0])
