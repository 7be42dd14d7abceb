r"""Loss-correction losses: Eq. 8, the backward-corrected cross-entropy (Patrini et al., 2017).

With :math:`T \in \mathbb{R}^{k \times k}`, :math:`[T]_{ij} = p(\tilde y = j \mid y = i)`, and
:math:`\ell_{vec}(x) = (\ell(f(x), 1), \dots, \ell(f(x), k))` the cross-entropy against every class,

.. math::
    \ell^{\leftarrow}(f(x), \tilde y) = [T^{-1} \ell_{vec}(x)]_{\tilde y}.

It is unbiased (Eq. 9) but can be negative; :class:`~sigua_optim.conditions.NonNegativeCorrection`
is the nnBC / SIGUA_BC treatment of that.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .noise import check_transition_matrix

__all__ = ["backward_corrected_cross_entropy", "class_losses", "invert_transition_matrix"]

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
    return -F.log_softmax(logits.to(wide), dim=-1)


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


def backward_corrected_cross_entropy(logits: Tensor, targets: Tensor, transition_matrix: Tensor) -> Tensor:
    r"""Eq. 8, per sample: :math:`[T^{-1} \ell_{vec}(x_i)]_{\tilde y_i}`, shape ``[n]``.

    Args:
        logits: model outputs, shape ``[n, k]``.
        targets: the noisy labels :math:`\tilde y`, integer, shape ``[n]``.
        transition_matrix: :math:`T`, ``[k, k]``, row-stochastic and invertible. Validated and
            inverted in float64 on the CPU each call: keep it on the CPU.

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
    _, inverse = invert_transition_matrix(transition_matrix)
    targets = check_logits_targets(logits, targets, inverse.shape[0], "backward_corrected_cross_entropy")
    per_class = class_losses(logits)
    rows = inverse.to(per_class.device, per_class.dtype, non_blocking=True)[targets]
    return (per_class * rows).sum(dim=1)
