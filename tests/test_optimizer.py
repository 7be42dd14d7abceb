"""SIGUAOptimizer as an optimizer: delegation, schedulers, hooks, checkpoints, and its update."""

from __future__ import annotations

import copy
import pickle
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from sigua_optim import SIGUAOptimizer, reference
from sigua_optim.conditions import AllGood, BandSelected, KnownClean, Selection, SmallLoss
from sigua_optim.testing import DTYPES


def make(
    condition: object = None, gamma: float = 0.01, base: type = torch.optim.SGD, **kwargs: object
) -> tuple[torch.nn.Module, SIGUAOptimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    opt = SIGUAOptimizer(base(model.parameters(), lr=0.1), condition, gamma, **kwargs)  # type: ignore[arg-type]
    return model, opt


def batch(n: int = 16, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_is_an_optimizer_sharing_the_wrapped_state() -> None:
    _model, opt = make(base=torch.optim.Adam)
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups is opt.optimizer.param_groups
    assert opt.state is opt.optimizer.state
    assert opt.defaults is opt.optimizer.defaults
    groups = [dict(g) for g in opt.param_groups]
    opt.param_groups = groups  # frameworks reassign these
    assert opt.optimizer.param_groups is groups
    extra = torch.nn.Parameter(torch.zeros(2))
    opt.add_param_group({"params": [extra]})
    assert opt.optimizer.param_groups[-1]["params"] == [extra]


def test_zero_grad_is_forwarded() -> None:
    model, opt = make()
    x, y = batch()
    opt.step(F.cross_entropy(model(x), y, reduction="none"))
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_lr_scheduler_attaches_without_warnings() -> None:
    model, opt = make(SmallLoss(0.5))
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    x, y = batch()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for epoch in range(3):
            opt.set_epoch(epoch)
            opt.zero_grad()
            opt.step(F.cross_entropy(model(x), y, reduction="none"))
            scheduler.step()
    assert opt.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)


def test_step_hooks_fire_on_the_wrapper() -> None:
    model, opt = make()
    calls: list[str] = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))
    x, y = batch()
    opt.step(F.cross_entropy(model(x), y, reduction="none"))
    opt.step()
    assert calls == ["pre", "post", "pre", "post"]


def test_profiler_label_and_global_hooks_without_the_wrapper_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch's step wrapper (record_function + hooks) runs only when something would see it."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    model, opt = make()
    x, y = batch()
    entered: list[str] = []
    enter = torch.autograd.profiler.record_function.__enter__

    def spy(self: torch.autograd.profiler.record_function) -> object:
        entered.append(self.name)
        return enter(self)

    monkeypatch.setattr(torch.autograd.profiler.record_function, "__enter__", spy)
    opt.step(F.cross_entropy(model(x), y, reduction="none"))
    assert entered == ["Optimizer.step#SGD.step"]  # the wrapped optimizer's own, not ours

    calls: list[str] = []
    handle = register_optimizer_step_post_hook(lambda o, args, kwargs: calls.append(type(o).__name__))
    try:
        opt.zero_grad()
        opt.step(F.cross_entropy(model(x), y, reduction="none"))
    finally:
        handle.remove()
    assert calls == ["SGD", "SIGUAOptimizer"]

    with torch.profiler.profile() as prof:
        opt.zero_grad()
        opt.step(F.cross_entropy(model(x), y, reduction="none"))
    names = {event.name for event in prof.events()}
    assert {"Optimizer.step#SIGUAOptimizer.step", "Optimizer.step#SGD.step"} <= names


