"""Backward correction (Eq. 8) and its non-negative criterion (Eqs. 11-12): inputs and sharing."""

from __future__ import annotations

import pickle

import pytest
import torch

from sigua_optim import SIGUAOptimizer
from sigua_optim import losses as losses_module
from sigua_optim.conditions import NonNegativeCorrection
from sigua_optim.losses import BackwardCorrection, backward_corrected_cross_entropy
from sigua_optim.noise import pair


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32])
def test_integer_targets_of_any_dtype_are_class_indices(dtype: torch.dtype) -> None:
    """n == k and no label 0: a uint8 index taken for a bool mask would pick rows 0, 1, 2."""
    transition = pair(3, 0.45)
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 4.0]])
    targets = torch.tensor([1, 2, 1])
    want = backward_corrected_cross_entropy(logits, targets, transition)
    got = backward_corrected_cross_entropy(logits, targets.to(dtype), transition)
    assert torch.equal(got, want)
    condition = NonNegativeCorrection(transition)
    want_bad = condition(want, logits=logits, targets=targets).bad
    assert torch.equal(condition(want, logits=logits, targets=targets.to(dtype)).bad, want_bad)


@pytest.mark.parametrize(("name", "value"), [("ascend", "no"), ("ascend", 0), ("ascend", None)])
def test_ascend_must_be_a_bool(name: str, value: object) -> None:
    """``bool("no")`` is True: a string would silently turn nnBC into SIGUA_BC."""
    with pytest.raises(TypeError, match="ascend must be True or False"):
        NonNegativeCorrection(pair(3, 0.2), **{name: value})  # type: ignore[arg-type]


def test_criterion_is_one_of_the_two() -> None:
    with pytest.raises(ValueError, match="criterion must be one of 'sample', 'total'"):
        NonNegativeCorrection(pair(3, 0.2), criterion="Sample")  # type: ignore[arg-type]


def _batch(n: int = 16, k: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * 5, torch.randint(0, k, (n,), generator=g)


def test_backward_correction_inverts_once_and_equals_the_function(monkeypatch: pytest.MonkeyPatch) -> None:
    transition = pair(4, 0.45)
    corr = BackwardCorrection(transition)
    logits, y = _batch()
    want = backward_corrected_cross_entropy(logits, y, transition)

    def refuse(*args: object) -> None:
        raise AssertionError("T validated or inverted again")

    monkeypatch.setattr(losses_module, "invert_transition_matrix", refuse)
    assert torch.equal(corr(logits, y), want)
    assert corr.inverse_on(logits.device, logits.dtype) is corr.inverse_on(logits.device, logits.dtype)


def test_sigua_bc_computes_the_per_class_losses_once_per_step(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = losses_module.class_losses

    def counted(logits: torch.Tensor) -> torch.Tensor:
        calls.append(logits.shape[0])
        return real(logits)

    monkeypatch.setattr(losses_module, "class_losses", counted)
    model = torch.nn.Linear(3, 4)
    corr = BackwardCorrection(pair(4, 0.45))
    shared = SIGUAOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), NonNegativeCorrection(corr), 1.0)
    x, y = torch.randn(16, 3), torch.randint(0, 4, (16,))
    logits = model(x)
    result = shared.step(corr(logits, y), logits=logits, targets=y)
    assert calls == [16]
    # The same masks as a condition that computes them itself.
    alone = NonNegativeCorrection(pair(4, 0.45))
    want = alone(result.objective.new_zeros(16), logits=logits, targets=y)
    assert torch.equal(result.good, want.good) and torch.equal(result.bad, want.bad)


def test_shared_per_class_losses_are_recomputed_for_other_or_changed_logits() -> None:
    corr = BackwardCorrection(pair(4, 0.45))
    condition = NonNegativeCorrection(corr)
    logits, y = _batch()
    alone = NonNegativeCorrection(pair(4, 0.45))
    losses = corr(logits, y).detach()
    other, _ = _batch(seed=1)
    for changed in (other, logits.mul_(-1)):  # in place: the version counter moves on
        got, want = condition(losses, logits=changed, targets=y), alone(losses, logits=changed, targets=y)
        assert torch.equal(got.bad, want.bad)


def test_backward_correction_pickles_without_its_cache() -> None:
    corr = BackwardCorrection(pair(4, 0.45))
    logits, y = _batch()
    corr(logits, y)
    clone = pickle.loads(pickle.dumps(NonNegativeCorrection(corr)))
    assert torch.equal(clone.inverse, corr.inverse) and clone.correction._last is None
