r"""Non-negative backward correction: nnBC and SIGUA_BC (Eqs. 8, 11-12).

The backward-corrected loss of Eq. 8 is unbiased but can go negative, and a negative loss is a
sign of over-fitting noisy labels. A sample is good when its corrected loss is non-negative; nnBC
drops the rest, SIGUA_BC ascends on them (Eq. 12, ``gamma = 1`` in the paper).

Three criteria (docs/differences.md; docs/results.md §3 measures them):

- ``"sample"`` (default, the authors' code): :math:`[T^{-1}\ell_{vec}(x_i)]_{\tilde y_i} \ge 0`.
- ``"total"`` (Eq. 11 as printed): :math:`\mathbf{1}^\top T^{-1}\ell_{vec}(x_i) \ge 0`. For any T
  whose columns also sum to 1 (symmetric and pair noise) :math:`\mathbf{1}^\top T^{-1} =
  \mathbf{1}^\top`, so this never marks a sample bad there.
- ``"class"`` (nnPU's non-negative risk, Kiryo et al. 2017, per clean class): the batch's
  estimate of each clean class's risk, :math:`R_c = \sum_i [T^{-1}]_{\tilde y_i c}\,
  \ell(f(x_i), c)`, cannot be negative in expectation; when it is, its terms are ascended on
  (dropped by nnBC). This is a selection of the per-class *terms* of Eq. 8, not of samples: the
  losses are the ``n * k`` terms ``(class_losses(logits) * T_inv[y]).flatten()`` and the step
  takes ``num_items=n`` so that Eq. 3 divides by the batch size (see the class docstring).

An exact 0 counts as good. With ``"sample"`` or ``"total"`` train with
``losses = backward_corrected_cross_entropy(logits, y, T)``; pass ``logits=`` and ``targets=`` to
the step.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from .. import functional
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
        criterion: ``"sample"`` (default, the authors' per-sample rule), ``"total"`` (Eq. 11 as
            printed) or ``"class"`` (nnPU's non-negative risk per clean class, on the per-class
            terms); see the module docstring.
        warmup_epochs: epochs of plain backward correction (every sample good) before the
            criterion applies, as the authors' code does; default 0 (the paper).

    Each call needs ``logits=`` ``[n, k]`` and ``targets=`` (the noisy labels, ``[n]``; per-token
    ``[batch, seq, k]`` and ``[batch, seq]`` are flattened); it reads back one bool to check that
    the targets lie in [0, k). With ``valid=``, the other positions are neither good nor bad.
    With ``criterion="class"`` the losses are the ``n * k`` terms of Eq. 8 and ``valid=`` is
    refused (drop padded rows before the loss).

    Example:
        >>> import torch
        >>> from sigua_optim.noise import pair
        >>> cond = NonNegativeCorrection(pair(3, 0.45))
        >>> logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0]])
        >>> # Fitting label 0 this confidently drives the first corrected loss below 0 (-0.66).
        >>> cond(torch.zeros(2), logits=logits, targets=torch.tensor([0, 0])).bad
        tensor([ True, False])
        >>> # "class": one term per sample and class; Eq. 8's loss of sample i is the sum of row i.
        >>> from sigua_optim.losses import class_losses, invert_transition_matrix
        >>> terms = class_losses(logits) * invert_transition_matrix(pair(3, 0.45))[1][[0, 0]].float()
        >>> by_class = NonNegativeCorrection(pair(3, 0.45), criterion="class")
        >>> by_class(terms.flatten(), logits=logits, targets=torch.tensor([0, 0])).bad.view(2, 3)
        tensor([[False,  True, False],
                [False,  True, False]])
    """

    def __init__(
        self,
        transition_matrix: Tensor,
        ascend: bool = True,
        criterion: Criterion = "sample",
        warmup_epochs: float = 0,
    ) -> None:
        self.transition_matrix, self.inverse = invert_transition_matrix(transition_matrix)
        if criterion not in ("sample", "total", "class"):
            raise ValueError(
                f"criterion must be 'sample', 'total' (Eq. 11) or 'class' (nnPU), got {criterion!r}"
            )
        self.ascend = bool(ascend)
        self.criterion: Criterion = criterion
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
        k = self.inverse.shape[0] if self.criterion == "class" else 1
        if k > 1 and valid is not None:
            raise ValueError("criterion='class' does not take valid=: drop the padded rows first")
        if logits is not None and logits.ndim > 2:  # per-token: [batch, seq, k] -> [batch * seq, k]
            logits = logits.reshape(-1, logits.shape[-1])
        if targets is not None and targets.ndim > 1:
            targets = targets.reshape(-1)
        if valid is not None and targets is not None and targets.shape == valid.shape:
            targets = targets.masked_fill(~valid, 0)  # padding may carry ignore_index
        check_logits_targets(logits, targets, self.inverse.shape[0], "NonNegativeCorrection")
        assert logits is not None and targets is not None
        if logits.shape[0] * k != n:
            per = f" x {k} classes (criterion='class' takes the per-class terms, flattened)" if k > 1 else ""
            raise ValueError(f"logits= has {logits.shape[0]} rows{per} but there are {n} losses")
        if self.epoch < self.warmup_epochs:
            good = torch.ones_like(losses, dtype=torch.bool) if valid is None else valid
            return Selection(good, torch.zeros_like(good))
        per_class = class_losses(logits.detach()).double()
        good, bad = functional.nonnegative_masks(
            per_class, targets, self._inverse_like(per_class), self.criterion, self.ascend
        )
        good, bad = good.reshape(-1), bad.reshape(-1)
        return Selection(good, bad) if valid is None else Selection(good & valid, bad & valid)

    def __repr__(self) -> str:
        k = self.inverse.shape[0]
        mode: Literal["SIGUA_BC", "nnBC"] = "SIGUA_BC" if self.ascend else "nnBC"
        return (
            f"NonNegativeCorrection(<{k}x{k} T>, ascend={self.ascend}, "
            f"criterion={self.criterion!r}, warmup_epochs={self.warmup_epochs:g})  # {mode}"
        )
