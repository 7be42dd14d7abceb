"""Backward correction (Eq. 8) and its non-negative criterion (Eqs. 11-12): inputs and sharing."""

from __future__ import annotations

import pytest
import torch

from sigua_optim.conditions import NonNegativeCorrection
from sigua_optim.losses import backward_corrected_cross_entropy
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
