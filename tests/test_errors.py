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


# Issue 10, items 7-11, 14 (string options), 15 (nonfinite as an array), 20 (selection_scope).
@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda m, o, x, y: o.step(losses_of(m, x, y).tolist()), "losses must be a torch.Tensor"),
        (lambda m, o, x, y: o.objective(losses_of(m, x, y).tolist()), "losses must be a torch.Tensor"),
        (lambda m, o, x, y: o.select(losses_of(m, x, y).tolist()), "losses must be a torch.Tensor"),
        (
            lambda m, o, x, y: o.step(
                losses_of(m, x, y),
                condition=NonNegativeCorrection(symmetric(K, 0.2)),
                logits=[[0.0] * K] * 6,
                targets=y,
            ),
            "logits= must be a torch.Tensor",
        ),
    ],
)
def test_lists_instead_of_tensors_name_the_argument(call: Callable[..., Any], match: str) -> None:
    """Item 7: the type is read before .shape / .ndim."""
    assert_rejected(TypeError, match, call)


def test_a_condition_class_instead_of_an_instance() -> None:
    """Item 8."""
    base = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(TypeError, match=r"condition must be a condition instance, got the class SmallLoss"):
        SIGUAOptimizer(base, SmallLoss)  # type: ignore[arg-type]
    hint = r"condition= must be a condition instance.*e\.g\. SmallLoss\(noise_rate=0\.2\)"
    assert_rejected(TypeError, hint, lambda m, o, x, y: o.step(losses_of(m, x, y), condition=SmallLoss))
    assert_rejected(TypeError, hint, lambda m, o, x, y: o.objective(losses_of(m, x, y), condition=SmallLoss))
    assert_rejected(
        TypeError,
        "condition= must be a condition, a callable",
        lambda m, o, x, y: o.step(losses_of(m, x, y), condition="x"),
    )


def test_scaler_that_is_not_a_grad_scaler() -> None:
    """Item 9."""
    assert_rejected(
        TypeError,
        "scaler= must be a torch.amp.GradScaler",
        lambda m, o, x, y: o.step(losses_of(m, x, y), scaler="amp"),
    )


def test_misspelled_input_names_the_known_ones() -> None:
    """Item 10: a keyword the condition does not take is refused, naming the ones it takes."""
    assert_rejected(
        TypeError,
        r"unexpected keyword targest=.*takes valid=",
        lambda m, o, x, y: o.step(losses_of(m, x, y), targest=y),
    )
    correction = NonNegativeCorrection(symmetric(K, 0.2))
    assert_rejected(
        TypeError,
        r"unexpected keyword targest=.*takes logits=, targets=, valid=",
        lambda m, o, x, y: o.step(losses_of(m, x, y), condition=correction, logits=m(x), targest=y),
    )
    assert_rejected(
        TypeError,
        "got clean= with selection=",
        lambda m, o, x, y: o.objective(
            losses_of(m, x, y),
            selection=Selection(torch.ones(6, dtype=torch.bool), torch.zeros(6, dtype=torch.bool)),
            clean=y,
        ),
    )


def test_user_conditions_take_what_their_signature_takes() -> None:
    """Item 10: without `inputs`, the signature decides; **kwargs accepts anything."""

    def strict(losses: torch.Tensor, *, weight: torch.Tensor) -> Selection:
        return Selection(losses < weight, losses >= weight)

    def loose(losses: torch.Tensor, **inputs: Any) -> Selection:
        return Selection(
            torch.ones_like(losses, dtype=torch.bool), torch.zeros_like(losses, dtype=torch.bool)
        )

    model, opt, x, y = trained()
    opt.step(losses_of(model, x, y), condition=strict, weight=torch.ones(6))
    opt.step(losses_of(model, x, y), condition=loose, anything=1)
    assert_rejected(
        TypeError,
        r"unexpected keyword wieght=.*takes weight=",
        lambda m, o, x, y: o.step(losses_of(m, x, y), condition=strict, wieght=torch.ones(6)),
    )


