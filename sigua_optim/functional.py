r"""The pure, vectorised pieces of SIGUA: schedules, selection masks and the reduction of Eq. 3.

Everything here is a function of tensors and host numbers (batch sizes, rates). Nothing loops over
samples in Python, nothing reads a device value back to the host (no ``.item()``, ``.cpu()`` or
``.tolist()``) and every output has a shape known from the input shapes, so the functions run on
CUDA without host synchronisation and compile with ``torch.compile(fullgraph=True)``.

Selection by counting (Eq. 5) without an n x n comparison: let ``m = floor(n * rate)`` and ``v``
the (m+1)-th smallest loss. Then ``#{j : l_j < l_i} <= m`` holds exactly when ``l_i <= v``:
if ``l_i <= v`` at most the m losses ranked below ``v`` can be strictly smaller than ``l_i``; if
``l_i > v`` the m + 1 smallest losses all are. One order statistic per threshold is therefore
Eq. 5 to the letter, ties included, in O(n).

On CPU in eager mode the order statistics come from ``numpy.partition`` on the tensor's memory
(zero-copy; half types are widened to float32, which is exact); on a GPU, for many losses, from
one ``torch.sort``; elsewhere from ``torch.kthvalue``. Each returns an element of the input, so
the comparisons that follow are exact in any dtype. On a GPU with Triton, batches of up to
``kernels.MAX_FUSED`` losses count Eq. 5 directly, and reduce by Eq. 3, in one fused kernel each
(``sigua_optim._kernels``, an implementation detail).
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from . import _kernels as kernels
from ._validation import check_choice

Semantics = Literal["paper", "official"]
Reduction = Literal["paper", "official"]
Criterion = Literal["sample", "total", "class"]

__all__ = [
    "band_masks",
    "keep_rate",
    "lowest_k_mask",
    "nonnegative_masks",
    "official_band_masks",
    "official_small_loss_mask",
    "sequence_losses",
    "sigua_objective",
    "sigua_weights",
    "small_loss_mask",
]


def keep_rate(noise_rate: float, epoch: float, warmup_epochs: float, semantics: Semantics = "paper") -> float:
    r"""The rate of data kept as good, :math:`\rho(t) = 1 - f(t)` with the forget rate :math:`f`.

    ``"paper"`` (Eq. 4): :math:`f(t) = \epsilon \min(t / T_k, 1)`, with :math:`\min(t / 0, 1) = 1`
    (no warm-up).

    ``"official"`` (the authors' code): :math:`f(t)` is ``numpy.linspace(0, eps, T_k)[t]``, and
    :math:`\epsilon` past the array, bit for bit: ``t * step`` with ``step = eps / (T_k - 1)``
    (``t / (T_k - 1) * eps`` where ``step`` underflows to 0), exactly :math:`\epsilon` from epoch
    :math:`T_k - 1` on. For :math:`T_k = 1` the array is ``[0]``, so :math:`\epsilon` is reached
    at epoch 1, as for :math:`T_k = 2`; :math:`T_k < 1` is no warm-up. A fractional ``t`` takes
    the same ``t * step``. The authors' loop counts epochs from 1: ``set_epoch(epoch + 1)`` in a
    loop counting from 0 reproduces their runs (docs/differences.md).
    """
    check_choice(semantics, "semantics", ("paper", "official"))
    if semantics == "paper":
        return 1.0 - noise_rate * (1.0 if warmup_epochs <= 0 else min(epoch / warmup_epochs, 1.0))
    div = max(warmup_epochs - 1.0, 1.0)
    if warmup_epochs < 1 or epoch >= div:
        return 1.0 - noise_rate
    step = noise_rate / div
    return 1.0 - (epoch * step if step != 0 else epoch / div * noise_rate)


HOST_MIN_SIZE = 8192
"""From this many losses on, CPU selection goes through numpy (below it, torch is as fast and,
inside a training step, measured faster)."""


DEVICE_SORT_MIN = 16384
"""From this many losses on, selection on a GPU sorts once (``torch.kthvalue`` runs one thread
block per row on CUDA: 5.4 ms at 1M losses on an H200, where a whole sort takes 0.16 ms)."""


def _host_array(losses: Tensor) -> np.ndarray[Any, Any] | None:
    """The losses as a numpy array when they are many, on the CPU, outside ``torch.compile``.

    Zero-copy; half types are widened to float32, which is exact. numpy's selection and
    comparisons are the fastest there (a bool-valued torch comparison is several times slower).
    """
    if losses.shape[0] < HOST_MIN_SIZE or losses.device.type != "cpu" or torch.compiler.is_compiling():
        return None
    detached = losses.detach()
    if detached.dtype in (torch.float16, torch.bfloat16):
        detached = detached.float()
    return detached.numpy()


def _kth_smallest(
    detached: Tensor, array: np.ndarray[Any, Any] | None, ks: list[int]
) -> list[Tensor | float]:
    """The k-th smallest of the detached losses, for each k of ``ks`` (ascending, each in ``[1, n]``).

    On the host: ``numpy.partition`` (a copy) at the smallest k, then each larger k by an
    in-place partition of the part right of the previous one (one partition with several kth is
    many times slower). Otherwise the values stay on their device: ``torch.kthvalue``, or on a
    GPU from ``DEVICE_SORT_MIN`` losses on, one ``torch.sort`` for every k.
    """
    if array is None:
        if detached.device.type == "cpu" or detached.shape[0] < DEVICE_SORT_MIN:
            return [torch.kthvalue(detached, k).values for k in ks]
        ordered = torch.sort(detached).values
        return [ordered[k - 1] for k in ks]
    if not ks:
        return []
    part = np.partition(array, ks[0] - 1)
    values: list[Tensor | float] = [float(part[ks[0] - 1])]
    for previous, k in itertools.pairwise(ks):
        right = part[previous:]  # the losses of rank >= previous, in place
        right.partition(k - previous - 1)
        values.append(float(right[k - previous - 1]))
    return values


Bound = tuple[float, ...]  # rates whose products with n add up to a count bound: n*rho + n*delta


def _rank_at_most(losses: Tensor, bounds: tuple[Bound, ...], valid: Tensor | None) -> list[Tensor]:
    """For each bound m = floor(n * r1 + n * r2 ...), the mask of ``#{j : l_j < l_i} <= m``.

    That is ``l_i <=`` the (m+1)-th smallest loss. With ``valid``, only valid losses count and
    are marked, and n is their number.
    """
    detached = losses.detach() if losses.requires_grad else losses  # a condition's are detached
    array = _host_array(losses)
    if valid is not None and array is None:
        return _rank_at_most_on_device(detached, bounds, valid)
    subset = array if valid is None or array is None else array[valid.numpy()]
    n = losses.shape[0] if subset is None else subset.shape[0]
    ms = [math.floor(sum(n * rate for rate in bound)) for bound in bounds]
    if valid is None and kernels.fusable(losses):
        return kernels.rank_masks(losses, ms)  # the count of Eq. 5 itself, in one launch
    ks = sorted({m + 1 for m in ms if 0 <= m < n})
    kth = dict(zip(ks, _kth_smallest(detached, subset, ks), strict=True))
    masks = []
    for m in ms:
        if m < 0:
            masks.append(torch.zeros_like(detached, dtype=torch.bool))
        elif m >= n:
            masks.append(torch.ones_like(detached, dtype=torch.bool) if valid is None else valid.clone())
        elif array is not None:
            within = torch.from_numpy(array <= kth[m + 1])
            masks.append(within if valid is None else within & valid)
        else:
            masks.append(detached <= kth[m + 1])
    return masks


def _rank_at_most_on_device(detached: Tensor, bounds: tuple[Bound, ...], valid: Tensor) -> list[Tensor]:
    """:func:`_rank_at_most` with a device-resident count of valid losses: one sort, no sync."""
    n = valid.sum().double()  # float64, as the count bound n * rate is computed on the host
    ordered = torch.sort(torch.where(valid, detached, torch.inf)).values
    last = detached.shape[0] - 1
    masks = []
    for bound in bounds:
        m = torch.floor(sum((n * rate for rate in bound), torch.zeros((), dtype=torch.float64)))
        threshold = ordered[m.clamp(0, last).long()]
        masks.append(valid & ((detached <= threshold) | (m >= n)) & (m >= 0))
    return masks


def small_loss_mask(losses: Tensor, rate: float, valid: Tensor | None = None) -> Tensor:
    r"""Eq. 5: :math:`C_{good}(i) = \mathbb{I}(\#\{j : \ell_i > \ell_j\} \le n \rho)`.

    Args:
        losses: per-sample losses, shape ``[n]``.
        rate: :math:`\rho`, the rate kept (``n * rate`` is the bound on the count).
        valid: optional bool mask: only valid losses (e.g. non-padding tokens) are ranked and
            marked, and n is their number.

    Returns:
        A bool tensor shaped like ``losses``. Tied losses are kept or dropped together, so about
        :math:`\lfloor n\rho \rfloor + 1` samples are kept (more with ties).
    """
    (good,) = _rank_at_most(losses, ((rate,),), valid)
    return good


def band_masks(
    losses: Tensor, rate: float, band: float, valid: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    r"""Eqs. 5-6: small-loss good data and the middle-loss band above it as bad data.

    :math:`C_{bad}(i) = \neg C_{good}(i) \wedge
    \mathbb{I}(\#\{j : \ell_i > \ell_j\} \le n \rho + n \delta)`.

    Args:
        losses: per-sample losses, shape ``[n]``.
        rate: :math:`\rho`, the rate kept as good.
        band: :math:`\delta`, the width of the bad band as a rate of the batch.
        valid: optional bool mask of the losses to rank (see :func:`small_loss_mask`).

    Returns:
        ``(good, bad)`` bool tensors shaped like ``losses``, never both true.
    """
    good, within = _rank_at_most(losses, ((rate,), (rate, band)), valid)
    return good, within > good  # within the band and not good


def sequence_losses(token_losses: Tensor, valid: Tensor) -> Tensor:
    """Per-sequence losses: the mean loss over each row's valid tokens, shape ``[batch]``.

    The other way to apply SIGUA to a language model: select whole sequences on their mean token
    loss (a row without valid tokens gets 0).
    """
    weights = valid.to(token_losses.dtype)
    return (token_losses * weights).sum(dim=-1) / weights.sum(dim=-1).clamp_min(1)


def lowest_k_mask(losses: Tensor, k: int) -> Tensor:
    """The ``k`` smallest losses, ties broken by index (a stable argsort's first ``k``).

    The selection of the authors' code (``argsort`` then the first ``k``) with its arbitrary
    tie-break made deterministic. O(n): one order statistic and one cumulative sum.
    """
    return _lowest_k_masks(losses, [k])[0]


def _lowest_k_masks(losses: Tensor, ks: list[int]) -> list[Tensor]:
    """:func:`lowest_k_mask` for each k of ``ks``, with one selection for all of them."""
    n = losses.shape[0]
    inner = sorted({k for k in ks if 0 < k < n})
    detached = losses.detach()
    kth = dict(zip(inner, _kth_smallest(detached, _host_array(losses), inner), strict=True))
    masks = []
    for k in ks:
        if k >= n or k <= 0:
            masks.append(torch.full_like(detached, k >= n, dtype=torch.bool))
            continue
        below = detached < kth[k]
        tied = detached == kth[k]
        masks.append(below | (tied & (tied.cumsum(0) <= k - below.sum())))
    return masks


def official_small_loss_mask(losses: Tensor, rate: float) -> Tensor:
    r"""Self-Teach as the authors' code selects: the :math:`\lfloor n \rho \rfloor` smallest
    losses, ties broken by index (Eq. 5 keeps one more, and ties together)."""
    return lowest_k_mask(losses, math.floor(losses.shape[0] * rate))


def official_band_masks(losses: Tensor, rate: float, bad_fraction: float) -> tuple[Tensor, Tensor]:
    r"""SIGUA_SL as the authors' code selects (docs/differences.md, "kept set" and "bad set").

    Good: the :math:`n_{good} = \lfloor n \rho \rfloor` smallest losses. Bad: the next
    :math:`\max(\lfloor (n - n_{good})\, r \rfloor, 1)` in sorted order, as many as exist (so
    ``bad_fraction = 0`` still ascends on one sample, as the code does). Ties are broken by index.
    """
    n = losses.shape[0]
    n_good = math.floor(n * rate)
    n_bad = max(math.floor((n - n_good) * bad_fraction), 1)
    good, within = _lowest_k_masks(losses, [n_good, n_good + n_bad])
    return good, within > good


NONNEGATIVE_CHUNK = 1 << 16
"""Elements of the ``[n, k]`` per-class losses that :func:`nonnegative_masks` widens to float64 at
a time: its float64 memory is O(n + this), not O(n k) (and the blocks stay in cache)."""


def nonnegative_masks(
    class_losses: Tensor,
    targets: Tensor,
    inverse: Tensor,
    criterion: Criterion = "sample",
    ascend: bool = True,
) -> tuple[Tensor, Tensor]:
    r"""Eqs. 11-12: good data have a non-negative backward-corrected loss, bad data the rest.

    With :math:`\ell_{vec}(x_i)` the row ``class_losses[i]`` (the loss against every class) and
    ``inverse`` :math:`= T^{-1}`:

    - ``"sample"``: :math:`C_{good}(i) = \mathbb{I}([T^{-1}\ell_{vec}(x_i)]_{\tilde y_i} \ge 0)`,
      the sample's own corrected loss (Eq. 8), the rule of the authors' code;
    - ``"total"``: :math:`C_{good}(i) = \mathbb{I}(\mathbf{1}^\top T^{-1}\ell_{vec}(x_i) \ge 0)`,
      Eq. 11 as printed;
    - ``"class"``: the non-negative risk of nnPU (Kiryo et al., 2017) per clean class. Eq. 8's
      loss is a sum of terms :math:`t_{ic} = [T^{-1}]_{\tilde y_i c}\, \ell(f(x_i), c)`, and
      :math:`R_c = \sum_i t_{ic}` estimates (times :math:`n`) the risk of the samples whose clean
      class is :math:`c`, which cannot be negative. The term :math:`t_{ic}` is good iff
      :math:`R_c \ge 0`. The masks are ``[n, k]``, one per term: train on the terms.

    :math:`C_{bad} = \neg C_{good}` when ``ascend`` (SIGUA_BC, Eq. 12), else none (nnBC).

    The criterion is evaluated in the dtype of ``inverse`` (float64 in
    :class:`~sigua_optim.conditions.NonNegativeCorrection`), ``class_losses`` being widened to it
    in blocks of ``NONNEGATIVE_CHUNK`` elements. Masks are ``[n]``, or ``[n, k]`` for ``"class"``.
    """
    check_choice(criterion, "criterion", ("sample", "total", "class"))
    n, k = class_losses.shape
    rows = max(1, NONNEGATIVE_CHUNK // k)
    column_sums = inverse.sum(dim=0)
    value = class_losses.new_empty(n, dtype=inverse.dtype)
    risks = class_losses.new_zeros(k, dtype=inverse.dtype)  # R_c of "class", summed block by block
    for start in range(0, n, rows):
        block = class_losses[start : start + rows].to(inverse.dtype, copy=True)
        if criterion == "total":
            value[start : start + rows] = block @ column_sums
            continue
        terms = block.mul_(inverse[targets[start : start + rows]])
        if criterion == "sample":
            value[start : start + rows] = terms.sum(dim=1)
        else:
            risks += terms.sum(dim=0)
    good = (risks >= 0).expand(n, k).clone() if criterion == "class" else value >= 0
    return good, ~good if ascend else torch.zeros_like(good)


def sigua_weights(
    good: Tensor,
    bad: Tensor,
    gamma: float,
    dtype: torch.dtype,
    reduction: Reduction = "paper",
    num_items: int | Tensor | None = None,
) -> Tensor:
    r"""The per-sample weights :math:`w` of the objective :math:`\ell^\top w`.

    ``"paper"``: :math:`w = (C_{good} - \gamma C_{bad}) / n_b`, i.e. 1, :math:`-\gamma` or 0
    over the whole batch size (``num_items`` when given, e.g. the size of an accumulated batch).
    ``"official"``: :math:`C_{good} / n_{good} - \gamma C_{bad} / n_{bad}` (an empty group
    weighs nothing). A sample marked both good and bad counts as good, as in Algorithm 1's
    ``if / else if``.
    """
    check_choice(reduction, "reduction", ("paper", "official"))
    bad = bad > good  # bad and not good, in one pass
    if good.device.type == "cpu" and not torch.compiler.is_compiling():
        # Arithmetic through uint8 views: a bool -> float conversion is several times slower on
        # the CPU, and torch.where on a random mask ten times slower still.
        good_01, bad_01 = good.view(torch.uint8), bad.view(torch.uint8)
    else:  # a GPU converts bools as fast, and inductor cannot lower a view of a bool tensor
        good_01, bad_01 = good, bad.to(dtype)
    weights = good_01.to(dtype)
    if reduction == "paper":
        return weights.sub_(bad_01, alpha=gamma).div_(good.shape[0] if num_items is None else num_items)
    weights.div_(good.sum().clamp_min(1))
    return weights.sub_(bad_01.to(dtype).div_(bad.sum().clamp_min(1)), alpha=gamma)


def sigua_objective(
    losses: Tensor,
    good: Tensor,
    bad: Tensor,
    gamma: float,
    reduction: Reduction = "paper",
    num_items: int | Tensor | None = None,
) -> Tensor:
    r"""The scalar SIGUA objective, :math:`\ell^\top w` with :math:`w` of :func:`sigua_weights`.

    ``"paper"`` (Eq. 3): :math:`\ell_b = \ell^\top (C_{good} - \gamma C_{bad}) / n_b`, divided
    by the whole batch size, ignored samples included; ``num_items`` replaces :math:`n_b` (the
    objectives of micro-batches then add up to the objective of the accumulated batch).

    ``"official"`` (the authors' code): :math:`\mathrm{mean}_{good}(\ell) - \gamma\,
    \mathrm{mean}_{bad}(\ell)`, each mean over its own count.

    The weights carry the division, so the sum cannot overflow where the mean does not.
    Half-precision losses are accumulated in float32; the result has the dtype of ``losses``.
    """
    if (
        check_choice(reduction, "reduction", ("paper", "official")) == "paper"
        and not isinstance(num_items, Tensor)
        and kernels.fusable(losses)
    ):
        return kernels.objective(
            losses, good, bad, gamma, losses.shape[0] if num_items is None else num_items
        )
    acc = losses.dtype if losses.dtype == torch.float64 else torch.float32  # no dispatch
    weights = sigua_weights(good, bad, gamma, acc, reduction, num_items)
    if losses.dtype == acc:
        return torch.dot(losses, weights)
    return torch.dot(losses.to(acc), weights).to(losses.dtype)
