"""Property-test conditions against the literal loops of :mod:`sigua_optim.reference`.

Needs the ``test`` extra (hypothesis). For your own condition, give the loop it should equal::

    from hypothesis import given
    from sigua_optim.testing import assert_matches_reference, loss_vectors

    def above_mean(losses, **_):                     # the fast condition under test
        bad = losses > losses.mean()
        return Selection(~bad, bad)

    def above_mean_loop(losses, **_):                # its specification, one sample at a time
        mean = sum(losses) / len(losses)
        return [l <= mean for l in losses], [l > mean for l in losses]

    @given(loss_vectors())
    def test_above_mean(losses):
        assert_matches_reference(above_mean, losses, reference=above_mean_loop, gamma=0.01)

The check covers the masks (exactly), the objective of Eq. 3 and its gradient with respect to
each loss (within the dtype's rounding), against Algorithm 1's loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

try:
    from hypothesis import strategies as st
except ImportError as error:
    raise ImportError(
        "sigua_optim.testing needs hypothesis: pip install 'hypothesis>=6.80' "
        "(or install this package with its test extra, pip install -e '.[test]' from a checkout)"
    ) from error

from . import reference as spec
from .functional import Reduction, sigua_objective

__all__ = ["DTYPES", "assert_matches_reference", "loss_vectors", "rates"]

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
"""The dtypes :func:`loss_vectors` draws from by default."""


@st.composite
def loss_vectors(
    draw: st.DrawFn,
    min_size: int = 1,
    max_size: int = 64,
    dtypes: Sequence[torch.dtype] = DTYPES,
) -> Tensor:
    """1-D loss tensors that stress selection: ties, one sample, all equal, extremes.

    Each draw picks a dtype and one of: losses from a handful of values (many ties), all
    equal, free floats (rounded to the dtype, so ties appear there too), or extremes (0, the
    smallest normal, and the largest finite value divided by ``2 * max_size``: at the very
    largest value a sum of a few losses overflows, in the reference loop's float64 as in
    PyTorch's own ``mean()``).
    """
    dtype = draw(st.sampled_from(list(dtypes)))
    info = torch.finfo(dtype)
    n = draw(st.integers(min_size, max_size))
    free = st.floats(0.0, 1e4, allow_nan=False, allow_infinity=False)
    kind = draw(st.sampled_from(["pool", "equal", "free", "extreme"]))
    if kind == "pool":
        pool = draw(st.lists(free, min_size=1, max_size=4))
        values = draw(st.lists(st.sampled_from(pool), min_size=n, max_size=n))
    elif kind == "equal":
        values = [draw(free)] * n
    elif kind == "free":
        values = draw(st.lists(free, min_size=n, max_size=n))
    else:
        largest = float(info.max) / (2 * max_size)
        extremes = st.sampled_from([0.0, float(info.smallest_normal), largest, 1.0])
        values = draw(st.lists(extremes, min_size=n, max_size=n))
    return torch.tensor(values, dtype=torch.float64).to(dtype)


def rates() -> st.SearchStrategy[float]:
    """Rates in [0, 1], with the ends and exact fractions drawn often."""
    return st.one_of(st.sampled_from([0.0, 1.0, 0.5, 0.25]), st.floats(0.0, 1.0))


def _tolerance(values: list[float], reference_value: float, dtype: torch.dtype) -> float:
    """Rounding bound: the dtype's epsilon on the result, float32 accumulation over the terms."""
    accumulate = torch.finfo(torch.promote_types(dtype, torch.float32)).eps
    scale = sum(abs(v) for v in values) / max(len(values), 1)
    info = torch.finfo(dtype)
    return 4 * (info.eps * abs(reference_value) + accumulate * len(values) * scale) + info.tiny


def assert_matches_reference(
    condition: Callable[..., Any],
    losses: Tensor,
    *,
    gamma: float = 0.01,
    reference: Callable[..., tuple[list[bool], ...]] | None = None,
    reduction: Reduction = "paper",
    **inputs: Any,
) -> None:
    """Assert that ``condition`` + the fused reduction equal Algorithm 1 on ``losses``.

    Args:
        condition: the condition under test, ``(losses, **inputs) -> Selection``.
        losses: a 1-D loss tensor (see :func:`loss_vectors`).
        gamma: the ascent underweight of Eq. 3.
        reference: the loop the condition must equal, ``(losses: list[float], **inputs) ->
            (good, bad)`` lists of bool, or ``(good, bad, undecided)`` where ``undecided``
            marks samples whose criterion lies within float64 rounding of its threshold (they
            may go either way). Default: the built-in condition's loop
            (:func:`sigua_optim.reference.for_condition`).
        reduction: ``"paper"`` (Algorithm 1) or ``"official"``.
        **inputs: the condition's named inputs (``clean=``, ``logits=``, ``targets=``, and
            ``valid=`` for per-token losses: only valid losses are ranked, n_b is their count).

    Raises:
        AssertionError: naming the first sample or quantity that differs.
    """
    loop = reference if reference is not None else spec.for_condition(condition)
    values = losses.detach().double().tolist()
    n = len(values)
    valid = inputs.get("valid")
    # With valid= (per-token losses), the loops see the valid losses only, and n_b is their count.
    kept = list(range(n)) if valid is None else [i for i, v in enumerate(valid.tolist()) if v]
    sub_inputs = {
        name: value[valid]
        if valid is not None and isinstance(value, Tensor) and value.shape[:1] == losses.shape
        else value
        for name, value in inputs.items()
        if name != "valid"
    }
    expected = loop([values[i] for i in kept], **sub_inputs)
    want_good, want_bad, undecided = [False] * n, [False] * n, [False] * n
    for position, i in enumerate(kept):
        want_good[i], want_bad[i] = bool(expected[0][position]), bool(expected[1][position])
        undecided[i] = len(expected) > 2 and bool(expected[2][position])
    selection = condition(losses.detach(), **inputs)
    good, bad = selection.good.tolist(), selection.bad.tolist()
    for i in range(n):
        if not undecided[i] and (good[i], bad[i]) != (want_good[i], want_bad[i]):
            raise AssertionError(
                f"sample {i} (loss {values[i]!r}, {losses.dtype}): condition gives good={good[i]} "
                f"bad={bad[i]}, the reference loop good={want_good[i]} bad={want_bad[i]}; "
                f"losses={values}"
            )
    # Algorithm 1 is linear in the losses: its gradient at sample i is its value at the unit vector.
    loop_objective = spec.algorithm1 if reduction == "paper" else spec.official_objective
    kept_good, kept_bad = [good[i] for i in kept], [bad[i] for i in kept]
    want = loop_objective([values[i] for i in kept], kept_good, kept_bad, gamma)
    leaf = losses.detach().clone().requires_grad_(True)
    num_items = None if valid is None else len(kept)
    objective = sigua_objective(leaf, selection.good, selection.bad, gamma, reduction, num_items)
    tolerance = _tolerance(values, want, losses.dtype)
    if not abs(float(objective.detach()) - want) <= tolerance:
        raise AssertionError(
            f"objective {float(objective.detach())!r} != Algorithm 1's {want!r} (tolerance {tolerance:.3g}, "
            f"{losses.dtype}); losses={values}, good={good}, bad={bad}"
        )
    objective.backward()  # type: ignore[no-untyped-call]
    assert leaf.grad is not None
    info = torch.finfo(losses.dtype)
    subnormal = info.tiny * info.eps  # the spacing of the dtype's subnormals
    grads = leaf.grad.double().tolist()
    for i in range(n):
        unit = [1.0 if j == i else 0.0 for j in kept]
        wanted = loop_objective(unit, kept_good, kept_bad, gamma) if i in kept else 0.0
        if not abs(grads[i] - wanted) <= 4 * info.eps * abs(wanted) + subnormal:
            raise AssertionError(
                f"d objective / d loss[{i}] = {grads[i]!r}, Algorithm 1 gives {wanted!r} "
                f"({losses.dtype}, good={good[i]}, bad={bad[i]})"
            )
