"""Every step path as safe as ``step(losses)``: the non-finite guard on the plain step and on the
gradients, clipping inside the step, the epoch schedule that cannot be forgotten, refusals of
steps that backward would break half-way, and ``last_result`` on every path."""

from __future__ import annotations

import copy
import math
import pickle
import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from sigua_optim import SIGUAOptimizer, _guard, optimizer
from sigua_optim.conditions import AllGood, BandSelected, NonNegativeCorrection, SmallLoss
from sigua_optim.noise import symmetric

NAN = float("nan")


def setup(
    base: type = torch.optim.Adam, **kwargs: Any
) -> tuple[torch.nn.Module, SIGUAOptimizer, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    opt = SIGUAOptimizer(base(model.parameters(), lr=0.1), BandSelected(0.4, 0.2, 0), 0.2, **kwargs)
    g = torch.Generator().manual_seed(1)
    return model, opt, torch.randn(16, 4, generator=g), torch.randint(0, 3, (16,), generator=g)


def losses_of(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y, reduction="none")


def poisoned(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    losses = losses_of(model, x, y)
    return losses * torch.tensor([1.0, NAN] + [1.0] * (len(losses) - 2))


def snapshot(model: torch.nn.Module, opt: SIGUAOptimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    return copy.deepcopy(model.state_dict()), copy.deepcopy(opt.optimizer.state_dict())


def assert_unchanged(model: torch.nn.Module, opt: SIGUAOptimizer, before: tuple[Any, Any]) -> None:
    params, state = before
    assert all(torch.equal(params[k], v) for k, v in model.state_dict().items())
    after = opt.optimizer.state_dict()
    assert after["param_groups"] == state["param_groups"]
    assert after["state"].keys() == state["state"].keys()
    for key, value in state["state"].items():
        for name, tensor in value.items():
            assert torch.equal(torch.as_tensor(tensor), torch.as_tensor(after["state"][key][name])), name


def trained(**kwargs: Any) -> tuple[torch.nn.Module, SIGUAOptimizer, torch.Tensor, torch.Tensor]:
    """After one good step, so that Adam has state to keep."""
    model, opt, x, y = setup(**kwargs)
    opt.step(losses_of(model, x, y))
    opt.zero_grad()
    return model, opt, x, y


# -- item 2: the plain step after objective() -------------------------------------------------
@pytest.mark.parametrize("clip", [False, True])
def test_plain_step_after_objective_refuses_nan_losses(clip: bool) -> None:
    model, opt, x, y = trained()
    before = snapshot(model, opt)
    opt.objective(poisoned(model, x, y)).backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    with pytest.raises(ValueError, match=r"losses contain NaN or inf \(at indices \[1\]"):
        opt.step()
    assert_unchanged(model, opt, before)
    assert all(p.grad is None for p in model.parameters())


def test_plain_step_after_objective_skips_nan_losses() -> None:
    model, opt, x, y = trained(nonfinite="skip")
    before = snapshot(model, opt)
    opt.objective(poisoned(model, x, y)).backward()
    assert opt.step() is None
    assert opt.last_result is not None and opt.last_result.skipped
    assert_unchanged(model, opt, before)
    opt.objective(losses_of(model, x, y)).backward()  # the next step goes on
    opt.step()
    assert opt.last_result is not None and not opt.last_result.skipped
    assert not torch.equal(before[0]["0.weight"], model.state_dict()["0.weight"])


def test_an_ignored_nan_loss_refuses_the_plain_step() -> None:
    """Weight 0 keeps the NaN out of the gradients, not out of the objective: still refused."""
    model, opt, x, y = trained(nonfinite="skip")
    opt.condition = AllGood()
    losses = losses_of(model, x, y)
    objective = opt.objective(torch.cat([losses[:-1], losses[-1:].detach() * NAN]))
    objective.backward()
    opt.step()
    assert opt.last_result is not None and opt.last_result.skipped


def test_accumulated_objectives_are_all_guarded() -> None:
    model, opt, x, y = trained()
    before = snapshot(model, opt)
    opt.objective(poisoned(model, x[:8], y[:8]), num_items=16).backward()
    opt.objective(losses_of(model, x[8:], y[8:]), num_items=16).backward()
    with pytest.raises(ValueError, match="NaN or inf"):
        opt.step()
    assert_unchanged(model, opt, before)


def test_zero_grad_forgets_the_objectives_of_the_cleared_gradients() -> None:
    model, opt, x, y = trained()
    opt.objective(poisoned(model, x, y)).backward()
    opt.zero_grad()
    opt.objective(losses_of(model, x, y)).backward()
    opt.step()  # no error: the NaN objective's gradients were cleared


def test_closure_step_is_guarded_before_the_update() -> None:
    """Lightning's automatic optimization: step(closure) with backward inside the closure."""
    model, opt, x, y = trained()
    before = snapshot(model, opt)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        objective = opt.objective(poisoned(model, x, y))
        objective.backward()
        return objective

    with pytest.raises(ValueError, match="NaN or inf"):
        opt.step(closure)
    assert_unchanged(model, opt, before)
    opt.nonfinite = "skip"
    assert opt.step(closure) is None
    assert_unchanged(model, opt, before)


def test_plain_steps_of_grad_scaler_and_closure_still_step() -> None:
    model, opt, x, y = setup()
    twin = copy.deepcopy(model)
    twin_opt = SIGUAOptimizer(torch.optim.Adam(twin.parameters(), lr=0.1), BandSelected(0.4, 0.2, 0), 0.2)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    scaler.scale(opt.objective(losses_of(model, x, y))).backward()
    scaler.step(opt)
    scaler.update()

    def closure() -> torch.Tensor:
        objective = twin_opt.objective(losses_of(twin, x, y))
        objective.backward()
        return objective

    loss = twin_opt.step(closure)
    torch.testing.assert_close(loss, opt.last_result.objective)  # type: ignore[union-attr]
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q)


# -- item 3: non-finite gradients from finite losses ----------------------------------------------
def nan_padding_losses(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A model that computes NaN at masked positions (sqrt of a negative) and masks it after."""
    valid = torch.arange(16) % 4 != 0
    out = model(x)
    dirty = torch.where(valid[:, None], out, torch.sqrt(out - 100.0))  # NaN where not valid
    return torch.where(valid, F.cross_entropy(dirty, y, reduction="none"), 0.0)


@pytest.mark.parametrize("path", ["losses", "plain"])
def test_nan_gradients_from_finite_losses_are_refused(path: str) -> None:
    model, opt, x, y = trained()
    before = snapshot(model, opt)
    losses = nan_padding_losses(model, x, y)
    assert torch.isfinite(losses).all()
    with pytest.raises(ValueError, match="gradients contain NaN or inf although the losses are finite"):
        if path == "losses":
            opt.step(losses)
        else:
            opt.objective(losses).backward()
            opt.step()
    assert_unchanged(model, opt, before)


def test_nan_gradient_of_sqrt_at_zero_is_skipped() -> None:
    weight = torch.nn.Parameter(torch.tensor([0.0, 1.0]))
    opt = SIGUAOptimizer(torch.optim.SGD([weight], lr=0.1), nonfinite="skip")
    losses = torch.sqrt(weight) * torch.tensor([0.0, 1.0])  # finite; d/dw sqrt(0) * 0 = inf * 0 = NaN
    assert torch.isfinite(losses).all()
    assert opt.step(losses).skipped
    assert torch.equal(weight.detach(), torch.tensor([0.0, 1.0])) and weight.grad is None


def test_unchecked_lets_nan_gradients_through() -> None:
    model, opt, x, y = trained(nonfinite="unchecked")
    opt.step(nan_padding_losses(model, x, y))
    assert not all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("policy", ["raise", "skip"])
def test_finite_gradients_whose_checked_sum_overflows_still_step(policy: str) -> None:
    """The hot path tests one float32 sum of the objective and the gradients' norms: here
    3e38 + 1.5e38 + 1.5e38 overflows while every loss, norm and gradient is finite, so the
    exact check runs and lets the update through, as a plain step would."""
    first, second = torch.nn.Parameter(torch.ones(1)), torch.nn.Parameter(torch.ones(1))
    opt = SIGUAOptimizer(torch.optim.SGD([first, second], lr=1e-40), AllGood(), nonfinite=policy)  # type: ignore[arg-type]
    losses = torch.cat([first, second]) * 3e38
    total = _guard.hot_total(
        [_guard.Pending(torch.tensor(3e38), losses.detach(), None)], [torch.tensor(1.5e38)] * 2
    )
    assert total is not None and torch.isinf(total)  # the premise: the sum overflows
    result = opt.step(losses)
    assert torch.isfinite(result.objective) and result.skipped is False
    assert first.item() < 1.0 and second.item() < 1.0  # both updated: 1 - 1e-40 * 1.5e38


# -- item 4: clipping inside the step -------------------------------------------------------------
@pytest.mark.parametrize("scaled", [False, True])
def test_max_grad_norm_clips_between_backward_and_step(scaled: bool) -> None:
    model, opt, x, y = setup(max_grad_norm=0.05)
    twin = copy.deepcopy(model)
    twin_opt = SIGUAOptimizer(torch.optim.Adam(twin.parameters(), lr=0.1), BandSelected(0.4, 0.2, 0), 0.2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12) if scaled else None
    result = opt.step(losses_of(model, x, y), scaler=scaler)
    twin_opt.objective(losses_of(twin, x, y)).backward()
    norm = torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.05)
    twin_opt.step()
    assert norm > 0.05 and result.grad_norm is not None
    torch.testing.assert_close(result.grad_norm, norm)
    assert result.good.sum() > 0 and not result.skipped
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_max_grad_norm_on_the_plain_step() -> None:
    model, opt, x, y = setup(max_grad_norm=0.05)
    opt.objective(losses_of(model, x, y)).backward()
    opt.step()
    total = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
    assert float(total) == pytest.approx(0.05, rel=1e-5)
    assert opt.last_result is not None and float(opt.last_result.grad_norm) > 0.05  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -1.0, math.inf, NAN])
def test_max_grad_norm_must_be_positive(bad: float) -> None:
    with pytest.raises(ValueError, match="max_grad_norm"):
        setup(max_grad_norm=bad)


@pytest.mark.parametrize("bad", ["1", True, torch.tensor(1.0)])
def test_max_grad_norm_must_be_a_number(bad: object) -> None:
    with pytest.raises(TypeError, match="max_grad_norm"):
        setup(max_grad_norm=bad)


# -- item 5: last_result on every path ------------------------------------------------------------
def test_last_result_on_every_path() -> None:
    model, opt, x, y = setup(nonfinite="skip")
    assert opt.last_result is None
    objective = opt.objective(losses_of(model, x, y))
    assert opt.last_result is not None and torch.equal(opt.last_result.objective, objective.detach())
    objective.backward()
    opt.step()
    assert opt.last_result is not None and not opt.last_result.skipped
    result = opt.step(losses_of(model, x, y))
    assert opt.last_result is result and not result.skipped
    skipped = opt.step(poisoned(model, x, y))
    assert opt.last_result is skipped and skipped.skipped and skipped.good.shape == (16,)


# -- item 15: the scaler's refused step says what happened ----------------------------------------
def test_refused_step_with_scaler_says_the_gradients_were_cleared() -> None:
    model, opt, x, y = trained()
    opt.objective(losses_of(model, x, y)).backward()  # gradients there before the step
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    with pytest.raises(
        ValueError,
        match="parameters and the optimizer state were not changed; the gradients were set to None",
    ):
        opt.step(poisoned(model, x, y), scaler=scaler)
    assert all(p.grad is None for p in model.parameters())
    scaler.update()  # recorded with the scaler: it backs off
    assert scaler.get_scale() == 4.0


# -- item 13: steps that backward would break half-way -------------------------------------------
def test_losses_already_back_propagated_are_refused() -> None:
    model, opt, x, y = trained()
    losses = losses_of(model, x, y)
    losses.mean().backward()
    grads = [p.grad.clone() for p in model.parameters()]  # type: ignore[union-attr]
    before = snapshot(model, opt)
    with pytest.raises(ValueError, match="losses was already back-propagated"):
        opt.step(losses)
    assert_unchanged(model, opt, before)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads, strict=True))  # type: ignore[arg-type]


def test_lbfgs_needs_a_closure() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    opt = SIGUAOptimizer(torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4), SmallLoss(0.3, 0), 0.2)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(TypeError, match=r"cannot drive LBFGS.*opt.step\(closure\)"):
        opt.step(losses_of(model, x, y))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters()) and not opt.state

    twin = copy.deepcopy(model)
    twin_lbfgs = torch.optim.LBFGS(twin.parameters(), lr=0.5, max_iter=4)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        objective = opt.objective(losses_of(model, x, y))
        objective.backward()
        return objective

    def twin_closure() -> torch.Tensor:  # Eq. 3 by hand, with the same selection rule
        twin_lbfgs.zero_grad()
        losses = losses_of(twin, x, y)
        good = SmallLoss(0.3, 0)(losses.detach()).good
        objective = (losses * good).sum() / 16
        objective.backward()
        return objective

    loss = opt.step(closure)
    twin_lbfgs.step(twin_closure)
    assert torch.isfinite(loss)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q)


# -- item 1: the epoch schedule ----------------------------------------------------------------------
def test_steps_per_epoch_advances_the_epoch_on_updates_only() -> None:
    model, opt, x, y = setup(steps_per_epoch=4)
    condition = opt.condition
    for _ in range(3):
        opt.step(losses_of(model, x, y))
    assert opt.epoch == 0.75 and condition.epoch == 0.75  # type: ignore[attr-defined]
    for part in (slice(0, 8), slice(8, 16)):  # accumulation: two objectives, one update
        opt.objective(losses_of(model, x[part], y[part]), num_items=16).backward()
    opt.step()
    assert opt.epoch == 1.0
    opt.set_epoch(5)  # an explicit epoch wins, and the count restarts from it
    opt.step(losses_of(model, x, y))
    assert opt.epoch == 5.25 and condition.epoch == 5.25  # type: ignore[attr-defined]


def test_steps_per_epoch_moves_the_keep_rate() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    condition = SmallLoss(0.5, warmup_epochs=1)
    opt = SIGUAOptimizer(torch.optim.SGD(model.parameters(), lr=0.01), condition, steps_per_epoch=2)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    kept = [int(opt.step(losses_of(model, x, y)).good.sum()) for _ in range(3)]
    assert kept == [16, 13, 9]  # rho = 1, 0.75, 0.5: floor(16 rho) + 1, capped at 16


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "10"])
def test_steps_per_epoch_must_be_a_positive_int(bad: object) -> None:
    with pytest.raises(ValueError, match="steps_per_epoch must be a positive int"):
        setup(steps_per_epoch=bad)


@pytest.mark.parametrize(
    "condition",
    [
        SmallLoss(0.3),
        BandSelected(0.3, 0.1, warmup_epochs=2),
        NonNegativeCorrection(symmetric(3, 0.2), warmup_epochs=1),
    ],
)
def test_a_schedule_stuck_at_epoch_zero_warns_once(condition: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(optimizer, "EPOCH_WARNING_STEPS", 3)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = SIGUAOptimizer(torch.optim.SGD(model.parameters(), lr=0.01), condition)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    with pytest.warns(
        UserWarning, match="3 optimizer steps at epoch 0.*set_epoch.*steps_per_epoch"
    ) as caught:
        for _ in range(6):
            logits = model(x)
            inputs = {"logits": logits, "targets": y} if "logits" in condition.inputs else {}
            opt.step(F.cross_entropy(logits, y, reduction="none"), **inputs)
    assert len([w for w in caught if "epoch 0" in str(w.message)]) == 1


@pytest.mark.parametrize("how", ["set_epoch", "steps_per_epoch", "no warm-up"])
def test_no_warning_when_the_schedule_can_move(how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(optimizer, "EPOCH_WARNING_STEPS", 3)
    model, _, x, y = setup()
    condition = SmallLoss(0.3, warmup_epochs=0 if how == "no warm-up" else 5)
    opt = SIGUAOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.01),
        condition,
        steps_per_epoch=100 if how == "steps_per_epoch" else None,
    )
    if how == "set_epoch":
        opt.set_epoch(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(6):
            opt.step(losses_of(model, x, y))


def test_many_objectives_without_a_step_are_merged_not_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_guard, "PENDING_LIMIT", 3)
    model, opt, x, y = trained()
    before = snapshot(model, opt)
    opt.objective(poisoned(model, x, y))  # an early NaN objective, never back-propagated
    for _ in range(5):
        opt.objective(losses_of(model, x, y)).backward()
    assert len(opt._pending) <= 3
    with pytest.raises(ValueError, match="losses contain NaN or inf"):
        opt.step()
    assert_unchanged(model, opt, before)


# -- item 3: fused optimizers skip on the device -----------------------------------------------------
@pytest.mark.parametrize("base", [torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD])
def test_fused_optimizer_skips_on_the_device_without_a_host_read(
    base: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    twin = copy.deepcopy(model)
    opt = SIGUAOptimizer(
        base(model.parameters(), lr=0.1, fused=True), BandSelected(0.4, 0.2, 0), 0.2, nonfinite="skip"
    )
    plain = SIGUAOptimizer(base(twin.parameters(), lr=0.1), BandSelected(0.4, 0.2, 0), 0.2)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    before = copy.deepcopy(model.state_dict())

    def no_read(self: torch.Tensor) -> bool:
        raise AssertionError("a host read")

    with monkeypatch.context() as patch:
        patch.setattr(torch.Tensor, "__bool__", no_read)
        patch.setattr(torch.Tensor, "item", no_read)
        skipped = opt.step(poisoned(model, x, y)).skipped
        opt.zero_grad()
        opt.objective(nan_padding_losses(model, x, y)).backward()
        opt.step()
        skipped_plain = opt.last_result.skipped  # type: ignore[union-attr]
        opt.zero_grad()
        taken = opt.step(losses_of(model, x, y)).skipped
    assert isinstance(skipped, torch.Tensor) and bool(skipped) and bool(skipped_plain) and not bool(taken)
    assert not hasattr(opt.optimizer, "found_inf")
    plain.step(losses_of(twin, x, y))  # the fused steps that were skipped moved nothing
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_an_unpickled_optimizer_steps_with_the_guard() -> None:
    model, opt, x, y = trained(nonfinite="skip")
    clone = pickle.loads(pickle.dumps(opt))
    assert clone.step(poisoned(model, x, y)).skipped
    clone.objective(losses_of(model, x, y)).backward()
    clone.step()


def test_fused_optimizer_with_a_scaler_still_refuses_an_ignored_nan_loss() -> None:
    """The scaler hands a fused optimizer its own found_inf (the gradients'): the losses' verdict
    is then taken on the host, not overwritten."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = SIGUAOptimizer(
        torch.optim.Adam(model.parameters(), lr=0.1, fused=True), AllGood(), nonfinite="skip"
    )
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    before = copy.deepcopy(model.state_dict())
    losses = losses_of(model, x, y)
    ignored = torch.cat([losses[:-1], losses[-1:].detach() * NAN])  # finite gradients, NaN objective
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    assert opt.step(ignored, scaler=scaler).skipped is True
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
