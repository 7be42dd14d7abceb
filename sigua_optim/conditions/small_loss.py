r"""Small-loss selection: Self-Teach (Eqs. 4-5) and SIGUA_SL's band-selected bad data (Eq. 6).

The kept rate follows the schedule of Eq. 4, :math:`\rho(t) = 1 - \epsilon \min(t / T_k, 1)`, with
t the epoch given to :meth:`SIGUAOptimizer.set_epoch <sigua_optim.SIGUAOptimizer.set_epoch>`.

``semantics="paper"`` is Eqs. 4-6 to the letter: a sample is good when at most :math:`n\rho(t)`
losses are strictly smaller (ties kept together, about :math:`\lfloor n\rho \rfloor + 1` kept), and
bad when it is not good and at most :math:`n\rho(t) + n\delta` are strictly smaller.

``semantics="official"`` is the authors' released code: the schedule reaches :math:`\epsilon` at
epoch :math:`T_k - 1`; exactly :math:`\lfloor n\rho \rfloor` samples are kept, ties broken by index;
the bad set is the next :math:`\max(\lfloor (n - n_{good}) r \rfloor, 1)` losses, where ``band``
is read as the code's rate r (a fraction of the samples not kept, 0.3-0.7 in its scripts).
"""

from __future__ import annotations

from typing import Any, ClassVar, get_args

import torch
from torch import Tensor

from .. import functional
from .._validation import check_choice, check_real
from ..functional import Semantics
from .base import Scheduled, Selection, check_batch, check_epoch, check_valid


class SmallLoss(Scheduled):
    r"""Self-Teach (Eqs. 4-5): the small-loss samples are good; none are bad.

    :math:`C_{good}(i) = \mathbb{I}(\#\{j : \ell_i > \ell_j\} \le n_b\, \rho(t))`.

    Args:
        noise_rate: :math:`\epsilon` in [0, 1), the label-noise rate.
        warmup_epochs: :math:`T_k` (default: 10), the epochs over which :math:`\rho` falls from
            1 to :math:`1 - \epsilon`.
        semantics: ``"paper"`` (default) or ``"official"`` (the authors' code; module docstring).

    Example:
        >>> import torch
        >>> cond = SmallLoss(noise_rate=0.5, warmup_epochs=0)  # rho = 0.5: n rho = 2.5
        >>> cond(torch.tensor([0.1, 0.9, 0.4, 2.0, 1.5])).good  # at most 2 smaller losses
        tensor([ True,  True,  True, False, False])
    """

    inputs: ClassVar[frozenset[str]] = frozenset({"valid"})
    hyperparameters: ClassVar[tuple[str, ...]] = ("noise_rate", "warmup_epochs", "semantics")

    def __init__(
        self, noise_rate: float, warmup_epochs: float = 10, *, semantics: Semantics = "paper"
    ) -> None:
        self.noise_rate = check_real(
            noise_rate,
            "noise_rate",
            0.0,
            1.0,
            high_open=True,
            hint=" (the fraction of flipped labels, eps; if you do not know it, estimate it with "
            "sigua_optim.noise)",
        )
        self.warmup_epochs = check_epoch(warmup_epochs, "warmup_epochs")
        check_choice(semantics, "semantics", get_args(Semantics))
        self.semantics: Semantics = semantics

    @property
    def rate(self) -> float:
        r""":math:`\rho(t)`, the rate kept as good at the current epoch."""
        return functional.keep_rate(self.noise_rate, self.epoch, self.warmup_epochs, self.semantics)

    def __call__(self, losses: Tensor, *, valid: Tensor | None = None, **inputs: Any) -> Selection:
        check_batch(losses)
        if self.semantics == "paper":
            good = functional.small_loss_mask(losses, self.rate, self._valid(valid, losses))
        else:
            self._valid(valid, losses)
            good = functional.official_small_loss_mask(losses, self.rate)
        return Selection(good, torch.zeros_like(good))

    def _valid(self, valid: Tensor | None, losses: Tensor) -> Tensor | None:
        valid = check_valid(valid, losses)
        if valid is not None and self.semantics == "official":
            raise ValueError(
                "semantics='official' has no valid= mask (the authors' code ranks whole samples): "
                "use semantics='paper', or select per sequence with functional.sequence_losses"
            )
        return valid

    def __repr__(self) -> str:
        return (
            f"SmallLoss(noise_rate={self.noise_rate}, warmup_epochs={self.warmup_epochs:g}, "
            f"semantics={self.semantics!r})"
        )


class BandSelected(SmallLoss):
    r"""SIGUA_SL (Eqs. 4-6): small-loss good data, and the middle-loss band above them as bad.

    :math:`C_{bad}(i) = \neg C_{good}(i) \wedge
    \mathbb{I}(\#\{j : \ell_i > \ell_j\} \le n_b \rho(t) + n_b \delta)`: the samples just above
    the kept ones, not the largest losses.

    Args:
        noise_rate: :math:`\epsilon` in [0, 1), the label-noise rate.
        band: :math:`\delta \ge 0`, the bad band's width as a rate of the batch; at most
            ``noise_rate``, so that the kept rate :math:`1 - \epsilon` plus the band fits in 1.
            With ``semantics="official"``: the code's rate r in [0, 1] (module docstring).
        warmup_epochs: :math:`T_k` (default: 10).
        semantics: ``"paper"`` (default) or ``"official"``.

    Example:
        >>> import torch
        >>> cond = BandSelected(noise_rate=0.5, band=0.2, warmup_epochs=0)  # n (rho + delta) = 3.5
        >>> cond(torch.tensor([0.1, 0.9, 0.4, 2.0, 1.5])).bad  # not good, at most 3 smaller
        tensor([False, False, False, False,  True])
    """

    hyperparameters: ClassVar[tuple[str, ...]] = (*SmallLoss.hyperparameters, "band")

    def __init__(
        self,
        noise_rate: float,
        band: float,
        warmup_epochs: float = 10,
        *,
        semantics: Semantics = "paper",
    ) -> None:
        super().__init__(noise_rate, warmup_epochs, semantics=semantics)
        limit, what = (
            (self.noise_rate, "noise_rate, so that (1 - noise_rate) + band <= 1")
            if semantics == "paper"
            else (1.0, "1, a fraction of the samples not kept")
        )
        self.band = check_real(band, "band", 0.0, limit, hint=f" (band is at most {what})")

    def __call__(self, losses: Tensor, *, valid: Tensor | None = None, **inputs: Any) -> Selection:
        check_batch(losses)
        valid = self._valid(valid, losses)
        if self.semantics == "paper":
            return Selection(*functional.band_masks(losses, self.rate, self.band, valid))
        return Selection(*functional.official_band_masks(losses, self.rate, self.band))

    def __repr__(self) -> str:
        return (
            f"BandSelected(noise_rate={self.noise_rate}, band={self.band}, "
            f"warmup_epochs={self.warmup_epochs:g}, semantics={self.semantics!r})"
        )
