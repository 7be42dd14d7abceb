r"""Estimating the label noise offline: ``estimate_noise`` and the ready conditions it gives.

Every condition needs the noise: ``noise_rate`` (:math:`\epsilon`) for ``SmallLoss`` /
``BandSelected``, ``T`` for ``NonNegativeCorrection``. :func:`estimate_noise` estimates both from
a model's predicted noisy-label probabilities :math:`\hat p(\tilde y | x)`, which must be
*out-of-sample*: a model that has memorised a sample's noisy label predicts it with confidence 1
and hides the noise. Pass a ``fit_predict(train_index, test_index)`` callable and the
probabilities are cross-fitted (:func:`cross_fit`): each sample is predicted by a model trained
on the other folds (docs/noise.md has the measurements behind this choice).

Two estimators of :math:`T_{ij} = p(\tilde y = j | y = i)`:

* ``"confident"`` (default), counting, after the confident joint of Northcutt et al. (JAIR 2021):
  the per-class threshold :math:`t_j` is the mean of :math:`\hat p_j(x)` over the samples labelled
  :math:`j`; a sample's likely true label :math:`y^*` is the most probable class among those with
  :math:`\hat p_j(x) \ge t_j` (a sample with none is not counted); the counts
  :math:`C[\tilde y, y^*]` are rescaled so that row :math:`\tilde y` sums to the number of samples
  labelled :math:`\tilde y`, then divided by :math:`n`: :math:`Q \approx p(\tilde y, y)`. Then
  :math:`\pi_j = \sum_i Q_{ij}`, :math:`T_{ji} = Q_{ij} / \pi_j` and
  :math:`\epsilon = 1 - \operatorname{tr} Q`.
* ``"anchor"``: the anchor points of Patrini et al. (CVPR 2017),
  :func:`~sigua_optim.noise.estimate_transition_matrix`; the clean prior solves
  :math:`T^\top \pi = \tilde p` (the noisy label frequencies) by least squares, clipped at 0.

In both :math:`\epsilon = 1 - \sum_i \pi_i T_{ii}`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ._validation import check_choice, check_real
from .conditions import BandSelected, NonNegativeCorrection, SmallLoss
from .noise import _float64_probabilities, estimate_noise_rate, estimate_transition_matrix

__all__ = ["NoiseEstimate", "confident_joint", "cross_fit", "estimate_noise"]

FitPredict = Callable[[Tensor, Tensor], Tensor]
"""``fit_predict(train_index, test_index) -> probs``: train a fresh model on the samples
``train_index`` (with their noisy labels) and return its softmax ``[len(test_index), k]`` on the
samples ``test_index``."""

METHODS = ("confident", "anchor")


@dataclass(frozen=True)
class NoiseEstimate:
    r"""An estimate of the label noise: :math:`\epsilon`, :math:`T` and the clean prior.

    Attributes:
        eps: :math:`\hat\epsilon = 1 - \sum_i \hat\pi_i \hat T_{ii}`, the estimated flip rate.
        T: :math:`\hat T`, float64 ``[k, k]``, row-stochastic, :math:`T_{ij} = p(\tilde y=j|y=i)`.
        prior: :math:`\hat\pi`, float64 ``[k]``, the estimated clean class distribution.

    Example:
        >>> from sigua_optim.noise import symmetric
        >>> est = NoiseEstimate(0.2, symmetric(10, 0.2), torch.full((10,), 0.1, dtype=torch.float64))
        >>> est.band_selected(band=0.1)
        BandSelected(noise_rate=0.2, band=0.1, warmup_epochs=10, semantics='paper')
    """

    eps: float
    T: Tensor
    prior: Tensor

    def small_loss(self, warmup_epochs: float = 10, **kwargs: Any) -> SmallLoss:
        """Self-Teach with ``noise_rate=eps``; other arguments go to :class:`SmallLoss`."""
        return SmallLoss(self.eps, warmup_epochs, **kwargs)

    def band_selected(self, band: float, warmup_epochs: float = 10, **kwargs: Any) -> BandSelected:
        """SIGUA_SL with ``noise_rate=eps`` and ``band=min(band, eps)`` (the band must fit)."""
        band = check_real(band, "band", 0.0, 1.0)
        return BandSelected(self.eps, min(band, self.eps), warmup_epochs, **kwargs)

    def nonnegative_correction(self, **kwargs: Any) -> NonNegativeCorrection:
        """SIGUA_BC (or nnBC with ``ascend=False``) with ``transition_matrix=T``."""
        return NonNegativeCorrection(self.T, **kwargs)


def _check_probs_labels(probs: Tensor, noisy_labels: Tensor) -> tuple[Tensor, Tensor]:
    if not isinstance(probs, Tensor) or probs.dim() != 2:
        raise TypeError(f"probs must be an [n, k] tensor of softmax probabilities; got {probs!r:.80}")
    n, k = probs.shape
    if k < 2:
        raise ValueError(f"probs must have k >= 2 columns (classes); got shape {tuple(probs.shape)}")
    if not isinstance(noisy_labels, Tensor) or noisy_labels.dtype.is_floating_point:
        raise TypeError("noisy_labels must be an integer tensor of class indices (pass labels.long())")
    if noisy_labels.shape != (n,) or n == 0:
        raise ValueError(
            f"noisy_labels must have one label per row of probs, shape ({n},) with n >= 1; "
            f"got shape {tuple(noisy_labels.shape)}"
        )
    P = _float64_probabilities(probs).cpu()
    labels = noisy_labels.detach().cpu().long()
    if bool((labels < 0).any()) or bool((labels >= k).any()):
        raise ValueError(f"noisy_labels must lie in [0, {k - 1}] (probs has {k} columns)")
    missing = (torch.bincount(labels, minlength=k) == 0).nonzero().flatten().tolist()
    if missing:
        raise ValueError(
            f"noisy_labels never contains the classes {missing}: nothing can be estimated about "
            "them; pass probs with only the classes that occur (and relabel them 0..k-1)"
        )
    return P, labels


def confident_joint(probs: Tensor, noisy_labels: Tensor) -> Tensor:
    r"""The calibrated joint :math:`Q[\tilde y, y^*] \approx p(\tilde y, y)`, float64 ``[k, k]``.

    Thresholds :math:`t_j` = mean of ``probs[:, j]`` over the samples labelled ``j``; likely true
    label = argmax of ``probs`` among the classes at or above their threshold (samples with none
    are skipped); the counts are rescaled row by row to the noisy label counts and divided by
    ``n``. A noisy class whose samples are all skipped keeps its count on the diagonal.

    Raises ValueError when a class of ``probs`` is never a noisy label (no threshold). A class
    that is never a likely true label gets prior 0 and an identity row in :func:`estimate_noise`.

    >>> probs = torch.tensor([[0.8, 0.2], [0.7, 0.3], [0.3, 0.7], [0.9, 0.1]])
    >>> confident_joint(probs, torch.tensor([0, 0, 1, 1]))
    tensor([[0.5000, 0.0000],
            [0.2500, 0.2500]], dtype=torch.float64)
    """
    P, labels = _check_probs_labels(probs, noisy_labels)
    k = P.shape[1]
    counts = torch.bincount(labels, minlength=k).to(torch.float64)
    own = P.gather(1, labels.unsqueeze(1)).squeeze(1)
    thresholds = torch.zeros(k, dtype=torch.float64).index_add_(0, labels, own) / counts
    above = thresholds.unsqueeze(0) <= P
    likely = torch.where(above, P, torch.full_like(P, -1.0)).argmax(dim=1)
    counted = above.any(dim=1)
    C = torch.zeros(k, k, dtype=torch.float64)
    C.index_put_(
        (labels[counted], likely[counted]), torch.ones(int(counted.sum()), dtype=torch.float64), True
    )
    rows = C.sum(dim=1, keepdim=True)
    C = torch.where(rows > 0, C / rows.clamp_min(1.0), torch.eye(k, dtype=torch.float64))
    return C * counts.unsqueeze(1) / labels.numel()


def _from_joint(Q: Tensor) -> tuple[Tensor, Tensor]:
    """(T, prior) from a joint Q[noisy, true]; a class never likely true gets an identity row."""
    prior = Q.sum(dim=0)
    eye = torch.eye(Q.shape[0], dtype=torch.float64)
    T = torch.where(prior.unsqueeze(1) > 0, Q.T / prior.clamp_min(1e-300).unsqueeze(1), eye)
    return T, prior


def _anchor(P: Tensor, labels: Tensor, percentile: float) -> tuple[Tensor, Tensor]:
    T = estimate_transition_matrix(P, percentile)
    noisy_prior = torch.bincount(labels, minlength=P.shape[1]).to(torch.float64) / labels.numel()
    prior = torch.linalg.lstsq(T.T, noisy_prior.unsqueeze(1)).solution.flatten().clamp_min(0.0)
    total = float(prior.sum())
    return T, (prior / total if total > 0 else noisy_prior)


def cross_fit(
    fit_predict: FitPredict, n: int, folds: int = 5, generator: torch.Generator | None = None
) -> Tensor:
    """Out-of-sample probabilities ``[n, k]``: each fold predicted by a model fit on the others.

    The ``n`` samples are split into ``folds`` random folds of near-equal size (a permutation
    drawn from ``generator``); for each fold, ``fit_predict(train_index, test_index)`` trains on
    the other folds and returns the softmax on this one.

    >>> fit_predict = lambda train, test: torch.full((len(test), 2), 0.5)
    >>> cross_fit(fit_predict, 5, folds=2).shape
    torch.Size([5, 2])
    """
    if not callable(fit_predict):
        raise TypeError(
            f"fit_predict must be callable (train_index, test_index) -> probs; got {fit_predict!r:.80}"
        )
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be the number of samples, an int >= 2; got {n!r}")
    if isinstance(folds, bool) or not isinstance(folds, int) or not 2 <= folds <= n:
        raise ValueError(f"folds must be an int in [2, n={n}], e.g. folds=5; got {folds!r}")
    order = torch.randperm(n, generator=generator)
    parts = order.tensor_split(folds)
    out: Tensor | None = None
    for f, test in enumerate(parts):
        train = torch.cat([part for g, part in enumerate(parts) if g != f])
        probs = fit_predict(train, test)
        if not isinstance(probs, Tensor) or probs.dim() != 2 or probs.shape[0] != len(test):
            raise ValueError(
                f"fit_predict must return a [len(test_index), k] tensor of probabilities; "
                f"got {tuple(probs.shape) if isinstance(probs, Tensor) else type(probs).__name__} "
                f"for {len(test)} test samples"
            )
        if out is None:
            out = torch.empty(n, probs.shape[1], dtype=torch.float64)
        out[test] = probs.detach().to(torch.float64).cpu()
    assert out is not None
    return out


def estimate_noise(
    probs: Tensor | FitPredict,
    noisy_labels: Tensor,
    *,
    method: str = "confident",
    folds: int = 5,
    percentile: float = 97.0,
    generator: torch.Generator | None = None,
) -> NoiseEstimate:
    r"""Estimate :math:`\epsilon`, :math:`T` and the clean prior from noisy labels (module docstring).

    Args:
        probs: out-of-sample softmax ``[n, k]`` of a model trained on the noisy labels, or a
            ``fit_predict(train_index, test_index) -> probs`` callable, then cross-fitted over
            ``folds`` folds (:func:`cross_fit`), which is what makes them out-of-sample.
        noisy_labels: the ``[n]`` integer noisy labels, every class present at least once.
        method: ``"confident"`` (default, counting) or ``"anchor"`` (Patrini et al.).
        folds: the number of folds of the cross-fitting (default: 5).
        percentile: the anchor estimator's percentile (default: 97; ``"anchor"`` only).
        generator: draws the folds.

    Example:
        >>> from sigua_optim.noise import symmetric
        >>> T = symmetric(3, 0.3)
        >>> labels = torch.arange(3).repeat(10)
        >>> probs = T[labels]  # a perfect model of p(noisy | x) for clean labels 0, 1, 2
        >>> noisy = torch.tensor([0, 1, 2] * 7 + [1, 2, 0] * 3)  # 30% of the labels flipped
        >>> round(estimate_noise(probs, noisy).eps, 6)
        0.3
    """
    method = check_choice(method, "method", METHODS)
    percentile = check_real(percentile, "percentile", 0.0, 100.0)
    if callable(probs):
        if not isinstance(noisy_labels, Tensor):
            raise TypeError("noisy_labels must be an integer tensor of class indices")
        probs = cross_fit(probs, int(noisy_labels.numel()), folds, generator)
    P, labels = _check_probs_labels(probs, noisy_labels)
    T, prior = (
        _from_joint(confident_joint(P, labels)) if method == "confident" else _anchor(P, labels, percentile)
    )
    return NoiseEstimate(estimate_noise_rate(T, prior), T, prior)
