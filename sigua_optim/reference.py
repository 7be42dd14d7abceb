r"""The specification: Algorithm 1 and Eqs. 4-6, 11-12 as the paper's literal loops, in Python.

Slow on purpose (the counts of Eqs. 5-6 are O(n^2)) and free of tensors, so that each line can
be read against the paper. :mod:`sigua_optim.functional` is tested against these functions
(:func:`sigua_optim.testing.assert_matches_reference`). The ``official_*`` functions state the
authors' released code the same way (docs/differences.md lists where it differs from the paper).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch import Tensor

Masks = tuple[list[bool], list[bool]]

__all__ = [
    "algorithm1",
    "band_selected",
    "co_teaching",
    "for_condition",
    "keep_rate",
    "nonnegative_correction",
    "official_band_selected",
    "official_keep_rate",
    "official_objective",
    "official_small_loss",
    "small_loss",
]


def keep_rate(noise_rate: float, epoch: float, warmup_epochs: float) -> float:
    """Eq. 4: rho(t) = 1 - eps * min(t / T_k, 1); no warm-up when T_k = 0."""
    if warmup_epochs == 0:
        return 1.0 - noise_rate
    return 1.0 - noise_rate * min(epoch / warmup_epochs, 1.0)


def official_keep_rate(noise_rate: float, epoch: float, warmup_epochs: float) -> float:
    """The authors' schedule: 1 - forget rate, the forget rate ``numpy.linspace(0, eps, T_k)[t]``.

    As their code builds it: an array of ``eps`` per epoch whose first T_k entries are that
    linspace (for T_k = 1, ``[0]``: eps from epoch 1 on). Between whole epochs, or for a
    fractional T_k, numpy has no answer; there the forget rate is linspace's own arithmetic,
    ``t * step`` with ``step = eps / max(T_k - 1, 1)``, eps from epoch T_k - 1 and for T_k < 1.
    """
    if epoch == int(epoch) and warmup_epochs == int(warmup_epochs):
        schedule = np.full(max(int(epoch), int(warmup_epochs)) + 1, noise_rate)
        schedule[: int(warmup_epochs)] = np.linspace(0, noise_rate, int(warmup_epochs))
        return 1.0 - float(schedule[int(epoch)])
    div = max(warmup_epochs - 1, 1)
    if warmup_epochs < 1 or epoch >= div:
        return 1.0 - noise_rate
    return 1.0 - epoch * (noise_rate / div)


def _count_smaller(losses: Sequence[float], i: int) -> int:
    """#{ j : l_i > l_j }."""
    count = 0
    for j in range(len(losses)):
        if losses[i] > losses[j]:
            count += 1
    return count


def small_loss(losses: Sequence[float], rate: float) -> Masks:
    """Eq. 5: good(i) = #{ j : l_i > l_j } <= n * rho; nothing is bad."""
    n = len(losses)
    good = [_count_smaller(losses, i) <= n * rate for i in range(n)]
    return good, [False] * n


def band_selected(losses: Sequence[float], rate: float, band: float) -> Masks:
    """Eqs. 5-6: bad(i) = not good(i) and #{ j : l_i > l_j } <= n * rho + n * delta."""
    n = len(losses)
    good, bad = [], []
    for i in range(n):
        count = _count_smaller(losses, i)
        good.append(count <= n * rate)
        bad.append(not good[i] and count <= n * rate + n * band)
    return good, bad


def _stable_order(losses: Sequence[float]) -> list[int]:
    """argsort, ties in index order (Python's sort is stable)."""
    return sorted(range(len(losses)), key=lambda i: losses[i])


def official_small_loss(losses: Sequence[float], rate: float) -> Masks:
    """The authors' code: keep the int(n * rho) first samples of the sorted order."""
    n = len(losses)
    kept = _stable_order(losses)[: int(n * rate)]
    return [i in kept for i in range(n)], [False] * n


def official_band_selected(losses: Sequence[float], rate: float, bad_fraction: float) -> Masks:
    """The authors' code: after the kept ones, the next max(int((n - n_good) * r), 1) are bad."""
    n = len(losses)
    order = _stable_order(losses)
    n_good = int(n * rate)
    n_bad = max(int((n - n_good) * bad_fraction), 1)
    kept, ascended = order[:n_good], order[n_good : n_good + n_bad]
    return [i in kept for i in range(n)], [i in ascended for i in range(n)]


