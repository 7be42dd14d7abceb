r"""Non-negative backward correction: nnBC and SIGUA_BC (Eqs. 8, 11-12).

The backward-corrected loss of Eq. 8 is unbiased but can go negative, and a negative loss is a
sign of over-fitting noisy labels. A sample is good when its corrected loss is non-negative; nnBC
drops the rest, SIGUA_BC ascends on them (Eq. 12, ``gamma = 1`` in the paper).

Three criteria ([Paper vs code vs sigua_optim](../differences.md) compares them with the paper;
[Results](../results.md#does-the-loss-correction-family-work) measures them):

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
``corr = BackwardCorrection(T)``, ``losses = corr(logits, y)`` and ``NonNegativeCorrection(corr)``,
and pass ``logits=`` and ``targets=`` to the step: the condition reuses the per-class losses
``corr`` computed for those logits.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, get_args

import torch
from torch import Tensor

from .. import functional
from .._validation import check_bool, check_choice
from ..functional import Criterion
from ..losses import BackwardCorrection, check_logits_targets
from .base import Scheduled, Selection, check_batch, check_epoch, check_valid


class NonNegativeCorrection(Scheduled):
    r"""nnBC (``ascend=False``) and SIGUA_BC (``ascend=True``), Eqs. 11-12.

    :math:`C_{good}(i) = \mathbb{I}(\text{corrected loss} \ge 0)`; :math:`C_{bad} = \neg C_{good}`
    when ``ascend``, else :math:`C_{bad} \equiv 0`.

    Args:
        transition_matrix: :math:`T`, ``[k, k]``, :math:`T_{ij} = p(\tilde y = j | y = i)`:
            row-stochastic and invertible, or the
            :class:`~sigua_optim.losses.BackwardCorrection` that computes the training losses
            (then its :math:`T^{-1}` and, for the same logits, its per-class losses are reused).
            Inverted once; the criterion is evaluated in float64.
        ascend: ascend on the negative-loss samples (SIGUA_BC, default) or drop them (nnBC).
        criterion: ``"sample"`` (default, the authors' per-sample rule), ``"total"`` (Eq. 11 as
            printed) or ``"class"`` (nnPU's non-negative risk per clean class, on the per-class
            terms); see the module docstring. ``"class"`` is the one with which SIGUA_BC ≥ nnBC
            ≥ BC held on every noise measured; ``"sample"`` put them below BC on symmetric noise
            ([Which condition?](../which-condition.md#which-criterion-for-the-loss-correction-family)).
        warmup_epochs: epochs of plain backward correction (every sample good) before the
            criterion applies, as the authors' code does; default 0 (the paper). Their loop
            counts epochs from 1 and switches at ``epoch > warm_up``: with
            ``set_epoch(epoch + 1)``, ``warmup_epochs=warm_up + 1`` reproduces it.

    Each call needs ``logits=`` ``[n, k]`` and ``targets=`` (the noisy labels, ``[n]``; per-token
    ``[batch, seq, k]`` and ``[batch, seq]`` are flattened); it reads back one bool to check that
    the targets lie in [0, k). With ``valid=``, the other positions are neither good nor bad.
    With ``criterion="class"`` the losses are the ``n * k`` terms of Eq. 8 and ``valid=`` is
    refused (drop padded rows before the loss).

    Example:
        >>> import torch
        >>> from sigua_optim import SIGUAOptimizer
        >>> from sigua_optim.losses import BackwardCorrection
        >>> from sigua_optim.noise import pair
        >>> model = torch.nn.Linear(5, 3)
        >>> corr = BackwardCorrection(pair(3, 0.45))
        >>> sgd = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> opt = SIGUAOptimizer(sgd, NonNegativeCorrection(corr), gamma=1.0)
        >>> x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
        >>> logits = model(x)
        >>> result = opt.step(corr(logits, y), logits=logits, targets=y)  # l_vec computed once
        >>> result.good.shape
        torch.Size([8])
        >>> # "class": one term per sample and class; Eq. 8's loss of sample i is the sum of row i.
        >>> logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0]])
        >>> from sigua_optim.losses import class_losses
        >>> terms = class_losses(logits) * corr.inverse[[0, 0]].float()
        >>> by_class = NonNegativeCorrection(corr, criterion="class")
        >>> by_class(terms.flatten(), logits=logits, targets=torch.tensor([0, 0])).bad.view(2, 3)
        tensor([[False,  True, False],
                [False,  True, False]])
    """

    inputs: ClassVar[frozenset[str]] = frozenset({"logits", "targets", "valid"})
    hyperparameters: ClassVar[tuple[str, ...]] = ("transition_matrix", "ascend", "criterion", "warmup_epochs")

    def __init__(
        self,
        transition_matrix: Tensor | BackwardCorrection,
        ascend: bool = True,
        criterion: Criterion = "sample",
        warmup_epochs: float = 0,
    ) -> None:
        if isinstance(transition_matrix, BackwardCorrection):
            self.correction = transition_matrix
        else:
            self.correction = BackwardCorrection(transition_matrix)
        self.transition_matrix, self.inverse = self.correction.transition_matrix, self.correction.inverse
        self.ascend = check_bool(ascend, "ascend")
        self.criterion: Criterion = check_choice(criterion, "criterion", get_args(Criterion))  # type: ignore[assignment]
        self.warmup_epochs = check_epoch(warmup_epochs, "warmup_epochs")

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
        flat = logits
        if logits is not None and logits.ndim > 2:  # per-token: [batch, seq, k] -> [batch * seq, k]
            flat = logits.reshape(-1, logits.shape[-1])
        if targets is not None and targets.ndim > 1:
            targets = targets.reshape(-1)
        if valid is not None and targets is not None and targets.shape == valid.shape:
            targets = targets.masked_fill(~valid, 0)  # padding may carry ignore_index
        targets = check_logits_targets(flat, targets, self.inverse.shape[0], "NonNegativeCorrection")
        assert logits is not None and flat is not None
        if flat.shape[0] * k != n:
            per = f" x {k} classes (criterion='class' takes the per-class terms, flattened)" if k > 1 else ""
            raise ValueError(f"logits= has {flat.shape[0]} rows{per} but there are {n} losses")
        if self.epoch < self.warmup_epochs:
            good = torch.ones_like(losses, dtype=torch.bool) if valid is None else valid
            return Selection(good, torch.zeros_like(good))
        per_class = self.correction.class_losses(logits).reshape(flat.shape)
        inverse = self.correction.inverse_on(per_class.device, torch.float64)
        good, bad = functional.nonnegative_masks(per_class, targets, inverse, self.criterion, self.ascend)
        good, bad = good.reshape(-1), bad.reshape(-1)
        return Selection(good, bad) if valid is None else Selection(good & valid, bad & valid)

    def __repr__(self) -> str:
        k = self.inverse.shape[0]
        mode: Literal["SIGUA_BC", "nnBC"] = "SIGUA_BC" if self.ascend else "nnBC"
        return (
            f"NonNegativeCorrection(<{k}x{k} T>, ascend={self.ascend}, "
            f"criterion={self.criterion!r}, warmup_epochs={self.warmup_epochs:g})  # {mode}"
        )
