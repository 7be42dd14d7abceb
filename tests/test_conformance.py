"""The wrapper behaves as a torch optimizer (issue 10, item 14), in the spirit of torch's
OptimizerInfo database: for each wrapped optimizer and implementation (for-loop, foreach, fused
on the CPU), step hooks, state-dict round trips that resume bit for bit, state-dict hooks,
pickling and deepcopy, zero_grad both ways, add_param_group and LR schedulers."""

from __future__ import annotations

import copy
import pickle
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from sigua_optim import SIGUAOptimizer
from sigua_optim.conditions import BandSelected

MakeBase = Callable[[Any], torch.optim.Optimizer]


def variants() -> list[Any]:
    """(name, constructor) for every optimizer and implementation tested."""
    out = []
    for cls, extra in (
        (torch.optim.SGD, {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
        (torch.optim.Adam, {"weight_decay": 0.01}),
        (torch.optim.AdamW, {"amsgrad": True}),
    ):
        for impl in ({"foreach": False}, {"foreach": True}, {"fused": True}):
            kwargs = {"lr": 0.05, **extra, **impl}
            name = f"{cls.__name__}-{next(iter(impl))}"
            out.append(pytest.param(lambda params, cls=cls, kwargs=kwargs: cls(params, **kwargs), id=name))
    return out


def setup(make_base: MakeBase, seed: int = 0) -> tuple[torch.nn.Module, SIGUAOptimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    opt = SIGUAOptimizer(make_base(model.parameters()), BandSelected(0.4, 0.2, warmup_epochs=2), 0.1)
    return model, opt


def batches(count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 4, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(count)]


def train(model: torch.nn.Module, opt: SIGUAOptimizer, data: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for i, (x, y) in enumerate(data):
        opt.set_epoch(i / 2)
        opt.zero_grad()
        opt.step(F.cross_entropy(model(x), y, reduction="none"))


@pytest.mark.parametrize("make_base", variants())
def test_step_hooks_run(make_base: MakeBase) -> None:
    model, opt = setup(make_base)
    calls: list[str] = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))
    train(model, opt, batches(1))
    loss = F.cross_entropy(model(torch.randn(2, 4)), torch.tensor([0, 1]))
    loss.backward()
    opt.step()  # a plain step, after the caller's backward
    assert calls == ["pre", "post", "pre", "post"]


@pytest.mark.parametrize("make_base", variants())
def test_resume_from_a_state_dict_is_bit_identical(make_base: MakeBase) -> None:
    data = batches(6)
    model, opt = setup(make_base)
    train(model, opt, data[:3])
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    train(model, opt, data[3:])

    resumed_model, resumed = setup(make_base, seed=1)  # other initial weights, no state
    resumed_model.load_state_dict(saved_model)
    resumed.load_state_dict(saved_opt)
    assert resumed.epoch == 1.0 and resumed.condition.epoch == 1.0  # type: ignore[attr-defined]
    train(resumed_model, resumed, data[3:])
    for p, q in zip(model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(p, q)
    ours, theirs = opt.state_dict()["state"], resumed.state_dict()["state"]
    assert ours.keys() == theirs.keys()
    for key, buffers in ours.items():
        assert buffers.keys() == theirs[key].keys()
        assert all(torch.equal(value, theirs[key][name]) for name, value in buffers.items())


@pytest.mark.parametrize("make_base", variants())
def test_state_dict_hooks(make_base: MakeBase) -> None:
    model, opt = setup(make_base)
    train(model, opt, batches(1))
    calls: list[str] = []
    opt.register_state_dict_pre_hook(lambda o: calls.append("save pre"))
    opt.register_state_dict_post_hook(lambda o, sd: calls.append("save post"))
    opt.register_load_state_dict_pre_hook(lambda o, sd: calls.append("load pre"))
    opt.register_load_state_dict_post_hook(lambda o: calls.append("load post"))
    opt.load_state_dict(opt.state_dict())
    assert calls == ["save pre", "save post", "load pre", "load post"]


@pytest.mark.parametrize("make_base", variants())
@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_pickle_and_deepcopy(make_base: MakeBase, how: str) -> None:
    model, opt = setup(make_base)
    train(model, opt, batches(2))
    opt.register_step_post_hook(lambda *args: None)
    clone = pickle.loads(pickle.dumps(opt)) if how == "pickle" else copy.deepcopy(opt)
    assert clone.param_groups is clone.optimizer.param_groups
    assert (clone.gamma, clone.epoch, clone.reduction, clone.nonfinite, clone.selection_scope) == (
        0.1,
        0.5,
        "paper",
        "raise",
        "global",
    )
    assert repr(clone.condition) == repr(opt.condition)
    assert not clone._optimizer_step_post_hooks  # hooks are not copied, as in torch.optim
    for a, b in zip(opt.state.values(), clone.state.values(), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("make_base", variants())
@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad(make_base: MakeBase, set_to_none: bool) -> None:
    model, opt = setup(make_base)
    train(model, opt, batches(1))
    assert all(p.grad is not None for p in model.parameters())
    opt.zero_grad(set_to_none=set_to_none)
    for p in model.parameters():
        assert p.grad is None if set_to_none else torch.count_nonzero(p.grad) == 0  # type: ignore[arg-type]


@pytest.mark.parametrize("make_base", variants())
def test_add_param_group(make_base: MakeBase) -> None:
    model, opt = setup(make_base)
    extra = torch.nn.Parameter(torch.ones(3))
    opt.add_param_group({"params": [extra], "lr": 0.5})
    assert len(opt.param_groups) == 2 and opt.param_groups[1]["lr"] == 0.5
    x, y = batches(1)[0]
    opt.step(F.cross_entropy(model(x) * extra, y, reduction="none"))
    assert not torch.equal(extra.detach(), torch.ones(3))
    restored = setup(make_base)[1]
    restored.add_param_group({"params": [torch.nn.Parameter(torch.ones(3))], "lr": 0.5})
    restored.load_state_dict(opt.state_dict())
    assert restored.param_groups[1]["lr"] == 0.5


@pytest.mark.parametrize("make_base", variants())
def test_lr_schedulers(make_base: MakeBase) -> None:
    model, opt = setup(make_base)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "lr_scheduler.step() before optimizer.step()"
        for x, y in batches(3):
            opt.zero_grad()
            opt.step(F.cross_entropy(model(x), y, reduction="none"))
            scheduler.step()
    assert opt.optimizer.param_groups[0]["lr"] == pytest.approx(0.05 / 8)
    resumed = torch.optim.lr_scheduler.StepLR(setup(make_base)[1], step_size=1, gamma=0.5)
    resumed.load_state_dict(scheduler.state_dict())
    assert resumed.last_epoch == 3