def nonnegative_correction(
    class_losses: Sequence[Sequence[float]],
    targets: Sequence[int],
    inverse: Sequence[Sequence[float]],
    criterion: str,
    ascend: bool,
) -> tuple[list[bool], list[bool], list[bool]]:
    """Eqs. 11-12 for each sample (each term for "class"), and which float64 cannot decide.

    "sample": ``value_i = sum_j Tinv[y_i][j] * l_j(x_i)``; "total": ``value_i = sum_c sum_j
    Tinv[c][j] * l_j(x_i)``. good(i) = value_i >= 0; bad(i) = not good(i) if ascend, else False.
    "class": ``R_c = sum_i Tinv[y_i][c] * l_c(x_i)``; the term (i, c) is good iff R_c >= 0; the lists
    hold n * k entries, sample by sample, class by class.
    undecided: |value| is within float64 rounding of the sum of |terms|, so a sum taken in
    another order may land on the other side of 0.
    """
    k = len(inverse)
    if criterion == "class":
        values, magnitudes = [0.0] * k, [0.0] * k
        for row, y in zip(class_losses, targets, strict=True):
            for c in range(k):
                values[c] += inverse[y][c] * row[c]
                magnitudes[c] += abs(inverse[y][c] * row[c])
        values, magnitudes = values * len(targets), magnitudes * len(targets)
    else:
        values, magnitudes = [], []
        for row, y in zip(class_losses, targets, strict=True):
            rows = [y] if criterion == "sample" else range(k)
            value, magnitude = 0.0, 0.0
            for c in rows:
                for j in range(k):
                    value += inverse[c][j] * row[j]
                    magnitude += abs(inverse[c][j] * row[j])
            values.append(value)
            magnitudes.append(magnitude)
    good = [value >= 0 for value in values]
    bad = [ascend and not value >= 0 for value in values]
    undecided = [abs(v) <= 1e-12 * m for v, m in zip(values, magnitudes, strict=True)]
    return good, bad, undecided


def algorithm1(losses: Sequence[float], good: Sequence[bool], bad: Sequence[bool], gamma: float) -> float:
    """Algorithm 1, lines 2-10: the loss accumulator, divided by the batch size."""
    total = 0.0
    for i in range(len(losses)):
        if good[i]:
            total = total + losses[i]
        elif bad[i]:
            total = total - gamma * losses[i]
    return total / len(losses)


def official_objective(
    losses: Sequence[float], good: Sequence[bool], bad: Sequence[bool], gamma: float
) -> float:
    """The authors' reduction: mean over good minus gamma times mean over bad (empty: 0)."""
    good_losses = [loss for loss, g in zip(losses, good, strict=True) if g]
    bad_losses = [loss for loss, g, b in zip(losses, good, bad, strict=True) if b and not g]
    good_mean = sum(good_losses) / len(good_losses) if good_losses else 0.0
    bad_mean = sum(bad_losses) / len(bad_losses) if bad_losses else 0.0
    return good_mean - gamma * bad_mean


def co_teaching(
    losses_f: Sequence[float],
    losses_g: Sequence[float],
    noise_rate: float,
    epoch: float,
    warmup_epochs: float,
) -> tuple[list[bool], list[bool]]:
    """Co-teaching (Han et al., NeurIPS 2018), Algorithm 1 for one mini-batch of networks f, g.

    R(T) = 1 - tau * min(T / T_k, 1) with tau = ``noise_rate``; D_f is the R(T) fraction of the
    batch with the smallest losses of f (at most n * R(T) losses strictly smaller, ties kept
    together, as Eq. 5 counts); f is updated on D_g and g on D_f. Returns (update f, update g).
    """
    n = len(losses_f)
    R = 1.0 - noise_rate * (min(epoch / warmup_epochs, 1.0) if warmup_epochs > 0 else 1.0)
    in_d_f, in_d_g = [], []
    for i in range(n):
        smaller_f, smaller_g = 0, 0
        for j in range(n):
            smaller_f += losses_f[i] > losses_f[j]
            smaller_g += losses_g[i] > losses_g[j]
        in_d_f.append(smaller_f <= n * R)
        in_d_g.append(smaller_g <= n * R)
    return in_d_g, in_d_f


def for_condition(condition: Any) -> Callable[..., tuple[list[bool], ...]]:
    """The literal loop that a built-in condition must equal, at its current epoch.

    Returns a function ``(losses: list[float], **inputs) -> (good, bad[, undecided])``.
    """
    from .conditions import AllGood, BandSelected, KnownClean, NonNegativeCorrection, Peer, SmallLoss
    from .losses import class_losses

    if isinstance(condition, Peer):
        on_peer = for_condition(condition.condition)
        return lambda losses, *, peer_losses, **inputs: on_peer(peer_losses.tolist(), **inputs)
    if isinstance(condition, AllGood):
        return lambda losses, **_: ([True] * len(losses), [False] * len(losses))
    if isinstance(condition, KnownClean):
        return lambda losses, *, clean, **_: (
            [bool(c) for c in clean.tolist()],
            [not c for c in clean.tolist()],
        )
    if isinstance(condition, SmallLoss):
        official = condition.semantics == "official"
        schedule = official_keep_rate if official else keep_rate
        rate = schedule(condition.noise_rate, condition.epoch, condition.warmup_epochs)
        if isinstance(condition, BandSelected):
            loop = official_band_selected if official else band_selected
            band = condition.band
            return lambda losses, **_: loop(losses, rate, band)
        loop_small = official_small_loss if official else small_loss
        return lambda losses, **_: loop_small(losses, rate)
    if isinstance(condition, NonNegativeCorrection):
        nnc = condition

        def loop_nnc(losses: list[float], *, logits: Tensor, targets: Tensor, **_: Any) -> Any:
            if nnc.epoch < nnc.warmup_epochs:
                return [True] * len(losses), [False] * len(losses)
            return nonnegative_correction(
                class_losses(logits.detach()).double().tolist(),
                targets.tolist(),
                nnc.inverse.tolist(),
                nnc.criterion,
                nnc.ascend,
            )

        return loop_nnc
    raise TypeError(
        f"no reference loop is known for {condition!r}: pass reference=, a function "
        "(losses: list[float], **inputs) -> (good: list[bool], bad: list[bool])"
    )
