r"""SIGUA in the Hugging Face ``transformers.Trainer`` (sequence classification).

The Trainer runs forward, backward and ``optimizer.step()`` itself. SIGUA enters in two places:

- the loss: :class:`SIGUALoss`, a ``compute_loss_func``, turns the model's logits and the labels
  into per-sample losses :math:`\ell` and returns the objective of Eq. 3,
  :math:`\ell^\top (C_{good} - \gamma C_{bad}) / n_b`, with :math:`n_b` the Trainer's
  ``num_items_in_batch``: the number of labels in the whole accumulated batch. The objectives of
  the micro-batches then add up to Eq. 3 over the accumulated batch (selection is per
  micro-batch), and the Trainer does not divide them again by ``gradient_accumulation_steps``;
- the epoch: :class:`SIGUAEpochCallback` calls ``set_epoch(state.epoch)`` (fractional, e.g. 1.5
  halfway through the second epoch) before each optimizer step, so :math:`\rho(t)` of Eq. 4
  follows the Trainer.

The Trainer's own ``optimizer.step()`` is then a plain step of the wrapped optimizer.
:class:`SIGUATrainer` is a ``Trainer`` with both wired in. Under several processes
(``average_tokens_across_devices``) each rank selects on its own micro-batch and
``num_items_in_batch`` counts the labels of all ranks, as for the Trainer's own losses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from .._validation import accepted_inputs
from ..optimizer import SIGUAOptimizer
from . import require, sigua_optimizer

require("transformers", "4.57", __name__)

from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments  # noqa: E402

__all__ = ["SIGUAEpochCallback", "SIGUALoss", "SIGUATrainer"]

PerSampleLoss = Callable[[Tensor, Tensor], Tensor]


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-sample cross entropy, ``[n]``: the default per-sample loss."""
    return F.cross_entropy(logits, labels, reduction="none")


class SIGUALoss:
    """A ``compute_loss_func`` for ``transformers.Trainer``: Eq. 3 of the per-sample losses.

    Called by the Trainer as ``loss_func(outputs, labels, num_items_in_batch=...)``. In training
    it returns ``optimizer.objective(per_sample_loss(logits, labels), num_items=
    num_items_in_batch, logits=logits, targets=labels)``, so conditions that read ``logits=`` /
    ``targets=`` (:class:`~sigua_optim.conditions.NonNegativeCorrection`) get them. In
    evaluation (no grad) it returns the plain mean of the per-sample losses, the usual
    ``eval_loss``.

    Args:
        optimizer: the :class:`~sigua_optim.SIGUAOptimizer` the Trainer steps
            (``Trainer(..., optimizers=(optimizer, None))``).
        per_sample_loss: ``(logits, labels) -> losses [n]`` (default: cross entropy); e.g.
            ``lambda z, y: backward_corrected_cross_entropy(z, y, T)`` for SIGUA_BC.

    Example::

        opt = SIGUAOptimizer(torch.optim.AdamW(model.parameters(), lr=5e-5), BandSelected(0.4, 0.1))
        trainer = Trainer(model=model, args=args, train_dataset=train, optimizers=(opt, None),
                          compute_loss_func=SIGUALoss(opt), callbacks=[SIGUAEpochCallback()])
    """

    def __init__(self, optimizer: SIGUAOptimizer, per_sample_loss: PerSampleLoss = cross_entropy) -> None:
        if not isinstance(optimizer, SIGUAOptimizer):
            raise TypeError(
                f"SIGUALoss needs the SIGUAOptimizer the Trainer steps, got {type(optimizer).__name__}"
            )
        self.optimizer = optimizer
        self.per_sample_loss = per_sample_loss

    def __call__(
        self, outputs: Any, labels: Tensor | None, num_items_in_batch: int | Tensor | None = None
    ) -> Tensor:
        if labels is None:
            raise ValueError(
                "SIGUALoss got no labels: SIGUA needs the label of each sample; give the batches a "
                "'labels' entry (the Trainer hands it to the loss instead of the model)"
            )
        logits = _logits(outputs)
        losses = self.per_sample_loss(logits, labels)
        if not losses.requires_grad:  # evaluation: Trainer.prediction_step runs under no_grad
            return losses.sum() / (len(losses) if num_items_in_batch is None else num_items_in_batch)
        given: dict[str, Any] = {"logits": logits.detach(), "targets": labels}
        accepted = accepted_inputs(self.optimizer.condition)  # the inputs this condition takes
        inputs = {k: v for k, v in given.items() if accepted is None or k in accepted}
        return self.optimizer.objective(losses, num_items=num_items_in_batch, **inputs)


def _logits(outputs: Any) -> Tensor:
    """The logits of a model output: ``outputs["logits"]``, or the first entry of a tuple."""
    if isinstance(outputs, Mapping):
        if "logits" not in outputs:
            raise ValueError(
                f"SIGUALoss reads outputs['logits'], but the model returned only {list(outputs)}: "
                "use a model with a classification head (e.g. AutoModelForSequenceClassification)"
            )
        logits: Tensor = outputs["logits"]
        return logits
    first: Tensor = outputs[0]
    return first


class SIGUAEpochCallback(TrainerCallback):
    """Keeps the epoch of the Trainer's SIGUAOptimizer at ``state.epoch`` (a float).

    Before each optimizer step (``on_step_begin``) it calls ``set_epoch(state.epoch)``: the
    epochs done, fractional (0.5 after half of the first epoch), which drives :math:`\\rho(t)`.
    Finds the SIGUAOptimizer inside the Trainer's (Accelerate-wrapped) optimizer.
    """

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        sigua_optimizer(kwargs.get("optimizer")).set_epoch(state.epoch or 0.0)


class SIGUATrainer(Trainer):
    """A ``transformers.Trainer`` that trains with SIGUA: :class:`SIGUALoss` and :class:`SIGUAEpochCallback`.

    Takes the Trainer's arguments; ``optimizers=(SIGUAOptimizer(...), scheduler or None)`` is
    required (with ``None`` the Trainer builds its learning-rate schedule on it), and
    ``per_sample_loss=`` replaces ``compute_loss_func=``.

    Example::

        opt = SIGUAOptimizer(torch.optim.AdamW(model.parameters(), lr=5e-5),
                             BandSelected(noise_rate=0.4, band=0.1, warmup_epochs=1), gamma=0.01)
        trainer = SIGUATrainer(model=model, args=TrainingArguments(...), train_dataset=train,
                               optimizers=(opt, None))
        trainer.train()
    """

    def __init__(self, *args: Any, per_sample_loss: PerSampleLoss = cross_entropy, **kwargs: Any) -> None:
        optimizer = kwargs.get("optimizers", (None, None))[0]
        if not isinstance(optimizer, SIGUAOptimizer):
            raise TypeError(
                "SIGUATrainer needs optimizers=(SIGUAOptimizer(torch.optim.AdamW(model.parameters(), "
                f"lr=...), condition=..., gamma=...), None); got optimizers[0] = {optimizer!r:.100}"
            )
        if kwargs.get("compute_loss_func") is not None:
            raise TypeError(
                "SIGUATrainer's loss is SIGUALoss (Eq. 3); pass per_sample_loss=(logits, labels) -> "
                "losses [n] instead of compute_loss_func="
            )
        kwargs["compute_loss_func"] = SIGUALoss(optimizer, per_sample_loss)
        kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), SIGUAEpochCallback()]
        super().__init__(*args, **kwargs)
