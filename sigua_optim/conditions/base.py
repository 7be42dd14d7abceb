"""What a condition is: a callable ``(losses, **inputs) -> Selection``, and the epoch it follows."""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor

from .._validation import check_epoch, check_mapping

__all__ = [
    "Condition",
    "Scheduled",
    "Selection",
    "check_batch",
    "check_epoch",
    "check_mask_input",
    "check_valid",
]


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

    The named inputs a condition takes (``clean=``, ``logits=``, ...) are those of its class
    attribute ``inputs``, a frozenset of names, when it has one; otherwise the keyword
    parameters of its signature after the losses, and any name when it takes ``**kwargs``.
    ``step``, ``objective`` and ``select`` refuse a keyword the condition does not take (a
    TypeError naming it and the known ones), so a misspelled ``targest=y`` is not silently
    ignored. ``valid=`` (the mask of the losses that count) is passed to the condition whenever
    the caller gives it: a condition used with ``valid=`` must take it.

    A condition may also name, in the class attribute ``hyperparameters``, the attributes that
    define it (e.g. ``("noise_rate", "warmup_epochs")``): checkpoints store them with the
    condition's type, and loading one into an optimizer whose condition differs is refused.

    Example:
        >>> import torch
        >>> from sigua_optim.conditions import Selection
        >>> def larger_than_one(losses, *, valid=None):  # takes valid= only
        ...     return Selection(losses <= 1, losses > 1)
        >>> larger_than_one(torch.tensor([0.5, 2.0])).bad
        tensor([False,  True])
    """

    def __call__(self, losses: Tensor, **inputs: Any) -> Selection: ...


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
        if "epoch" not in check_mapping(state, "the condition's state"):
            raise ValueError(f"the condition's state must have an 'epoch'; got keys {sorted(state)}")
        self.set_epoch(state["epoch"])
