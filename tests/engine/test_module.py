"""VidlabModule: a recipe's named loss terms logged apart and summed; gradient clipping, Lightning's own norm
clipping everywhere except under FSDP, whose sharded gradients need FSDP's `clip_grad_norm_` (Lightning refuses to
clip them; checked on a GPU, see issue 4)."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from omegaconf import OmegaConf
from torch import nn
from torch.distributed.fsdp import FullyShardedDataParallel

from vidlab.engine.module import VidlabModule


class _RecordingFSDP(FullyShardedDataParallel):
    """Passes the isinstance check without a process group; records what it is asked to clip."""

    def __init__(self) -> None:
        nn.Module.__init__(self)
        self.clipped: list[float] = []

    def clip_grad_norm_(self, max_norm: float, norm_type: float = 2.0) -> torch.Tensor:
        self.clipped.append(max_norm)
        return torch.tensor(0.0)


def _module_with_grads(wrapped: nn.Module | None) -> tuple[VidlabModule, nn.Linear, torch.optim.Optimizer]:
    model = nn.Linear(4, 4)
    module = VidlabModule(recipe=None, model=model, cfg=OmegaConf.create({}))  # type: ignore[arg-type]
    module._trainer = SimpleNamespace(model=wrapped if wrapped is not None else module)
    for param in model.parameters():
        param.grad = torch.full_like(param, 10.0)
    return module, model, torch.optim.SGD(model.parameters(), lr=0.1)


def test_fsdp_gradients_are_clipped_by_fsdp():
    fsdp = _RecordingFSDP()
    module, model, optimizer = _module_with_grads(fsdp)
    module.configure_gradient_clipping(optimizer, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
    assert fsdp.clipped == [1.0]
    assert all(torch.all(p.grad == 10.0) for p in model.parameters())  # left to FSDP, untouched here


def test_other_strategies_use_lightnings_clipping(monkeypatch):
    module, _, optimizer = _module_with_grads(None)
    calls: list[tuple[float | None, str | None]] = []
    monkeypatch.setattr(
        VidlabModule, "clip_gradients", lambda self, opt, gradient_clip_val=None, gradient_clip_algorithm=None:
        calls.append((gradient_clip_val, gradient_clip_algorithm)),
    )
    module.configure_gradient_clipping(optimizer, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
    assert calls == [(1.0, "norm")]


class _TermsRecipe:
    """A recipe whose loss comes as named terms."""

    def training_loss(self, model: nn.Module, batch: dict, gather) -> dict[str, torch.Tensor]:
        weight = model.weight.sum()
        return {"loss_a": weight * 2.0, "loss_b": weight + 1.0}


def test_named_loss_terms_are_logged_apart_and_summed(monkeypatch):
    model = nn.Linear(2, 2)
    module = VidlabModule(recipe=_TermsRecipe(), model=model, cfg=OmegaConf.create({}))  # type: ignore[arg-type]
    logged: dict[str, torch.Tensor] = {}
    monkeypatch.setattr(VidlabModule, "log", lambda self, name, value, **kwargs: logged.__setitem__(name, value))
    loss = module.training_step({}, 0)
    weight = model.weight.sum().detach()
    assert torch.allclose(loss, weight * 3.0 + 1.0)
    assert loss.requires_grad  # the sum is what trains
    assert set(logged) == {"train/loss", "train/loss_a", "train/loss_b"}
    assert torch.allclose(logged["train/loss_a"], weight * 2.0) and not logged["train/loss_a"].requires_grad
