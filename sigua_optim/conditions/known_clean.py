"""The oracle of the paper's Figure 1: good = truly clean, bad = truly flipped."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from .base import Selection, check_batch, check_mask_input, check_valid


class KnownClean:
    r"""The Figure-1 oracle: :math:`C_{good}(i) = \text{clean}_i`, :math:`C_{bad} = \neg C_{good}`.

    Needs ``clean=``, a bool mask (true where the label is the true one), on each call:
    ``opt.step(losses, clean=noisy_labels == true_labels)``.

    Example:
        >>> import torch
        >>> KnownClean()(torch.tensor([0.3, 2.0]), clean=torch.tensor([True, False])).bad
        tensor([False,  True])
    """

    inputs: ClassVar[frozenset[str]] = frozenset({"clean", "valid"})
    hyperparameters: ClassVar[tuple[str, ...]] = ()

    def __call__(
        self, losses: Tensor, *, clean: Tensor | None = None, valid: Tensor | None = None, **inputs: Any
    ) -> Selection:
        check_batch(losses)
        valid = check_valid(valid, losses)
        clean = check_mask_input("clean", clean, losses, "KnownClean")
        if clean.dtype != torch.bool:
            raise TypeError(f"clean= must be a bool mask (e.g. noisy == true), got {clean.dtype}")
        if valid is None:
            return Selection(clean, ~clean)
        return Selection(clean & valid, valid > clean)

    def __repr__(self) -> str:
        return "KnownClean()"
