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
from .online import LossMixture


def _estimator(noise_rate: float | str | LossMixture, warmup_epochs: float) -> LossMixture | None:
    """The online estimator ``noise_rate="auto"`` (or a LossMixture) asks for; None for a number."""
    if isinstance(noise_rate, LossMixture):
        return noise_rate
    if noise_rate == "auto":
        return LossMixture(freeze_after=warmup_epochs)
    if isinstance(noise_rate, str):
        raise ValueError(f"noise_rate must be a float in [0, 1) or 'auto', got {noise_rate!r}")
    return None


class SmallLoss(Scheduled):
    r"""Self-Teach (Eqs. 4-5): the small-loss samples are good; none are bad.

    :math:`C_{good}(i) = \mathbb{I}(\#\{j : \ell_i > \ell_j\} \le n_b\, \rho(t))`.

    Args:
        noise_rate: :math:`\epsilon` in [0, 1), the label-noise rate; or ``"auto"``, estimated
            at each epoch from the previous epoch's losses by a
            :class:`~sigua_optim.conditions.online.LossMixture` frozen after ``warmup_epochs``
            (0 before the first estimate); or such a ``LossMixture``.
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
    # the noise rate as given ("auto" for an estimate, which is state, not a hyperparameter)
    hyperparameters: ClassVar[tuple[str, ...]] = ("noise_rate_setting", "warmup_epochs", "semantics")

    def __init__(
        self,
        noise_rate: float | str | LossMixture,
        warmup_epochs: float = 10,
        *,
        semantics: Semantics = "paper",
    ) -> None:
        self.warmup_epochs = check_epoch(warmup_epochs, "warmup_epochs")
        self.estimator = _estimator(noise_rate, self.warmup_epochs)
        self.noise_rate = (
            check_real(
                noise_rate,
                "noise_rate",
                0.0,
                1.0,
                high_open=True,
                hint=" (the fraction of flipped labels, eps; if you do not know it, pass 'auto' or "
                "estimate it with sigua_optim.estimation.estimate_noise)",
            )
            if self.estimator is None
            else self.estimator.noise_rate
        )
        check_choice(semantics, "semantics", get_args(Semantics))
        self.semantics: Semantics = semantics

    @property
    def noise_rate_setting(self) -> float | str:
        """``noise_rate`` as given: the float, or ``"auto"`` when it is estimated online."""
        return self.noise_rate if self.estimator is None else "auto"

    @property
    def rate(self) -> float:
        r""":math:`\rho(t)`, the rate kept as good at the current epoch."""
        return functional.keep_rate(self.noise_rate, self.epoch, self.warmup_epochs, self.semantics)

    def __call__(self, losses: Tensor, *, valid: Tensor | None = None, **inputs: Any) -> Selection:
        check_batch(losses)
        valid = self._valid(valid, losses)
        self._observe(losses, valid)
        if self.semantics == "paper":
            good = functional.small_loss_mask(losses, self.rate, valid)
        else:
            good = functional.official_small_loss_mask(losses, self.rate)
        return Selection(good, torch.zeros_like(good))

    def _observe(self, losses: Tensor, valid: Tensor | None) -> None:
        if self.estimator is not None:
            self.estimator.observe(losses, valid)

    def set_epoch(self, epoch: float) -> None:
        """Set the epoch t; with ``noise_rate="auto"``, at a new whole epoch, re-estimate eps."""
        super().set_epoch(epoch)
        if self.estimator is not None:
            self.noise_rate = self.estimator.update(self.epoch)

    def state_dict(self) -> dict[str, Any]:
        """The epoch, and with ``noise_rate="auto"`` the estimator's state."""
        state = super().state_dict()
        if self.estimator is not None:
            state["estimator"] = self.estimator.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if self.estimator is not None and "estimator" in state:
            self.estimator.load_state_dict(state["estimator"])
        super().load_state_dict(state)

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
        noise_rate: :math:`\epsilon` in [0, 1), the label-noise rate, or ``"auto"`` (see
            :class:`SmallLoss`).
        band: :math:`\delta \ge 0`, the bad band's width as a rate of the batch; at most
            ``noise_rate``, so that the kept rate :math:`1 - \epsilon` plus the band fits in 1.
            With ``noise_rate="auto"``: any rate in [0, 1); the band used is
            :math:`\min(\delta, \hat\epsilon)`, updated with :math:`\hat\epsilon`.
            With ``semantics="official"``: the code's rate r in [0, 1] (module docstring).
        warmup_epochs: :math:`T_k` (default: 10).
        semantics: ``"paper"`` (default) or ``"official"``.

    Example:
        >>> import torch
        >>> cond = BandSelected(noise_rate=0.5, band=0.2, warmup_epochs=0)  # n (rho + delta) = 3.5
        >>> cond(torch.tensor([0.1, 0.9, 0.4, 2.0, 1.5])).bad  # not good, at most 3 smaller
        tensor([False, False, False, False,  True])
    """

    hyperparameters: ClassVar[tuple[str, ...]] = (*SmallLoss.hyperparameters, "max_band")

    def __init__(
        self,
        noise_rate: float | str | LossMixture,
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
        if self.estimator is not None and semantics == "paper":
            limit, what = 1.0, "1 (with noise_rate='auto' the band used is min(band, eps_hat))"
        self.max_band = self.band = check_real(band, "band", 0.0, limit, hint=f" (band is at most {what})")
        self._follow_band()

    def _follow_band(self) -> None:
        """With an estimated eps and paper semantics, the band is min(band, eps_hat)."""
        if self.estimator is not None and self.semantics == "paper":
            self.band = min(self.max_band, self.noise_rate)

    def set_epoch(self, epoch: float) -> None:
        """Set the epoch t; with ``noise_rate="auto"``, re-estimate eps and the band."""
        super().set_epoch(epoch)
        self._follow_band()

    def __call__(self, losses: Tensor, *, valid: Tensor | None = None, **inputs: Any) -> Selection:
        check_batch(losses)
        valid = self._valid(valid, losses)
        self._observe(losses, valid)
        if self.semantics == "paper":
            return Selection(*functional.band_masks(losses, self.rate, self.band, valid))
        return Selection(*functional.official_band_masks(losses, self.rate, self.band))

    def __repr__(self) -> str:
        return (
            f"BandSelected(noise_rate={self.noise_rate}, band={self.band}, "
            f"warmup_epochs={self.warmup_epochs:g}, semantics={self.semantics!r})"
        )
