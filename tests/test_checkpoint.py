"""Checkpoints (issue 10, item 14): the whole dict is checked before any part loads."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from sigua_optim import SIGUAOptimizer
from sigua_optim.conditions import AllGood, BandSelected, NonNegativeCorrection, SmallLoss
from sigua_optim.noise import pair, symmetric


def trained(condition: Any = None, gamma: float = 0.05) -> tuple[torch.nn.Module, SIGUAOptimizer]:
    """A model and an Adam-based optimizer at epoch 2 that has taken one step (it has state)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = SIGUAOptimizer(torch.optim.Adam(model.parameters(), lr=0.1), condition or SmallLoss(0.3), gamma)
    opt.set_epoch(2)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    out = model(x)
    inputs = {"logits": out, "targets": y} if isinstance(condition, NonNegativeCorrection) else {}
    opt.step(F.cross_entropy(out, y, reduction="none"), **inputs)
    return model, opt


def equal(a: Any, b: Any) -> bool:
    """Deep equality of state dicts, tensors compared bit for bit, NaN equal to NaN."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
    return a is b or bool(a == b) or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)


def assert_refused(
    error: type[Exception], match: str, corrupt: Callable[[dict[str, Any]], Any], condition: Any = None
) -> None:
    """Load a corrupted copy of a checkpoint into a fresh optimizer: refused, nothing changed."""
    _, source = trained(condition)
    saved = corrupt(copy.deepcopy(source.state_dict()))
    model, opt = trained(copy.deepcopy(condition))
    opt.gamma = 0.5
    opt.set_epoch(7)
    params, before = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    with pytest.raises(error, match=match):
        opt.load_state_dict(saved)
    assert equal(model.state_dict(), params)
    assert equal(opt.state_dict(), before)


def without(key: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def corrupt(saved: dict[str, Any]) -> dict[str, Any]:
        del saved["sigua"][key]
        return saved

    return corrupt


def setting(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def corrupt(saved: dict[str, Any]) -> dict[str, Any]:
        inner = saved
        for key in path[:-1]:
            inner = inner[key]
        inner[path[-1]] = value
        return saved

    return corrupt


@pytest.mark.parametrize(
    ("error", "match", "corrupt"),
    [
        (TypeError, "state_dict must be a dict, got NoneType", lambda saved: None),
        (ValueError, r"state_dict\['sigua'\] lacks 'gamma'", without("gamma")),
        (ValueError, r"state_dict\['sigua'\] lacks 'epoch'", without("epoch")),
        (TypeError, r"state_dict\['sigua'\] must be a dict, got str", setting(("sigua",), "x")),
        (
            ValueError,
            r"state_dict\['sigua'\]\['gamma'\] must be a finite number",
            setting(("sigua", "gamma"), 2.0),
        ),
        (
            TypeError,
            r"state_dict\['sigua'\]\['epoch'\] must be a real number",
            setting(("sigua", "epoch"), "3"),
        ),
        (
            ValueError,
            r"state_dict\['sigua'\]\['reduction'\] must be one of",
            setting(("sigua", "reduction"), "mean"),
        ),
        (
            ValueError,
            r"state_dict\['sigua'\]\['reduction'\] must be one of",
            setting(("sigua", "reduction"), "bogus"),
        ),
        (
            TypeError,
            r"state_dict\['sigua'\]\['reduction'\] must be a string",
            setting(("sigua", "reduction"), None),
        ),
        # a bad condition state: before, the Adam state, lr and epoch had loaded when it raised
        (
            ValueError,
            r"epoch must be a finite number",
            setting(("sigua", "condition", "state", "epoch"), -1.0),
        ),
        (ValueError, r"condition's state must have an 'epoch'", setting(("sigua", "condition", "state"), {})),
        (
            ValueError,
            r"state_dict lacks 'state'",
            lambda saved: {k: v for k, v in saved.items() if k != "state"},
        ),
        (
            TypeError,
            r"state_dict\['param_groups'\]\[0\]\['lr'\] must be of the kind of",
            setting(("param_groups", 0, "lr"), "x"),
        ),
        (TypeError, r"\['betas'\] must be of the kind of", setting(("param_groups", 0, "betas"), (0.9,))),
        (
            ValueError,
            r"state_dict\['param_groups'\]\[0\] lacks the hyperparameter 'lr'",
            lambda s: s["param_groups"][0].pop("lr") and s,
        ),
        (
            ValueError,
            r"\['exp_avg'\] has shape \(4, 3\), its parameter \(3, 4\)",
            setting(("state", 0, "exp_avg"), torch.zeros(4, 3)),
        ),
        (
            ValueError,
            r"\['exp_avg_sq'\] has shape \(2,\), its parameter \(3,\)",
            setting(("state", 1, "exp_avg_sq"), torch.zeros(2)),
        ),
        (ValueError, r"no param group lists a parameter with id 7", setting(("state", 7), {})),
        (
            ValueError,
            r"\['exp_avg'\] has shape \(\), its parameter \(3, 4\)",
            setting(("state", 0, "exp_avg"), torch.tensor(1.0)),
        ),
        (ValueError, r"\['step'\] has shape \(3, 4\)", setting(("state", 0, "step"), torch.ones(3, 4))),
        (
            TypeError,
            r"\['exp_avg'\] must be a floating-point tensor, got None",
            setting(("state", 0, "exp_avg"), None),
        ),
        (ValueError, r"\['params'\] must list the 2 ids", setting(("param_groups", 0, "params"), [0])),
    ],
)
def test_corrupted_checkpoint_refused_before_anything_loads(
    error: type[Exception], match: str, corrupt: Callable[[dict[str, Any]], Any]
) -> None:
    assert_refused(error, match, corrupt)


@pytest.mark.parametrize(
    ("saved_with", "loaded_into", "match"),
    [
        (
            BandSelected(0.3, 0.1),
            SmallLoss(0.3),
            "saved with a condition of type 'sigua_optim.conditions.small_loss.BandSelected'",
        ),
        (SmallLoss(0.3), AllGood(), "saved with a condition of type"),
        (SmallLoss(0.3), SmallLoss(0.4), r"noise_rate_setting=0\.3 saved, 0\.4 here"),
        (SmallLoss(0.3, 5), SmallLoss(0.3, 10), r"warmup_epochs=5\.0 saved, 10\.0 here"),
        (BandSelected(0.3, 0.1), BandSelected(0.3, 0.2), r"band=0\.1 saved, 0\.2 here"),
        (SmallLoss(0.3, semantics="official"), SmallLoss(0.3), r"semantics='official' saved, 'paper' here"),
        (
            NonNegativeCorrection(symmetric(3, 0.2)),
            NonNegativeCorrection(pair(3, 0.2)),
            r"differs.*transition_matrix=",
        ),
        (
            NonNegativeCorrection(symmetric(3, 0.2)),
            NonNegativeCorrection(symmetric(3, 0.2), ascend=False),
            "ascend=True saved",
        ),
    ],
)
def test_checkpoint_of_another_condition_refused(saved_with: Any, loaded_into: Any, match: str) -> None:
    _, source = trained(saved_with)
    saved = copy.deepcopy(source.state_dict())
    model, opt = trained(loaded_into)
    params, before = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(saved)
    assert equal(model.state_dict(), params) and equal(opt.state_dict(), before)


def test_the_checkpoints_gamma_and_reduction_win_like_the_learning_rate() -> None:
    _, source = trained(gamma=0.05)
    source.reduction = "official"
    source.param_groups[0]["lr"] = 0.02
    _, opt = trained(gamma=0.5)
    opt.load_state_dict(source.state_dict())
    assert (opt.gamma, opt.reduction, opt.param_groups[0]["lr"], opt.epoch) == (0.05, "official", 0.02, 2.0)


def test_state_dict_hooks_run_on_the_wrapper() -> None:
    """torch's state-dict hooks fire on the wrapper as on a plain optimizer (they never did)."""
    _, opt = trained()
    calls: list[str] = []
    opt.register_state_dict_pre_hook(lambda o: calls.append("save pre"))
    opt.register_state_dict_post_hook(lambda o, sd: {**sd, "extra": 1})
    opt.register_load_state_dict_pre_hook(lambda o, sd: {k: v for k, v in sd.items() if k != "extra"})
    opt.register_load_state_dict_post_hook(lambda o: calls.append("load post"))
    saved = opt.state_dict()
    assert saved["extra"] == 1 and calls == ["save pre"]
    opt.load_state_dict(saved)  # the pre-hook removes "extra", which nothing else would take
    assert calls == ["save pre", "load post"]


