r"""Loss-correction losses: Eq. 8, the backward-corrected cross-entropy (Patrini et al., 2017).

With :math:`T \in \mathbb{R}^{k \times k}`, :math:`[T]_{ij} = p(\tilde y = j \mid y = i)`, and
:math:`\ell_{vec}(x) = (\ell(f(x), 1), \dots, \ell(f(x), k))` the cross-entropy against every class,

.. math::
    \ell^{\leftarrow}(f(x), \tilde y) = [T^{-1} \ell_{vec}(x)]_{\tilde y}.

It is unbiased (Eq. 9) but can be negative; :class:`~sigua_optim.conditions.NonNegativeCorrection`
is the nnBC / SIGUA_BC treatment of that. :class:`BackwardCorrection` inverts :math:`T` once and
shares :math:`\ell_{vec}` with that condition.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .noise import check_transition_matrix

__all__ = [
    "BackwardCorrection",
    "backward_corrected_cross_entropy",
    "class_losses",
    "invert_transition_matrix",
]

_MAX_CONDITION_NUMBER = 1e8


def invert_transition_matrix(transition_matrix: Tensor) -> tuple[Tensor, Tensor]:
    """Validate a noise transition matrix; return it and its inverse, in float64 on the CPU.

    Raises ValueError unless ``transition_matrix`` is a valid transition matrix
    (:func:`sigua_optim.noise.check_transition_matrix`) that can be inverted.
    """
    t = check_transition_matrix(transition_matrix, "transition_matrix").cpu()
    condition_number = float(torch.linalg.cond(t))
    if not condition_number < _MAX_CONDITION_NUMBER:
        raise ValueError(
            f"transition_matrix is singular (condition number {condition_number:.3g}): backward "
            "correction needs T^-1. Symmetric noise with eps = (k-1)/k, for one, cannot be inverted."
        )
    return t, torch.linalg.inv(t)


def class_losses(logits: Tensor) -> Tensor:
    r"""The cross-entropy of every sample against every class, :math:`\ell_{vec}`: ``[n, k]``.

    Computed as ``-log_softmax`` in at least float32.
    """
    wide = torch.promote_types(logits.dtype, torch.float32)
    log_probabilities = F.log_softmax(logits.to(wide), dim=-1)
    # Negated in place unless autograd keeps log_softmax's output for its backward.
    return -log_probabilities if log_probabilities.requires_grad else log_probabilities.neg_()


def check_logits_targets(logits: Tensor | None, targets: Tensor | None, k: int, owner: str) -> Tensor:
    """Validate ``logits=`` ([n, k] floating) and ``targets=`` ([n] integer in [0, k)).

    Returns the targets as int64: an index of another integer dtype is refused by indexing
    (int8, int16, int32 on some versions) or, as uint8, taken for a bool mask.
    """
    if logits is None or targets is None:
        missing = " and ".join(n for n, v in (("logits=", logits), ("targets=", targets)) if v is None)
        raise ValueError(f"{owner} needs {missing}: pass them, e.g. step(losses, logits=logits, targets=y)")
    if not isinstance(logits, Tensor) or not isinstance(targets, Tensor):
        raise TypeError(f"{owner}: logits= and targets= must be torch.Tensors")
    if logits.ndim != 2 or logits.shape[1] != k or not logits.is_floating_point():
        raise ValueError(
            f"logits= must be floating point of shape [batch, {k}] (k = the transition matrix's "
            f"size); got {tuple(logits.shape)} {logits.dtype}"
        )
    integer = not (targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool)
    if targets.shape != logits.shape[:1] or not integer:
        raise ValueError(
            f"targets= must be integer class indices of shape [{logits.shape[0]}] (one per row of "
            f"logits); got {tuple(targets.shape)} {targets.dtype}"
        )
    # A host read: skipped inside torch.compile, where it would break the graph.
    if not torch.compiler.is_compiling() and bool(((targets < 0) | (targets >= k)).any()):
        raise ValueError(f"targets= must be class indices in [0, {k}); got values outside that range")
    return targets.long()


class BackwardCorrection:
    r"""Eq. 8, :math:`[T^{-1} \ell_{vec}(x_i)]_{\tilde y_i}` per sample, with :math:`T` inverted once.

    ``corr(logits, targets)`` returns the corrected losses, shape ``[n]``, differentiable, in at
    least float32; they can be negative. :math:`T^{-1}` is computed once, in float64 on the CPU,
    and cached per device and dtype, so a call reads nothing back but the check that the targets
    lie in [0, k).

    Pass the object to :class:`~sigua_optim.conditions.NonNegativeCorrection` (SIGUA_BC / nnBC):
    the condition then reuses the per-class losses :math:`\ell_{vec}` this object computed for the
    same ``logits`` tensor (unchanged since), so each step computes them once. It keeps those of its
    last call (detached, ``[n, k]``; not pickled) until the next.

    Args:
        transition_matrix: :math:`T`, ``[k, k]``, :math:`T_{ij} = p(\tilde y = j | y = i)`:
            row-stochastic and invertible.

    Example:
        >>> import torch
        >>> from sigua_optim.conditions import NonNegativeCorrection
        >>> from sigua_optim.noise import pair
        >>> corr = BackwardCorrection(pair(3, 0.45))
        >>> logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0]], requires_grad=True)
        >>> y = torch.tensor([0, 0])
        >>> losses = corr(logits, y)  # Eq. 8: fitting label 0 this confidently goes below 0
        >>> losses.detach().round(decimals=2)
        tensor([-0.6600,  7.8800])
        >>> NonNegativeCorrection(corr)(losses.detach(), logits=logits, targets=y).bad
        tensor([ True, False])
    """

    def __init__(self, transition_matrix: Tensor) -> None:
        self.transition_matrix, self.inverse = invert_transition_matrix(transition_matrix)
        self._inverse_on: dict[tuple[torch.device, torch.dtype], Tensor] = {}
        self._last: tuple[weakref.ref[Tensor], int, Tensor] | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without the per-class losses kept for the condition (and their weak reference)."""
        return {**self.__dict__, "_last": None}

    @property
    def num_classes(self) -> int:
        """k, the size of :math:`T`."""
        return int(self.inverse.shape[0])

    def inverse_on(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        """:math:`T^{-1}` on ``device`` in ``dtype`` (converted once per pair)."""
        if (device, dtype) not in self._inverse_on:
            self._inverse_on[device, dtype] = self.inverse.to(device, dtype)
        return self._inverse_on[device, dtype]

    def class_losses(self, logits: Tensor) -> Tensor:
        """:func:`class_losses` of ``logits``, detached: those of the last call if it had this
        very tensor, unchanged since (same object, same version counter)."""
        if self._last is not None:
            last_logits, version, per_class = self._last
            if last_logits() is logits and logits._version == version:
                return per_class
        return class_losses(logits.detach())

    def __call__(self, logits: Tensor, targets: Tensor) -> Tensor:
        """The corrected losses of Eq. 8 for ``logits`` ``[n, k]`` and the noisy ``targets`` ``[n]``."""
        targets = check_logits_targets(logits, targets, self.num_classes, "BackwardCorrection")
        per_class = class_losses(logits)
        self._last = (weakref.ref(logits), logits._version, per_class.detach())
        return (per_class * self.inverse_on(per_class.device, per_class.dtype)[targets]).sum(dim=1)


def backward_corrected_cross_entropy(logits: Tensor, targets: Tensor, transition_matrix: Tensor) -> Tensor:
    r"""Eq. 8, per sample: :math:`[T^{-1} \ell_{vec}(x_i)]_{\tilde y_i}`, shape ``[n]``.

    ``BackwardCorrection(transition_matrix)(logits, targets)``: it validates and inverts
    :math:`T` at every call (in float64 on the CPU, one host read). In a training loop build one
    :class:`BackwardCorrection` and call it instead.

    Args:
        logits: model outputs, shape ``[n, k]``.
        targets: the noisy labels :math:`\tilde y`, integer, shape ``[n]``.
        transition_matrix: :math:`T`, ``[k, k]``, row-stochastic and invertible.

    Returns:
        The corrected losses, differentiable, in at least float32; they can be negative.

    Example:
        >>> import torch
        >>> from sigua_optim.losses import backward_corrected_cross_entropy
        >>> from sigua_optim.noise import symmetric
        >>> logits = torch.randn(4, 3, requires_grad=True)
        >>> y = torch.tensor([0, 2, 1, 1])
        >>> backward_corrected_cross_entropy(logits, y, symmetric(3, 0.2)).shape
        torch.Size([4])
    """
    return BackwardCorrection(transition_matrix)(logits, targets)
