"""Bad input: a clear error naming the argument and the fix, raised before anything changes."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from sigua_optim import SIGUAOptimizer
from sigua_optim.conditions import BandSelected, KnownClean, NonNegativeCorrection, Selection, SmallLoss
from sigua_optim.losses import backward_corrected_cross_entropy
from sigua_optim.noise import symmetric

K = 3


def trained() -> tuple[torch.nn.Module, SIGUAOptimizer, torch.Tensor, torch.Tensor]:
    """A model and an Adam-based SIGUAOptimizer that has taken one step (so it has state)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, K)
    opt = SIGUAOptimizer(torch.optim.Adam(model.parameters(), lr=0.1), SmallLoss(0.3), 0.01)
    x, y = torch.randn(6, 4), torch.randint(0, K, (6,))
    opt.step(F.cross_entropy(model(x), y, reduction="none"))
    opt.zero_grad()
    return model, opt, x, y


def assert_rejected(
    error: type[Exception], match: str, call: Callable[[torch.nn.Module, SIGUAOptimizer, Any, Any], Any]
) -> None:
    model, opt, x, y = trained()
    params = copy.deepcopy(model.state_dict())
    state = copy.deepcopy(opt.optimizer.state_dict())
    with pytest.raises(error, match=match):
        call(model, opt, x, y)
    assert all(torch.equal(params[k], v) for k, v in model.state_dict().items())
    after = opt.optimizer.state_dict()
    for key, value in state["state"].items():
        for name, tensor in value.items():
            assert torch.equal(tensor, after["state"][key][name]), name
    assert after["param_groups"] == state["param_groups"]
    assert all(p.grad is None for p in model.parameters())


def losses_of(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y, reduction="none")


def test_scalar_loss_says_pass_reduction_none() -> None:
    assert_rejected(ValueError, "reduction='none'", lambda m, o, x, y: o.step(F.cross_entropy(m(x), y)))


def test_losses_without_grad() -> None:
    assert_rejected(
        ValueError, "does not require grad", lambda m, o, x, y: o.step(losses_of(m, x, y).detach())
    )


def test_two_dimensional_losses() -> None:
    assert_rejected(ValueError, "shape \\[batch\\]", lambda m, o, x, y: o.step(losses_of(m, x, y)[None]))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_losses_raise_by_default(bad: float) -> None:
    def call(m: Any, o: SIGUAOptimizer, x: Any, y: Any) -> None:
        o.step(losses_of(m, x, y) * torch.tensor([1.0, 1.0, bad, 1.0, 1.0, 1.0]))

    assert_rejected(ValueError, "NaN or inf \\(at indices \\[2\\]", call)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("reduction", ["paper", "official"])
def test_nonfinite_loss_of_an_ignored_sample_raises(bad: float, reduction: str) -> None:
    """The check reads the objective, where an ignored (weight 0) inf still gives 0 * inf = NaN."""

    def ignore_third(losses: torch.Tensor, **_: Any) -> Selection:
        good = torch.ones_like(losses, dtype=torch.bool)
        good[2] = False
        return Selection(good, torch.zeros_like(good))

    def call(m: Any, o: SIGUAOptimizer, x: Any, y: Any) -> None:
        o.reduction = reduction  # type: ignore[assignment]
        o.step(losses_of(m, x, y) * torch.tensor([1.0, 1.0, bad, 1.0, 1.0, 1.0]), condition=ignore_third)

    assert_rejected(ValueError, "NaN or inf \\(at indices \\[2\\]", call)


def test_empty_batch() -> None:
    assert_rejected(ValueError, "losses is empty", lambda m, o, x, y: o.step(losses_of(m, x[:0], y[:0])))


def test_closure_and_losses_together() -> None:
    assert_rejected(TypeError, "not both", lambda m, o, x, y: o.step(losses_of(m, x, y), lambda: None))


def test_inputs_without_losses() -> None:
    assert_rejected(
        TypeError, "need per-sample losses", lambda m, o, x, y: o.step(clean=torch.ones(6, dtype=torch.bool))
    )


@pytest.mark.parametrize(
    ("clean", "match"),
    [
        (None, "KnownClean needs clean="),
        (torch.ones(5, dtype=torch.bool), "one entry per loss"),
        (torch.ones(6), "bool mask"),
    ],
)
def test_clean_missing_or_wrong(clean: torch.Tensor | None, match: str) -> None:
    def call(m: Any, o: SIGUAOptimizer, x: Any, y: Any) -> None:
        o.step(losses_of(m, x, y), condition=KnownClean(), clean=clean)

    assert_rejected((ValueError, TypeError), match, call)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("inputs", "match"),
    [
        ({}, "needs logits= and targets="),
        ({"targets": True}, "needs logits="),
        ({"logits": torch.randn(6, K + 1), "targets": True}, "shape \\[batch, 3\\]"),
        ({"logits": True, "targets": torch.zeros(5, dtype=torch.long)}, "targets= must be integer"),
        ({"logits": True, "targets": torch.zeros(6)}, "targets= must be integer"),
        ({"logits": True, "targets": torch.full((6,), K)}, "in \\[0, 3\\)"),
        ({"logits": True, "targets": torch.full((6,), -1)}, "in \\[0, 3\\)"),
        (
            {"logits": torch.randn(5, K), "targets": torch.zeros(5, dtype=torch.long)},
            "5 rows but there are 6",
        ),
    ],
)
def test_correction_inputs(inputs: dict[str, Any], match: str) -> None:
    def call(m: Any, o: SIGUAOptimizer, x: Any, y: Any) -> None:
        named = {k: ((m(x) if k == "logits" else y) if v is True else v) for k, v in inputs.items()}
        o.step(losses_of(m, x, y), condition=NonNegativeCorrection(symmetric(K, 0.2)), **named)

    assert_rejected(ValueError, match, call)


