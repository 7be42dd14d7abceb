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

Conditions that read ``logits=`` / ``targets=`` get them only from you:
``objective(losses, logits=logits, targets=y)``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..optimizer import SIGUAOptimizer
from . import require, sigua_optimizer

require("lightning", "2.5", __name__)

import lightning.pytorch as pl  # noqa: E402

__all__ = ["SIGUAEpochCallback", "manual_step"]


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
    optimizer = module.optimizers()
    if isinstance(optimizer, list):
        raise TypeError(
            f"manual_step steps one optimizer, but configure_optimizers returned {len(optimizer)}: "
            "step each with objective = sigua_optimizer(opt).objective(losses); "
            "self.manual_backward(objective); opt.step()"
        )
    objective = sigua_optimizer(optimizer).objective(losses, **kwargs)
    module.manual_backward(objective)
    optimizer.step()
    return objective.detach()


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
