"""What a condition is: a callable ``(losses, **inputs) -> Selection``, and the epoch it follows."""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor


class Selection(NamedTuple):
    """The good and bad masks of one mini-batch: bool tensors shaped like the losses.

    ``good`` samples are descended on (weight 1), ``bad`` ones ascended on (weight ``-gamma``),
    the rest ignored (weight 0). A sample marked both counts as good, as in Algorithm 1.
    """

    good: Tensor
    bad: Tensor


@runtime_checkable
class Condition(Protocol):
    """Any callable that maps the detached per-sample losses (and named inputs) to a Selection.

    A plain function is a condition. A condition that follows the training schedule may also
    define ``set_epoch(epoch)``, and one with state ``state_dict()`` / ``load_state_dict()``:
    :class:`~sigua_optim.SIGUAOptimizer` calls them when they exist.
    """

    def __call__(self, losses: Tensor, **inputs: Any) -> Selection: ...


def check_epoch(epoch: float, name: str = "epoch") -> float:
    """Validate an epoch (a count from 0, fractional allowed for step-level schedules)."""
    if isinstance(epoch, bool) or not isinstance(epoch, (int, float)):
        raise TypeError(f"{name} must be a number of epochs (int or float), got {epoch!r}")
    if not math.isfinite(epoch) or epoch < 0:
        raise ValueError(f"{name} must be a finite number >= 0 (epochs count from 0), got {epoch}")
    return float(epoch)


def check_batch(losses: Tensor) -> int:
    """Validate per-sample losses handed to a condition; return the batch size."""
    if losses.ndim != 1:
        raise ValueError(
            f"losses must be per-sample, shape [batch]; got shape {tuple(losses.shape)}. "
            "Compute the loss with reduction='none' (and flatten per-token losses)."
        )
    if losses.shape[0] == 0:
        raise ValueError("losses is empty: a SIGUA step needs at least one sample in the batch")
    return int(losses.shape[0])


def check_mask_input(name: str, value: Tensor | None, losses: Tensor, owner: str) -> Tensor:
    """Validate a per-sample input such as ``clean=``: present, one entry per loss."""
    if value is None:
        raise ValueError(f"{owner} needs {name}=: pass it to step()/objective(), e.g. {name}=mask")
    if not isinstance(value, Tensor):
        raise TypeError(f"{name}= must be a torch.Tensor, got {type(value).__name__}")
    if value.shape != losses.shape:
        raise ValueError(
            f"{name}= must have one entry per loss, shape {tuple(losses.shape)}; "
            f"got shape {tuple(value.shape)}"
        )
    if value.device != losses.device:
        raise ValueError(f"{name}= is on {value.device} but losses are on {losses.device}")
    return value


def check_valid(valid: Tensor | None, losses: Tensor) -> Tensor | None:
    """Validate ``valid=``, the optional bool mask of the losses that count (e.g. real tokens)."""
    if valid is None:
        return None
    valid = check_mask_input("valid", valid, losses, "valid=")
    if valid.dtype != torch.bool:
        raise TypeError(f"valid= must be a bool mask (true for the losses that count), got {valid.dtype}")
    return valid


class Scheduled:
    """Holds the epoch a condition's schedule follows; ``SIGUAOptimizer.set_epoch`` sets it."""

    epoch: float = 0.0

    def set_epoch(self, epoch: float) -> None:
        """Set the (possibly fractional) epoch t of the schedule, counted from 0."""
        self.epoch = check_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        """The condition's state: its epoch."""
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.set_epoch(state["epoch"])
