r"""Online estimate of the noise rate from the previous epoch's losses (``noise_rate="auto"``).

During epoch :math:`e` every loss a condition sees is mapped to :math:`u = 1 - e^{-\ell}` in
[0, 1) (for cross-entropy, one minus the predicted probability of the label) and counted in a
fixed histogram of ``bins`` bins on the device: O(``bins``) memory, no host synchronisation in the
step. When the epoch reaches :math:`e + 1` (``set_epoch``), the histogram is summed over the ranks
of an initialised ``torch.distributed`` group, read once, and a two-component beta mixture is
fitted to it by EM with weighted moments (as Arazo et al., ICML 2019, fit the per-sample losses):
:math:`\hat\epsilon` is the weight of the component with the larger mean, clipped to
[0, ``max_rate``]. The histogram then restarts.

Before the first fit :math:`\hat\epsilon = 0` (every sample kept; the paper's schedule keeps
everything at epoch 0 anyway). An epoch with fewer than ``min_samples`` losses, or with all of
them in one bin (all losses equal), keeps the previous estimate. After epoch ``freeze_after``
the estimate is frozen: the mixture separates noisy from clean labels only before the network
memorises the noise (docs/noise.md), and a selection that drops the large losses would then
feed its own estimate. Summing over the ranks is right under either ``distributed=`` scope of
:class:`~sigua_optim.SIGUAOptimizer`: with ``"global"`` every rank sees the same gathered batch
and the sum scales all bins alike, which leaves the mixture unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from .._validation import check_real

_ITERATIONS = 50
_TINY = 1e-6


def _beta_log_pdf(x: Tensor, a: Tensor, b: Tensor) -> Tensor:
    log_norm = torch.lgamma(a + b) - torch.lgamma(a) - torch.lgamma(b)
    return log_norm + (a - 1) * torch.log(x) + (b - 1) * torch.log1p(-x)


def beta_mixture_weight(centers: Tensor, counts: Tensor) -> float:
    r"""The weight of the larger-mean component of a 2-component beta mixture fit to a histogram.

    ``centers`` in (0, 1) and ``counts >= 0`` are float64 ``[bins]``. Initialised by splitting at
    the weighted mean; then ``50`` EM steps whose M-step sets each component's weight, mean
    :math:`m` and variance :math:`v` from the responsibility-weighted counts and its parameters
    by moments, :math:`\alpha = m\,c`, :math:`\beta = (1 - m)\,c`, :math:`c = m(1 - m)/v - 1`.

    >>> centers = torch.linspace(0.05, 0.95, 10, dtype=torch.float64)
    >>> counts = torch.tensor([40., 30, 10, 0, 0, 0, 0, 5, 10, 5], dtype=torch.float64)
    >>> round(beta_mixture_weight(centers, counts), 2)
    0.2
    """
    x = centers.clamp(_TINY, 1 - _TINY)
    w = counts / counts.sum()
    high = (x > (w * x).sum()).to(torch.float64)
    resp = torch.stack([1 - high, high])
    for _ in range(_ITERATIONS):
        mass = (resp * w).sum(dim=1).clamp_min(_TINY)
        mean = (resp * w * x).sum(dim=1) / mass
        var = ((resp * w * (x - mean.unsqueeze(1)) ** 2).sum(dim=1) / mass).clamp_min(_TINY)
        mean = mean.clamp(_TINY, 1 - _TINY)
        common = (mean * (1 - mean) / var - 1).clamp_min(_TINY)
        log_p = _beta_log_pdf(x, (mean * common).unsqueeze(1), ((1 - mean) * common).unsqueeze(1))
        log_p = log_p + torch.log(mass / mass.sum()).unsqueeze(1)
        resp = torch.softmax(log_p, dim=0)
    return float((resp * w).sum(dim=1)[int(mean.argmax())])


class LossMixture:
    r"""Estimates :math:`\epsilon` at each epoch from the last epoch's losses (module docstring).

    Args:
        bins: the histogram's bins over :math:`u = 1 - e^{-\ell} \in [0, 1)` (default: 100).
        freeze_after: the last epoch at whose start the estimate is updated (default: ``None``,
            never frozen; ``SmallLoss(noise_rate="auto")`` passes its ``warmup_epochs``).
        min_samples: the fewest losses an epoch needs to update the estimate (default: 100).
        max_rate: the largest estimate returned (default: 0.9).

    Example:
        >>> mixture = LossMixture()
        >>> losses = torch.cat([torch.full((80,), 0.05), torch.full((20,), 3.0)])
        >>> mixture.observe(losses)
        >>> round(mixture.update(1.0), 2)
        0.2
    """

    def __init__(
        self,
        bins: int = 100,
        freeze_after: float | None = None,
        min_samples: int = 100,
        max_rate: float = 0.9,
    ) -> None:
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
            raise ValueError(f"bins must be an int >= 2 (the histogram's size), got {bins!r}")
        if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 1:
            raise ValueError(f"min_samples must be an int >= 1, got {min_samples!r}")
        self.bins = bins
        self.freeze_after = None if freeze_after is None else check_real(freeze_after, "freeze_after", 0.0)
        self.min_samples = min_samples
        self.max_rate = check_real(max_rate, "max_rate", 0.0, 1.0, high_open=True)
        self.noise_rate = 0.0
        self.epoch = 0
        self.counts: Tensor | None = None

    @property
    def frozen(self) -> bool:
        """Whether the estimate no longer changes (the epoch is past ``freeze_after``)."""
        return self.freeze_after is not None and self.epoch >= self.freeze_after

    def observe(self, losses: Tensor, valid: Tensor | None = None) -> None:
        """Count the (valid, finite) losses into this epoch's histogram, on their device."""
        if self.frozen:
            return
        u = -torch.expm1(-losses.detach().to(torch.float64).clamp_min(0.0))
        keep = torch.isfinite(u) if valid is None else torch.isfinite(u) & valid
        u = torch.where(keep, u, torch.full_like(u, -1.0))  # out of [0, 1]: not counted
        hist = torch.histc(u, bins=self.bins, min=0.0, max=1.0)
        self.counts = hist if self.counts is None else self.counts.to(hist.device) + hist

    def update(self, epoch: float) -> float:
        r"""At a new whole epoch, fit the last epoch's histogram; return :math:`\hat\epsilon`."""
        whole = math.floor(epoch)
        if whole == self.epoch:
            return self.noise_rate
        counts, self.counts = self.counts, None
        if whole > self.epoch and not self.frozen:
            self.noise_rate = self._fit(counts)
        self.epoch = whole
        return self.noise_rate

    def _fit(self, counts: Tensor | None) -> float:
        if dist.is_available() and dist.is_initialized():
            if counts is None:
                device = "cuda" if dist.get_backend() == "nccl" else "cpu"
                counts = torch.zeros(self.bins, dtype=torch.float64, device=device)
            dist.all_reduce(counts)
        if counts is None:
            return self.noise_rate
        counts = counts.cpu()
        if float(counts.sum()) < self.min_samples or int((counts > 0).sum()) < 2:
            return self.noise_rate
        centers = (torch.arange(self.bins, dtype=torch.float64) + 0.5) / self.bins
        return min(max(beta_mixture_weight(centers, counts), 0.0), self.max_rate)

    def state_dict(self) -> dict[str, Any]:
        """The estimate, the epoch it belongs to, and this epoch's histogram so far (on the CPU)."""
        counts = None if self.counts is None else self.counts.detach().cpu().clone()
        return {"noise_rate": self.noise_rate, "epoch": self.epoch, "counts": counts}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.noise_rate = check_real(state["noise_rate"], "noise_rate", 0.0, 1.0, high_open=True)
        self.epoch = int(state["epoch"])
        counts = state["counts"]
        self.counts = None if counts is None else counts.detach().to(torch.float64).clone()

    def __repr__(self) -> str:
        return (
            f"LossMixture(bins={self.bins}, freeze_after={self.freeze_after}, "
            f"noise_rate={self.noise_rate:.4g})"
        )