def test_plain_step_and_closure_step_the_wrapped_optimizer() -> None:
    model, opt = make()
    reference_model = copy.deepcopy(model)
    reference_opt = torch.optim.SGD(reference_model.parameters(), lr=0.1)
    x, y = batch()
    for m, o in ((model, opt), (reference_model, reference_opt)):
        F.cross_entropy(m(x), y).backward()
        o.step()

        def closure(m: torch.nn.Module = m, o: torch.optim.Optimizer = o) -> torch.Tensor:
            o.zero_grad()
            loss = F.cross_entropy(m(x), y)
            loss.backward()
            return loss

        o.step(closure)  # positional, as Accelerate passes it
        o.step(closure=closure)  # keyword, as Lightning passes it
    for p, q in zip(model.parameters(), reference_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_objective_equals_eq3_and_does_not_step() -> None:
    model, opt = make(BandSelected(0.5, 0.2, warmup_epochs=0), gamma=0.3)
    x, y = batch(20)
    before = [p.detach().clone() for p in model.parameters()]
    losses = F.cross_entropy(model(x), y, reduction="none")
    objective = opt.objective(losses)
    values = losses.detach().double().tolist()
    good, bad = reference.band_selected(values, 0.5, 0.2)
    assert float(objective.detach()) == pytest.approx(reference.algorithm1(values, good, bad, 0.3), rel=1e-6)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    assert all(p.grad is None for p in model.parameters())


def test_per_call_condition_follows_the_epoch_and_gets_inputs() -> None:
    model, opt = make(AllGood())
    opt.set_epoch(7)
    oracle = KnownClean()
    small = SmallLoss(0.5)
    x, y = batch(8)
    clean = torch.tensor([True, False] * 4)
    result = opt.step(F.cross_entropy(model(x), y, reduction="none"), condition=oracle, clean=clean)
    assert result.good.tolist() == clean.tolist() and result.bad.tolist() == (~clean).tolist()
    opt.step(F.cross_entropy(model(x), y, reduction="none"), condition=small)
    assert small.epoch == 7.0


def test_user_condition_is_a_plain_function() -> None:
    def above_mean(losses: torch.Tensor, **_: object) -> Selection:
        bad = losses > losses.mean()
        return Selection(~bad, bad)

    model, opt = make(above_mean, gamma=0.5)
    x, y = batch()
    losses = F.cross_entropy(model(x), y, reduction="none")
    result = opt.step(losses)
    assert torch.equal(result.bad, losses.detach() > losses.detach().mean())


def test_state_dict_round_trip_and_plain_state_dict() -> None:
    condition = BandSelected(0.5, 0.2)
    model, opt = make(condition, gamma=0.05, base=torch.optim.Adam)
    x, y = batch()
    opt.set_epoch(4.5)
    opt.step(F.cross_entropy(model(x), y, reduction="none"))
    saved = copy.deepcopy(opt.state_dict())
    assert saved["sigua"] == {
        "gamma": 0.05,
        "epoch": 4.5,
        "reduction": "paper",
        "condition": {
            "type": "sigua_optim.conditions.small_loss.BandSelected",
            "hyperparameters": {
                "noise_rate_setting": 0.5,
                "warmup_epochs": 10.0,
                "semantics": "paper",
                "max_band": 0.2,
            },
            "state": {"epoch": 4.5},
        },
    }

    _model2, opt2 = make(BandSelected(0.5, 0.2), gamma=0.5, base=torch.optim.Adam)
    opt2.load_state_dict(saved)
    assert opt2.gamma == 0.05 and opt2.epoch == 4.5 and opt2.condition.epoch == 4.5  # type: ignore[attr-defined]
    assert opt2.optimizer.state_dict()["state"][0]["step"] == saved["state"][0]["step"]

    _model3, opt3 = make(base=torch.optim.Adam)
    opt3.load_state_dict(opt.optimizer.state_dict())  # a plain wrapped-optimizer state dict
    assert opt3.epoch == 0.0 and opt3.gamma == 0.01
    torch.testing.assert_close(
        opt3.state[next(iter(opt3.state))]["exp_avg"], opt.state[next(iter(opt.state))]["exp_avg"]
    )


def test_pickles() -> None:
    _model, opt = make(SmallLoss(0.2), gamma=0.2)
    clone = pickle.loads(pickle.dumps(opt))
    assert clone.gamma == 0.2 and isinstance(clone.condition, SmallLoss)
    assert len(clone.param_groups[0]["params"]) == 4
    assert clone.param_groups is clone.optimizer.param_groups


def test_skip_on_nonfinite_changes_nothing() -> None:
    model, opt = make(nonfinite="skip", base=torch.optim.Adam)
    x, y = batch()
    before = copy.deepcopy(model.state_dict())
    losses = F.cross_entropy(model(x), y, reduction="none") * torch.tensor([float("nan")] + [1.0] * 15)
    result = opt.step(losses)
    assert result.skipped
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not opt.state and all(p.grad is None for p in model.parameters())


@given(
    st.sampled_from(DTYPES),
    st.sampled_from(["all", "small", "band", "clean"]),
    st.floats(0.0, 1.0),
    st.integers(1, 24),
    st.integers(0, 2**16),
    st.sampled_from([torch.optim.SGD, torch.optim.Adam]),
)
def test_update_equals_algorithm1_loop(
    dtype: torch.dtype, kind: str, gamma: float, n: int, seed: int, base: type
) -> None:
    """One step of SIGUAOptimizer moves the parameters as Algorithm 1's loop + backward + step."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3).double()
    twin = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)
    clean = torch.rand(n, generator=g) < 0.6
    condition = {
        "all": AllGood(),
        "small": SmallLoss(0.4, warmup_epochs=0),
        "band": BandSelected(0.4, 0.3, warmup_epochs=0),
        "clean": KnownClean(),
    }[kind]
    opt = SIGUAOptimizer(base(model.parameters(), lr=0.05), condition, gamma)
    # The expected masks come from a copy made before the step: KnownClean returns clean= itself
    # as its good mask, so a mask changed in place during the step would otherwise change both sides.
    given = clean.clone()
    inputs = {"clean": clean} if kind == "clean" else {}  # the other conditions take no clean=
    result = opt.step(F.cross_entropy(model(x), y, reduction="none").to(dtype), **inputs)

    # Algorithm 1, lines 1-12, with the reference loop's masks.
    losses = F.cross_entropy(twin(x), y, reduction="none").to(dtype)
    good, bad = reference.for_condition(condition)(losses.detach().double().tolist(), clean=given)
    assert result.good.tolist() == good and result.bad.tolist() == bad
    assert torch.equal(clean, given)  # the caller's mask is not modified
    accumulated = torch.zeros((), dtype=torch.float64)
    for i in range(n):
        if good[i]:
            accumulated = accumulated + losses[i].double()
        elif bad[i]:
            accumulated = accumulated - gamma * losses[i].double()
    (accumulated / n).backward()
    base(twin.parameters(), lr=0.05).step()
    tolerance = 8 * torch.finfo(dtype).eps
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=tolerance, atol=tolerance)


def test_finite_losses_whose_objective_overflows_are_not_skipped() -> None:
    """The non-finite check reads the objective first, but judges the losses: 6e4 + 6e4 > fp16 max."""
    weight = torch.nn.Parameter(torch.ones(2, dtype=torch.float16))
    opt = SIGUAOptimizer(
        torch.optim.SGD([weight], lr=1e-9), KnownClean(), 1.0, reduction="official", nonfinite="skip"
    )
    losses = weight * torch.tensor([6e4, -6e4], dtype=torch.float16)
    result = opt.step(losses, clean=torch.tensor([True, False]))
    assert not result.skipped and torch.isinf(result.objective)
    assert weight.grad is not None and torch.equal(weight.grad, torch.tensor([6e4, 6e4], dtype=torch.float16))
