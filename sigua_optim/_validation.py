"""Argument checks shared by the package: each names the argument, says what is wrong and the fix.

Wrong types raise TypeError, wrong values ValueError. Every check runs before anything changes.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import numbers
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "accepted_inputs",
    "check_bool",
    "check_choice",
    "check_condition",
    "check_epoch",
    "check_inputs",
    "check_mapping",
    "check_real",
    "check_scaler",
    "check_tensor",
]

TENSOR_INPUTS = frozenset({"clean", "logits", "targets", "valid"})
"""The named inputs of the built-in conditions, each a tensor."""


def check_bool(value: Any, name: str) -> bool:
    """``value`` if it is a bool (not a string, a number or an array)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r:.100}")
    return value


def check_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    """``value`` if it is one of the strings ``choices`` (a TypeError for a non-string)."""
    if isinstance(value, str) and value in choices:  # the hot path: no message built
        return value
    options = ", ".join(repr(choice) for choice in choices)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, one of {options}; got {value!r:.100}")
    raise ValueError(f"{name} must be one of {options}; got {value!r:.100}")


def check_real(
    value: Any,
    name: str,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    high_open: bool = False,
    hint: str = "",
) -> float:
    """``value`` as a finite float in ``[low, high]`` (``[low, high)`` with ``high_open``).

    Accepts Python and numpy reals, not bools, strings, tensors or complex numbers; an int too
    large for a float is a ValueError, not an OverflowError.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r:.100}{hint}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    interval = f"[{low:g}, {high:g}{')' if high_open else ']'}"
    inside = low <= number < high if high_open else low <= number <= high
    if not math.isfinite(number) or not inside:
        raise ValueError(f"{name} must be a finite number in {interval}, got {value!r:.100}{hint}")
    return number


def check_epoch(epoch: Any, name: str = "epoch") -> float:
    """An epoch count from 0 (fractional allowed for step-level schedules) as a float."""
    return check_real(epoch, name, 0.0, hint=" (epochs count from 0)")


def check_tensor(value: Any, name: str, what: str) -> Tensor:
    """``value`` if it is a tensor; ``what`` says which tensor is expected."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor ({what}), got {type(value).__name__}")
    return value


def check_mapping(value: Any, name: str) -> Mapping[str, Any]:
    """``value`` if it is a mapping (a dict), as state dicts are."""
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a dict, got {type(value).__name__}")
    return value


def check_condition(value: Any, name: str = "condition") -> Any:
    """A condition instance: a callable ``(losses, **inputs) -> Selection``, not a class."""
    if isinstance(value, type):
        raise TypeError(
            f"{name} must be a condition instance, got the class {value.__name__}: pass an instance, "
            f"e.g. SmallLoss(noise_rate=0.2)"
        )
    if not callable(value):
        raise TypeError(
            f"{name} must be a condition, a callable (losses, **inputs) -> Selection such as "
            f"SmallLoss(noise_rate=0.2); got {value!r:.100}"
        )
    return value


def check_scaler(value: Any) -> None:
    """``scaler=``: a ``torch.amp.GradScaler`` or None."""
    if value is not None and not isinstance(value, torch.amp.GradScaler):
        raise TypeError(
            f"scaler= must be a torch.amp.GradScaler (e.g. torch.amp.GradScaler('cuda')) or None, "
            f"got {type(value).__name__}"
        )


_SIGNATURE_INPUTS: weakref.WeakKeyDictionary[Any, frozenset[str] | None] = weakref.WeakKeyDictionary()
"""The inputs read from a condition's signature, once per condition (inspect takes ~17 us a call)."""


def accepted_inputs(condition: Any) -> frozenset[str] | None:
    """The named inputs ``condition`` takes: its ``inputs`` attribute, else its signature's
    keyword parameters after the losses; None (anything) when it takes ``**kwargs``."""
    declared = getattr(condition, "inputs", None)
    if declared is not None:
        return frozenset(declared)
    with contextlib.suppress(KeyError, TypeError):  # TypeError: not weakly referable or hashable
        return _SIGNATURE_INPUTS[condition]
    accepted = _signature_inputs(condition)
    with contextlib.suppress(TypeError):
        _SIGNATURE_INPUTS[condition] = accepted
    return accepted


def _signature_inputs(condition: Any) -> frozenset[str] | None:
    try:
        parameters = list(inspect.signature(condition).parameters.values())
    except (TypeError, ValueError):  # no signature to read (a builtin): accept anything
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return frozenset(p.name for p in parameters[1:] if p.kind in keyword)


def check_inputs(condition: Any, inputs: Mapping[str, Any], where: str) -> None:
    """The named inputs of a step are ones the condition takes; the built-in ones are tensors."""
    accepted = accepted_inputs(condition)
    unknown = sorted(set(inputs) - accepted) if accepted is not None else []
    if unknown:
        known = ", ".join(f"{name}=" for name in sorted(accepted or ())) or "none"
        raise TypeError(
            f"{where} got unexpected keyword {', '.join(f'{name}=' for name in unknown)}: the "
            f"condition {condition!r:.100} takes {known} (check the spelling, or declare the input "
            f"in the condition's `inputs`)"
        )
    if getattr(condition, "inputs", None) is None:
        return
    for name in TENSOR_INPUTS.intersection(inputs):  # the built-in inputs: tensors
        if inputs[name] is not None:
            check_tensor(inputs[name], f"{name}=", "one entry per loss")