@pytest.mark.parametrize(
    ("num_items", "error", "match"),
    [
        (torch.tensor(0), ValueError, r"num_items= must be .*\(>= 1\), got tensor\(0\.0\)"),
        (torch.tensor(0.0), ValueError, r"num_items= must be .*\(>= 1\)"),
        (torch.tensor(float("nan")), ValueError, r"num_items= must be .*\(>= 1\), got tensor\(nan\)"),
        (torch.tensor(-1), ValueError, r"num_items= must be .*\(>= 1\), got tensor\(-1\.0\)"),
        (torch.tensor(True), TypeError, "num_items= must be an int or a 0-d integer or floating tensor"),
        (torch.tensor([6]), TypeError, "num_items= must be an int or a 0-d integer or floating tensor"),
        pytest.param(10**400, ValueError, r"num_items= must be .*in \[1, 2\*\*63 - 1\]", id="10**400"),
        (6.0, TypeError, "num_items= must be the positive number of samples"),
    ],
)
def test_num_items_refused(num_items: Any, error: type[Exception], match: str) -> None:
    """Item 11: 0, NaN and negative tensors, overflowing ints."""
    assert_rejected(error, match, lambda m, o, x, y: o.step(losses_of(m, x, y), num_items=num_items))
    assert_rejected(error, match, lambda m, o, x, y: o.objective(losses_of(m, x, y), num_items=num_items))


def test_epochs_too_large_for_a_float() -> None:
    """Item 11: an int past float range is a ValueError, not an OverflowError."""
    with pytest.raises(ValueError, match=r"warmup_epochs must be a finite number"):
        SmallLoss(0.2, warmup_epochs=10**400)
    _model, opt, _, _ = trained()
    with pytest.raises(ValueError, match=r"epoch must be a finite number"):
        opt.set_epoch(10**400)
    assert opt.epoch == 0.0


def test_string_options_validated_everywhere() -> None:
    """Items 14, 15: a non-string option is a TypeError, an unknown one a ValueError."""
    import numpy as np

    from sigua_optim import functional

    base = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(TypeError, match=r"nonfinite must be a string, one of 'raise', 'skip', 'unchecked'"):
        SIGUAOptimizer(base, nonfinite=np.array(["raise"]))  # type: ignore[arg-type]
    opt = SIGUAOptimizer(base)
    for name, value, error in [
        ("reduction", "mean", ValueError),
        ("nonfinite", None, TypeError),
        ("selection_scope", True, TypeError),
    ]:
        with pytest.raises(error, match=f"{name} must be"):
            setattr(opt, name, value)
    assert (opt.reduction, opt.nonfinite, opt.selection_scope) == ("paper", "raise", "global")
    with pytest.raises(ValueError, match="semantics must be one of 'paper', 'official'"):
        functional.keep_rate(0.2, 1, 10, "bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="criterion must be one of 'sample', 'total'"):
        functional.nonnegative_masks(
            torch.zeros(2, K), torch.zeros(2, dtype=torch.long), torch.eye(K), "bogus"
        )  # type: ignore[arg-type]
    good = torch.ones(2, dtype=torch.bool)
    with pytest.raises(ValueError, match="reduction must be one of 'paper', 'official'"):
        functional.sigua_objective(torch.ones(2), good, ~good, 0.1, "mean")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="reduction must be a string"):
        functional.sigua_weights(good, ~good, 0.1, torch.float32, None)  # type: ignore[arg-type]


def test_selection_scope_and_the_deprecated_distributed() -> None:
    """Item 20: selection_scope= is the name; distributed= still works, with a DeprecationWarning."""
    model = torch.nn.Linear(2, 2)
    assert (
        SIGUAOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), selection_scope="local").distributed
        == "local"
    )
    with pytest.warns(DeprecationWarning, match="pass selection_scope= instead"):
        opt = SIGUAOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), distributed="local")
    assert opt.selection_scope == "local"
    with pytest.raises(TypeError, match="selection_scope must be a string"), pytest.warns(DeprecationWarning):
        SIGUAOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), distributed=True)  # type: ignore[arg-type]
