"""Argument checks shared by the package: each names the argument, says what is wrong and the fix.

Wrong types raise TypeError, wrong values ValueError. Every check runs before anything changes.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

__all__ = ["check_bool", "check_choice", "check_real"]


def check_bool(value: Any, name: str) -> bool:
    """``value`` if it is a bool (not a string, a number or an array)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r:.100}")
    return value


def check_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    """``value`` if it is one of the strings ``choices``."""
    if not isinstance(value, str) or value not in choices:
        options = ", ".join(repr(choice) for choice in choices)
        raise ValueError(f"{name} must be one of {options}; got {value!r:.100}")
    return value


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
