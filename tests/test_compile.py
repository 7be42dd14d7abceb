"""Conditions + reduction compile with fullgraph=True (no graph break, no host sync) and equal eager."""

from __future__ import annotations

import pytest
import torch

from sigua_optim import functional
from sigua_optim.conditions import BandSelected, NonNegativeCorrection, SmallLoss
from sigua_optim.noise import symmetric

CONDITIONS = {
    "small-loss": SmallLoss(0.4, warmup_epochs=0),
    "band": BandSelected(0.4, 0.2, warmup_epochs=0),
    "band-official": BandSelected(0.4, 0.5, warmup_epochs=0, semantics="official"),
}


@pytest.mark.parametrize("name", list(CONDITIONS))
@pytest.mark.parametrize("reduction", ["paper", "official"])
def test_selection_and_reduction_compile_fullgraph(name: str, reduction: str) -> None:
    condition = CONDITIONS[name]

    def step(losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        good, bad = condition(losses.detach())
        return functional.sigua_objective(losses, good, bad, 0.01, reduction), good, bad  # type: ignore[arg-type]

    compiled = torch.compile(step, fullgraph=True, backend="inductor")
    losses = torch.tensor([0.3, 0.1, 0.3, 2.0, 0.7, 0.3, 5.0, 0.05, 0.9, 1.1], requires_grad=True)
    got, want = compiled(losses), step(losses)
    assert torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])
    torch.testing.assert_close(got[0], want[0])
    (grad_got,) = torch.autograd.grad(got[0], losses)
    (grad_want,) = torch.autograd.grad(want[0], losses)
    torch.testing.assert_close(grad_got, grad_want)


def test_nonnegative_correction_compiles_fullgraph() -> None:
    inverse = torch.linalg.inv(symmetric(4, 0.3))
    logits = torch.randn(16, 4, generator=torch.Generator().manual_seed(0)) * 4
    targets = torch.randint(0, 4, (16,), generator=torch.Generator().manual_seed(1))
    from sigua_optim.losses import class_losses

    def select(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return functional.nonnegative_masks(class_losses(logits).double(), targets, inverse, "sample", True)

    compiled = torch.compile(select, fullgraph=True)
    for got, want in zip(compiled(logits, targets), select(logits, targets), strict=True):
        assert torch.equal(got, want)
    assert NonNegativeCorrection(symmetric(4, 0.3))(
        torch.zeros(16), logits=logits, targets=targets
    ).good.equal(select(logits, targets)[0])


def test_a_compiled_model_does_not_recompile_when_gamma_or_the_epoch_change() -> None:
    import torch.nn.functional as F
    from torch._dynamo.testing import CompileCounter

    from sigua_optim import SIGUAOptimizer

    torch._dynamo.reset()
    counter = CompileCounter()
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    compiled = torch.compile(model, backend=counter)
    opt = SIGUAOptimizer(torch.optim.Adam(model.parameters()), BandSelected(0.4, 0.2), 0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1)  # patches opt.step
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    for epoch, gamma in enumerate([0.01, 0.5, 0.0, 1.0]):
        opt.set_epoch(epoch * 4.5)
        opt.gamma = gamma
        opt.zero_grad()
        opt.step(F.cross_entropy(compiled(x), y, reduction="none"))
        scheduler.step()
    assert counter.frame_count == 1
