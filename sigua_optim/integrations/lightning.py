r"""SIGUA in Lightning (``lightning.pytorch``): automatic and manual optimization, and the epoch.

``configure_optimizers`` returns a :class:`~sigua_optim.SIGUAOptimizer`; Lightning treats it as
any optimizer (schedulers, checkpoints: its ``state_dict`` carries SIGUA's own state under
``"sigua"``). Then:

- **automatic optimization**: ``training_step`` returns the objective of Eq. 3,
  ``sigua_optimizer(self.optimizers()).objective(losses)``; Lightning runs backward and calls
  ``optimizer.step(closure=...)``, a plain step of the wrapped optimizer. With
  ``accumulate_grad_batches=k`` Lightning divides each objective by k: the mean of the
  micro-batches' objectives, selection per micro-batch.
- **manual optimization**: :func:`manual_step`. ``self.optimizers()`` is Lightning's
  ``LightningOptimizer``, whose ``step(closure=None, **kwargs)`` always hands our step a closure
  (and, under mixed precision, runs it through the precision plugin's scaler), so
  ``step(losses=...)`` through it cannot work: back-propagate the objective with
  ``self.manual_backward`` and take a plain ``step()``, as :func:`manual_step` does.
- :class:`SIGUAEpochCallback` calls ``set_epoch`` as the epochs go, for :math:`\rho(t)` of Eq. 4.
  Without it the optimizer stays at epoch 0 (with a warm-up, SIGUA is then plain training):
  :func:`manual_step` and :func:`log_selection` warn when Lightning is past its first epoch and
  the optimizer's epoch never moved.
- :func:`log_selection` logs the selection of the last ``objective`` with ``self.log_dict``.

Conditions that read ``logits=`` / ``targets=`` get them only from you:
``objective(losses, logits=logits, targets=y)``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..optimizer import SIGUAOptimizer
from . import _schedule_logs, _warn_if_epoch_stuck, require, sigua_optimizer

require("lightning", "2.5", __name__)

import lightning.pytorch as pl  # noqa: E402

__all__ = ["SIGUAEpochCallback", "log_selection", "manual_step"]

FORGOTTEN_CALLBACK = (
    "add SIGUAEpochCallback() to the Trainer's callbacks (or call opt.set_epoch(epoch) yourself)"
)


def manual_step(module: pl.LightningModule, losses: Tensor, **kwargs: Any) -> Tensor:
    """One SIGUA step under manual optimization: Eq. 3, ``manual_backward``, ``optimizer.step()``.

    The equivalent of ``SIGUAOptimizer.step(losses, **kwargs)`` through Lightning, so its
    precision plugin scales the backward and its strategy steps. Like ``step``, it does not zero
    the gradients: call ``self.optimizers().zero_grad()`` first.

    Args:
        module: the LightningModule (``self`` in ``training_step``), with
            ``automatic_optimization = False`` and one SIGUAOptimizer.
        losses: per-sample losses ``[n]``.
        **kwargs: for :meth:`SIGUAOptimizer.objective`: ``condition=``, ``selection=``,
            ``num_items=`` and the condition's inputs (``logits=``, ``targets=``, ...).

    Returns:
        The detached objective.

    Example::

        def training_step(self, batch, batch_idx):
            x, y = batch
            self.optimizers().zero_grad()
            objective = manual_step(self, F.cross_entropy(self(x), y, reduction="none"))
            self.log("objective", objective)
    """
    optimizer = _one_optimizer(module, "manual_step steps")
    sigua = sigua_optimizer(optimizer)
    objective = sigua.objective(losses, **kwargs)
    module.manual_backward(objective)
    optimizer.step()
    _warn_if_epoch_stuck(sigua, module.trainer.current_epoch, FORGOTTEN_CALLBACK)
    return objective.detach()


def log_selection(module: pl.LightningModule, **kwargs: Any) -> None:
    r"""Log the selection of the last ``objective`` (or :func:`manual_step`) with ``self.log_dict``.

    From :attr:`SIGUAOptimizer.last_result`, as tensors, with no host read of its own (Lightning
    reads them when it logs): ``sigua_good_fraction`` and ``sigua_bad_fraction``, the fractions
    of the losses selected good and bad; ``sigua_objective``, Eq. 3; ``sigua_mean_loss``, the
    plain mean loss (what training without SIGUA would minimise); ``sigua_epoch`` and, for a
    condition with a rate (``SmallLoss``, ``BandSelected``), ``sigua_keep_rate``,
    :math:`\rho(t)`. Warns once when Lightning is past its first epoch but the optimizer's
    epoch is still 0 (no :class:`SIGUAEpochCallback`).

    Args:
        module: the LightningModule (``self`` in ``training_step``), with one SIGUAOptimizer.
        **kwargs: for ``module.log_dict`` (``on_step=``, ``on_epoch=``, ``prog_bar=``, ...).

    Example::

        def training_step(self, batch, batch_idx):
            x, y = batch
            objective = sigua_optimizer(self.optimizers()).objective(
                F.cross_entropy(self(x), y, reduction="none"))
            log_selection(self)
            return objective
    """
    sigua = sigua_optimizer(_one_optimizer(module, "log_selection logs"))
    result = sigua.last_result
    if result is None:
        raise ValueError(
            "log_selection found no selection to log: call it in training_step after "
            "sigua_optimizer(self.optimizers()).objective(losses) or manual_step(self, losses)"
        )
    _warn_if_epoch_stuck(sigua, module.trainer.current_epoch, FORGOTTEN_CALLBACK)
    values: dict[str, Any] = {
        "sigua_good_fraction": result.good.float().mean(),
        "sigua_bad_fraction": result.bad.float().mean(),
        "sigua_objective": result.objective,
        "sigua_mean_loss": result.mean_loss,
        **_schedule_logs(sigua),
    }
    module.log_dict(values, batch_size=result.good.numel(), **kwargs)


def _one_optimizer(module: pl.LightningModule, what: str) -> Any:
    """``module.optimizers()``, refused when ``configure_optimizers`` returned several."""
    optimizer = module.optimizers()
    if isinstance(optimizer, list):
        raise TypeError(
            f"{what} one optimizer, but configure_optimizers returned {len(optimizer)}: "
            "step each with objective = sigua_optimizer(opt).objective(losses); "
            "self.manual_backward(objective); opt.step()"
        )
    return optimizer


class SIGUAEpochCallback(pl.Callback):
    """Calls ``set_epoch`` on each SIGUAOptimizer of the Trainer as the epochs go.

    At the start of each training epoch the epoch is ``trainer.current_epoch`` (0, 1, ...); with
    ``fractional=True`` it also moves before each batch, to ``current_epoch + batch_idx /
    num_training_batches`` (2.5 halfway through the third epoch), for step-level schedules.

    Example::

        trainer = lightning.pytorch.Trainer(max_epochs=20, callbacks=[SIGUAEpochCallback()])
    """

    def __init__(self, fractional: bool = False) -> None:
        self.fractional = fractional

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Set the SIGUAOptimizer's epoch to the epoch starting."""
        _set_epoch(trainer, trainer.current_epoch)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """With ``fractional=True``: set the epoch to ``epoch + batch_idx / batches``."""
        if self.fractional:  # an iterable dataset without length has inf batches: whole epochs
            _set_epoch(trainer, trainer.current_epoch + batch_idx / trainer.num_training_batches)


def _set_epoch(trainer: pl.Trainer, epoch: float) -> None:
    optimizers = [o for o in trainer.optimizers if isinstance(o, SIGUAOptimizer)]
    if not optimizers:
        raise TypeError(
            "SIGUAEpochCallback found no SIGUAOptimizer: return SIGUAOptimizer(torch.optim.Adam("
            "self.parameters()), condition=..., gamma=...) from configure_optimizers"
        )
    for optimizer in optimizers:
        optimizer.set_epoch(epoch)
