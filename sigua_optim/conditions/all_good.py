"""Standard training as a condition: every sample is good."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from .base import Selection, check_batch, check_valid


class AllGood:
    r"""Standard training: :math:`C_{good} \equiv 1`, :math:`C_{bad} \equiv 0`.

    With it Eq. 3 is the plain mean of the losses (of the ``valid=`` ones, when given).

    Example:
        >>> import torch
        >>> AllGood()(torch.tensor([0.3, 2.0])).good
        tensor([True, True])
    """

    inputs: ClassVar[frozenset[str]] = frozenset({"valid"})
    hyperparameters: ClassVar[tuple[str, ...]] = ()

    def __call__(self, losses: Tensor, *, valid: Tensor | None = None, **inputs: Any) -> Selection:
        check_batch(losses)
        valid = check_valid(valid, losses)
        good = torch.ones_like(losses, dtype=torch.bool) if valid is None else valid
        return Selection(good, torch.zeros_like(good))

    def __repr__(self) -> str:
        return "AllGood()"
