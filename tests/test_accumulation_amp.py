"""Gradient accumulation (num_items=, selection=) and mixed precision (scaler=)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from sigua_optim import SIGUAOptimizer
from sigua_optim.conditions import BandSelected, Selection


def setup(gamma: float = 0.3) -> tuple[torch.nn.Module, SIGUAOptimizer, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4)).double()
    opt = SIGUAOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), BandSelected(0.4, 0.3, 0), gamma)
    g = torch.Generator().manual_seed(1)
    return (
        model,
        opt,
        torch.randn(48, 6, generator=g, dtype=torch.float64),
        torch.randint(0, 4, (48,), generator=g),
    )


def grads(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_global_selection_over_micro_batches_equals_the_whole_batch() -> None:
    model, opt, x, y = setup()
    whole = opt.objective(F.cross_entropy(model(x), y, reduction="none"))
    whole.backward()
    want = grads(model)
    opt.zero_grad()

    with torch.no_grad():
        selection = opt.select(F.cross_entropy(model(x), y, reduction="none"))
    total = torch.zeros((), dtype=torch.float64)
    for part in torch.arange(48).split(16):
        losses = F.cross_entropy(model(x[part]), y[part], reduction="none")
        piece = Selection(selection.good[part], selection.bad[part])
        objective = opt.objective(losses, selection=piece, num_items=48)
        objective.backward()
        total = total + objective.detach()
    torch.testing.assert_close(total, whole.detach())
    for got, expected in zip(grads(model), want, strict=True):
        torch.testing.assert_close(got, expected)


def test_per_micro_batch_selection_normalised_by_num_items() -> None:
    model, opt, x, y = setup()
    parts = torch.arange(48).split(16)
    total = sum(
        float(
            opt.objective(
                F.cross_entropy(model(x[p]), y[p], reduction="none"), num_items=torch.tensor(48)
            ).detach()
        )
        for p in parts
    )
    # Each micro-batch selects on its own; the divisor is the whole batch's 48.
    expected = 0.0
    for p in parts:
        losses = F.cross_entropy(model(x[p]), y[p], reduction="none").detach()
        good, bad = opt.select(losses)
        expected += float((losses * good).sum() - 0.3 * (losses * bad).sum()) / 48
    assert total == pytest.approx(expected, rel=1e-12)


def test_num_items_and_selection_errors() -> None:
    model, opt, x, y = setup()
    losses = F.cross_entropy(model(x), y, reduction="none")
    for bad, error in (
        (0, ValueError),
        (-3, ValueError),
        (2.5, TypeError),
        (True, TypeError),
        (torch.ones(2), TypeError),
    ):
        with pytest.raises(error, match="num_items="):
            opt.objective(losses, num_items=bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="condition= or selection=, not both"):
        opt.objective(losses, condition=BandSelected(0.4, 0.3), selection=opt.select(losses))
    with pytest.raises(TypeError, match="selection= must be Selection"):
        opt.objective(losses, selection=(torch.ones(3, dtype=torch.bool),) * 2)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="num_items= need per-sample losses"):
        opt.step(num_items=48)
    official = SIGUAOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), reduction="official")
    with pytest.raises(ValueError, match="needs reduction='paper'"):
        official.objective(losses, num_items=48)


def test_step_with_grad_scaler_equals_a_plain_step() -> None:
    model, opt, x, y = setup()
    model, x = model.float(), x.float()
    twin = copy.deepcopy(model)
    twin_opt = SIGUAOptimizer(torch.optim.SGD(twin.parameters(), lr=0.1), BandSelected(0.4, 0.3, 0), 0.3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    opt.step(F.cross_entropy(model(x), y, reduction="none"), scaler=scaler)
    scaler.update()
    twin_opt.step(F.cross_entropy(twin(x), y, reduction="none"))
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_a_step_the_scaler_skips_changes_nothing() -> None:
    model, _, x, y = setup()
    model, x = model.float(), x.float()
    opt = SIGUAOptimizer(torch.optim.Adam(model.parameters()), BandSelected(0.4, 0.3, 0), 0.3)
    opt.set_epoch(3)
    huge = torch.finfo(torch.float32).max
    scaler = torch.amp.GradScaler("cpu", init_scale=huge)  # the scaled gradients overflow
    before = copy.deepcopy(model.state_dict())
    opt.step(100 * F.cross_entropy(model(x), y, reduction="none"), scaler=scaler)
    scaler.update()
    assert scaler.get_scale() < huge  # the scaler saw inf and backed off
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not opt.state  # Adam never stepped: no moments, no step count
    assert opt.epoch == 3 and opt.state_dict()["sigua"]["epoch"] == 3


@pytest.mark.parametrize("nonfinite", ["skip", "raise"])
def test_a_nan_loss_with_a_scaler_leaves_the_scaler_ready_for_update(nonfinite: str) -> None:
    """A step refused for a NaN loss is recorded with the scaler as a non-finite step, so the
    usual ``scaler.update()`` that follows works (and backs off) instead of failing."""
    model, _, x, y = setup()
    model, x = model.float(), x.float()
    opt = SIGUAOptimizer(
        torch.optim.Adam(model.parameters()), BandSelected(0.4, 0.3, 0), 0.3, nonfinite=nonfinite
    )  # type: ignore[arg-type]
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    before = copy.deepcopy(model.state_dict())
    losses = F.cross_entropy(model(x), y, reduction="none")
    poisoned = losses * torch.tensor([float("nan")] + [1.0] * (len(losses) - 1))
    if nonfinite == "skip":
        assert opt.step(poisoned, scaler=scaler).skipped
    else:
        with pytest.raises(ValueError, match="NaN or inf"):
            opt.step(poisoned, scaler=scaler)
    scaler.update()
    assert scaler.get_scale() == 512.0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not opt.state and all(p.grad is None for p in model.parameters())