def test_a_condition_without_state_round_trips() -> None:
    def halves(losses: torch.Tensor, *, valid: torch.Tensor | None = None) -> Any:
        from sigua_optim.conditions import Selection

        return Selection(losses <= losses.median(), losses > losses.median())

    _, source = trained(halves)
    _, opt = trained(halves)
    opt.load_state_dict(source.state_dict())
    assert source.state_dict()["sigua"]["condition"]["type"].endswith("halves")


def test_steps_per_epoch_position_resumes_bit_identically() -> None:
    """A run with steps_per_epoch saved mid-epoch resumes at the same fractional epoch."""

    def run(steps: int, opt: SIGUAOptimizer, model: torch.nn.Module) -> None:
        for i in range(steps):
            torch.manual_seed(100 + i)
            x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
            opt.zero_grad()
            opt.step(F.cross_entropy(model(x), y, reduction="none"))

    def fresh() -> tuple[torch.nn.Module, SIGUAOptimizer]:
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        base = torch.optim.Adam(model.parameters(), lr=0.1)
        return model, SIGUAOptimizer(base, BandSelected(0.4, 0.2, warmup_epochs=2), 0.05, steps_per_epoch=4)

    model, opt = fresh()
    opt.set_epoch(1)
    run(6, opt, model)  # epoch 1 + 6 / 4 = 2.5
    saved, params = copy.deepcopy(opt.state_dict()), copy.deepcopy(model.state_dict())
    run(3, opt, model)

    twin_model, twin = fresh()
    twin_model.load_state_dict(params)
    twin.load_state_dict(saved)
    assert twin.epoch == 2.5 and twin.condition.epoch == 2.5  # type: ignore[union-attr]
    run(3, twin, twin_model)
    assert twin.epoch == opt.epoch == 3.25
    assert equal(twin_model.state_dict(), model.state_dict())


def test_a_checkpoint_the_wrapped_optimizer_cannot_load_changes_nothing() -> None:
    """Found by the fuzz: Adam's own load raised KeyError after swapping its state in."""

    def only_one_entry_without_step(saved: dict[str, Any]) -> dict[str, Any]:
        del saved["state"][0]
        del saved["state"][1]["step"]
        return saved

    assert_refused(
        ValueError, r"state_dict: the wrapped optimizer refused it \(KeyError", only_one_entry_without_step
    )