@pytest.mark.parametrize(
    ("matrix", "match"),
    [
        (torch.ones(3, 2) / 2, "square"),
        (torch.tensor([[0.5, 0.6], [0.5, 0.5]]), "must sum to 1"),
        (torch.tensor([[1.2, -0.2], [0.0, 1.0]]), "non-negative"),
        (torch.full((2, 2), 0.5), "singular"),
        (symmetric(4, 0.75), "singular"),
        (torch.tensor([[float("nan"), 1.0], [0.0, 1.0]]), "finite"),
    ],
)
def test_transition_matrix(matrix: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=f"transition_matrix .*{match}|{match}"):
        NonNegativeCorrection(matrix)
    with pytest.raises(ValueError, match=f"transition_matrix .*{match}|{match}"):
        backward_corrected_cross_entropy(
            torch.randn(2, matrix.shape[-1]), torch.zeros(2, dtype=torch.long), matrix
        )


def test_transition_matrix_of_the_wrong_size_for_the_logits() -> None:
    with pytest.raises(ValueError, match="shape \\[batch, 4\\]"):
        backward_corrected_cross_entropy(
            torch.randn(2, 3), torch.zeros(2, dtype=torch.long), symmetric(4, 0.2)
        )


@pytest.mark.parametrize("gamma", [-0.1, 1.5, float("nan")])
def test_gamma_outside_unit_interval(gamma: float) -> None:
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="gamma must be a finite number in \\[0, 1\\]"):
        SIGUAOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), gamma=gamma)
    opt = SIGUAOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="gamma must be a finite number in \\[0, 1\\]"):
        opt.gamma = gamma
    assert opt.gamma == 0.01


@pytest.mark.parametrize("eps", [-0.1, 1.0, 1.5, float("nan")])
def test_noise_rate_outside_range(eps: float) -> None:
    with pytest.raises(ValueError, match="noise_rate must be a finite number in \\[0, 1\\)"):
        SmallLoss(eps)
    with pytest.raises(ValueError, match="noise_rate must be a finite number in \\[0, 1\\)"):
        BandSelected(eps, 0.0)


@pytest.mark.parametrize(
    ("eps", "band", "semantics"), [(0.5, -0.1, "paper"), (0.2, 0.3, "paper"), (0.2, 1.1, "official")]
)
def test_band_negative_or_too_wide(eps: float, band: float, semantics: str) -> None:
    with pytest.raises(ValueError, match=r"band must be a finite number in .* \(band is at most"):
        BandSelected(eps, band, semantics=semantics)  # type: ignore[arg-type]


def test_negative_warmup_or_epoch() -> None:
    with pytest.raises(ValueError, match="warmup_epochs must be a finite number in \\[0, inf\\]"):
        SmallLoss(0.2, warmup_epochs=-1)
    _model, opt, _, _ = trained()
    opt.set_epoch(3)
    with pytest.raises(ValueError, match="epoch must be a finite number in \\[0, inf\\]"):
        opt.set_epoch(-1)
    with pytest.raises(TypeError, match="epoch must be a real number"):
        opt.set_epoch("3")  # type: ignore[arg-type]
    assert opt.epoch == 3 and opt.condition.epoch == 3  # type: ignore[attr-defined]


def test_settings_spelled_wrong() -> None:
    model = torch.nn.Linear(2, 2)
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="reduction must be one of 'paper', 'official'"):
        SIGUAOptimizer(base, reduction="mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="nonfinite must be"):
        SIGUAOptimizer(base, nonfinite="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="semantics must be"):
        SmallLoss(0.2, semantics="authors")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="criterion must be"):
        NonNegativeCorrection(symmetric(3, 0.2), criterion="mean")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="condition must be a condition, a callable"):
        SIGUAOptimizer(base, condition=0.5)  # type: ignore[arg-type]


@pytest.mark.parametrize("wrapped", [torch.nn.Linear(2, 2), [torch.zeros(2)], None, "adam"])
def test_wrapping_something_that_is_not_an_optimizer(wrapped: Any) -> None:
    with pytest.raises(TypeError, match=r"optimizer must be a torch\.optim\.Optimizer"):
        SIGUAOptimizer(wrapped)


def test_wrapping_a_sigua_optimizer_twice() -> None:
    model = torch.nn.Linear(2, 2)
    once = SIGUAOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(TypeError, match="already a SIGUAOptimizer: wrap the base optimizer once"):
        SIGUAOptimizer(once)


@pytest.mark.parametrize(
    "returned",
    [torch.ones(6), (torch.ones(6), torch.zeros(6)), (torch.ones(5, dtype=torch.bool),) * 2, None],
)
def test_user_condition_returning_something_else(returned: Any) -> None:
    def call(m: Any, o: SIGUAOptimizer, x: Any, y: Any) -> None:
        o.step(losses_of(m, x, y), condition=lambda losses, **_: returned)

    assert_rejected(TypeError, "must be Selection\\(good, bad\\), two bool tensors of shape \\(6,\\)", call)
