r"""Non-negative backward correction: nnBC and SIGUA_BC (Eqs. 8, 11-12).

The backward-corrected loss of Eq. 8 is unbiased but can go negative, and a negative loss is a
sign of over-fitting noisy labels. A sample is good when its corrected loss is non-negative; nnBC
drops the rest, SIGUA_BC ascends on them (Eq. 12, ``gamma = 1`` in the paper).

Two criteria (NOTES.md, "Caution on Eq. 11"):

- ``"sample"`` (default, the authors' code): :math:`[T^{-1}\ell_{vec}(x_i)]_{\tilde y_i} \ge 0`.
- ``"total"`` (Eq. 11 as printed): :math:`\mathbf{1}^\top T^{-1}\ell_{vec}(x_i) \ge 0`. For any T
  whose columns also sum to 1 (symmetric and pair noise) :math:`\mathbf{1}^\top T^{-1} =
  \mathbf{1}^\top`, so this never marks a sample bad there.

An exact 0 counts as good. Train with ``losses = backward_corrected_cross_entropy(logits, y, T)``
and pass ``logits=`` and ``targets=`` to the step.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import torch
from torch import Tensor

from .. import functional
from .._validation import check_bool, check_choice
from ..functional import Criterion
from ..losses import check_logits_targets, class_losses, invert_transition_matrix
from .base import Scheduled, Selection, check_batch, check_epoch, check_valid


class NonNegativeCorrection(Scheduled):
    r"""nnBC (``ascend=False``) and SIGUA_BC (``ascend=True``), Eqs. 11-12.

    :math:`C_{good}(i) = \mathbb{I}(\text{corrected loss} \ge 0)`; :math:`C_{bad} = \neg C_{good}`
    when ``ascend``, else :math:`C_{bad} \equiv 0`.

    Args:
        transition_matrix: :math:`T`, ``[k, k]``, :math:`T_{ij} = p(\tilde y = j | y = i)`:
            row-stochastic and invertible. Inverted once; the criterion is evaluated in float64.
        ascend: ascend on the negative-loss samples (SIGUA_BC, default) or drop them (nnBC).
        criterion: ``"sample"`` (default, the authors' per-sample rule) or ``"total"`` (Eq. 11 as
            printed); see the module docstring.
        warmup_epochs: epochs of plain backward correction (every sample good) before the
            criterion applies, as the authors' code does; default 0 (the paper). Their loop
            counts epochs from 1 and switches at ``epoch > warm_up``: with
            ``set_epoch(epoch + 1)``, ``warmup_epochs=warm_up + 1`` reproduces it.

    Each call needs ``logits=`` ``[n, k]`` and ``targets=`` (the noisy labels, ``[n]``; per-token
    ``[batch, seq, k]`` and ``[batch, seq]`` are flattened); it reads back one bool to check that
    the targets lie in [0, k). With ``valid=``, the other positions are neither good nor bad.

    Example:
        >>> import torch
        >>> from sigua_optim.noise import pair
        >>> cond = NonNegativeCorrection(pair(3, 0.45))
        >>> logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0]])
        >>> # Fitting label 0 this confidently drives the first corrected loss below 0 (-0.66).
        >>> cond(torch.zeros(2), logits=logits, targets=torch.tensor([0, 0])).bad
        tensor([ True, False])
    """

    def __init__(
        self,
        transition_matrix: Tensor,
        ascend: bool = True,
        criterion: Criterion = "sample",
        warmup_epochs: float = 0,
    ) -> None:
        self.transition_matrix, self.inverse = invert_transition_matrix(transition_matrix)
        self.ascend = check_bool(ascend, "ascend")
        self.criterion: Criterion = check_choice(criterion, "criterion", get_args(Criterion))  # type: ignore[assignment]
        self.warmup_epochs = check_epoch(warmup_epochs, "warmup_epochs")
        self._inverse_on: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def _inverse_like(self, like: Tensor) -> Tensor:
        key = (like.device, like.dtype)
        if key not in self._inverse_on:
            self._inverse_on[key] = self.inverse.to(like.device, like.dtype)
        return self._inverse_on[key]

    def __call__(
        self,
        losses: Tensor,
        *,
        logits: Tensor | None = None,
        targets: Tensor | None = None,
        valid: Tensor | None = None,
        **inputs: Any,
    ) -> Selection:
        n = check_batch(losses)
        valid = check_valid(valid, losses)
        if logits is not None and logits.ndim > 2:  # per-token: [batch, seq, k] -> [batch * seq, k]
            logits = logits.reshape(-1, logits.shape[-1])
        if targets is not None and targets.ndim > 1:
            targets = targets.reshape(-1)
        if valid is not None and targets is not None and targets.shape == valid.shape:
            targets = targets.masked_fill(~valid, 0)  # padding may carry ignore_index
        targets = check_logits_targets(logits, targets, self.inverse.shape[0], "NonNegativeCorrection")
        assert logits is not None
        if logits.shape[0] != n:
            raise ValueError(f"logits= has {logits.shape[0]} rows but there are {n} losses")
        if self.epoch < self.warmup_epochs:
            good = torch.ones_like(losses, dtype=torch.bool) if valid is None else valid
            return Selection(good, torch.zeros_like(good))
        per_class = class_losses(logits.detach()).double()
        good, bad = functional.nonnegative_masks(
            per_class, targets, self._inverse_like(per_class), self.criterion, self.ascend
        )
        return Selection(good, bad) if valid is None else Selection(good & valid, bad & valid)

    def __repr__(self) -> str:
        k = self.inverse.shape[0]
        mode: Literal["SIGUA_BC", "nnBC"] = "SIGUA_BC" if self.ascend else "nnBC"
        return (
            f"NonNegativeCorrection(<{k}x{k} T>, ascend={self.ascend}, "
            f"criterion={self.criterion!r}, warmup_epochs={self.warmup_epochs:g})  # {mode}"
        )
