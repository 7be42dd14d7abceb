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
:class:`SIGUATrainer` is a ``Trainer`` with both wired in, which also builds the Trainer's own
optimizer from its ``TrainingArguments`` and wraps it, and adds the selection to each training
log (:meth:`SIGUALoss.pop_logs`). Under several processes
(``average_tokens_across_devices``) each rank selects on its own micro-batch and
``num_items_in_batch`` counts the labels of all ranks, as for the Trainer's own losses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from .._validation import accepted_inputs, check_choice, check_real
from ..conditions import Condition, Selection
from ..functional import Reduction
from ..optimizer import SIGUAOptimizer, StepResult
from . import _schedule_logs, require, sigua_optimizer

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

    With ``SIGUAOptimizer(reduction="official")`` each micro-batch's objective (mean of the
    good losses minus :math:`\\gamma` times the mean of the bad ones) is multiplied by its share
    of the accumulated batch, ``len(losses) / num_items_in_batch``: the micro-batches add up to
    the size-weighted mean of their objectives, with selection and group means per micro-batch.

    Each training call also adds the selection to running sums on the device, without a host
    read; :meth:`pop_logs` reads them once, at a logging step.

    Args:
        optimizer: the :class:`~sigua_optim.SIGUAOptimizer` the Trainer steps
            (``Trainer(..., optimizers=(optimizer, None))``); ``None`` until the trainer builds
            it (:class:`SIGUATrainer` sets ``loss.optimizer`` when it does).
        per_sample_loss: ``(logits, labels) -> losses [n]`` (default: cross entropy); e.g.
            ``lambda z, y: backward_corrected_cross_entropy(z, y, T)`` for SIGUA_BC.

    Example::

        opt = SIGUAOptimizer(torch.optim.AdamW(model.parameters(), lr=5e-5), BandSelected(0.4, 0.1))
        trainer = Trainer(model=model, args=args, train_dataset=train, optimizers=(opt, None),
                          compute_loss_func=SIGUALoss(opt), callbacks=[SIGUAEpochCallback()])
    """

    def __init__(
        self, optimizer: SIGUAOptimizer | None, per_sample_loss: PerSampleLoss = cross_entropy
    ) -> None:
        if optimizer is not None and not isinstance(optimizer, SIGUAOptimizer):
            raise TypeError(
                f"SIGUALoss needs the SIGUAOptimizer the Trainer steps, got {type(optimizer).__name__}"
            )
        self.optimizer = optimizer
        self.per_sample_loss = per_sample_loss
        self._sums: Tensor | None = None  # good, bad and the sum of the losses since pop_logs
        self._samples = 0

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
        if self.optimizer is None:
            raise TypeError(
                "SIGUALoss has no optimizer to train with: give it the SIGUAOptimizer the Trainer "
                "steps, SIGUALoss(opt), or use SIGUATrainer, which builds one"
            )
        official = self.optimizer.reduction == "official"
        accepted = accepted_inputs(self.optimizer.condition)
        inputs: dict[str, Any] = {"logits": logits.detach(), "targets": labels}
        objective = self.optimizer.objective(
            losses,
            num_items=None if official else num_items_in_batch,
            **{name: value for name, value in inputs.items() if accepted is None or name in accepted},
        )
        self._add(self.optimizer.last_result)
        if official and num_items_in_batch is not None:
            return objective * (losses.numel() / num_items_in_batch)
        return objective

    def _add(self, result: StepResult | None) -> None:
        assert result is not None and result.mean_loss is not None  # objective() just set both
        n = result.good.numel()
        counts = torch.stack([result.good.sum(), result.bad.sum()]).float()
        sums = torch.cat([counts, (result.mean_loss.float() * n).reshape(1)])
        self._sums = sums if self._sums is None else self._sums + sums
        self._samples += n

    def pop_logs(self) -> dict[str, float]:
        r"""The selection since the last call, for the Trainer's logs; then starts over.

        One host read. Over the samples of the training calls since the last call (of this
        process): ``sigua_good_fraction`` and ``sigua_bad_fraction``, the fractions of them
        selected good and bad; ``sigua_mean_loss``, their plain mean loss (what training
        without SIGUA would minimise; the Trainer's ``loss`` is Eq. 3); and the optimizer's
        ``sigua_epoch`` and, for a condition with a rate (``SmallLoss``, ``BandSelected``),
        ``sigua_keep_rate``, :math:`\rho(t)` at that epoch. Empty when there was no training call.
        """
        if self._sums is None or self.optimizer is None:
            return {}
        good, bad, total = self._sums.tolist()
        n, self._sums, self._samples = self._samples, None, 0
        logs = {"sigua_good_fraction": good / n, "sigua_bad_fraction": bad / n, "sigua_mean_loss": total / n}
        return {**logs, **_schedule_logs(self.optimizer)}


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
        """Set the SIGUAOptimizer's epoch to ``state.epoch`` before the optimizer step."""
        sigua_optimizer(kwargs.get("optimizer")).set_epoch(state.epoch or 0.0)


class SIGUATrainer(Trainer):
    """A ``transformers.Trainer`` that trains with SIGUA: :class:`SIGUALoss` and :class:`SIGUAEpochCallback`.

    Takes the Trainer's arguments, plus SIGUA's. By default it builds its optimizer the
    Trainer's own way (``Trainer.create_optimizer``: ``args.optim``, ``learning_rate``,
    ``weight_decay``, Adam's betas and epsilon, no weight decay on biases and LayerNorm) and
    wraps it in ``SIGUAOptimizer(optimizer, condition, gamma, reduction=reduction)``; or pass
    ``optimizers=(SIGUAOptimizer(...), scheduler or None)`` and no ``condition=``. With no
    scheduler the Trainer builds its learning-rate schedule on the SIGUAOptimizer.

    Each training log (``logging_steps``) gets the selection beside the Trainer's ``loss``
    (Eq. 3): :meth:`SIGUALoss.pop_logs`.

    Args:
        condition: the condition (e.g. ``BandSelected(noise_rate=0.4, band=0.1)``); required
            unless ``optimizers=`` holds a SIGUAOptimizer.
        gamma: :math:`\\gamma`, the underweight of gradient ascent (default: 0.01).
        reduction: ``"paper"`` (Eq. 3, default) or ``"official"``.
        per_sample_loss: ``(logits, labels) -> losses [n]``, replaces ``compute_loss_func=``
            (default: cross entropy).

    Example::

        trainer = SIGUATrainer(model=model, args=TrainingArguments(..., learning_rate=5e-5),
                               train_dataset=train,
                               condition=BandSelected(noise_rate=0.4, band=0.1, warmup_epochs=1),
                               gamma=0.01)
        trainer.train()
    """

    def __init__(
        self,
        *args: Any,
        condition: Condition | Callable[..., Selection] | None = None,
        gamma: float | None = None,
        reduction: Reduction = "paper",
        per_sample_loss: PerSampleLoss = cross_entropy,
        **kwargs: Any,
    ) -> None:
        optimizer = (kwargs.get("optimizers") or (None, None))[0]
        if optimizer is not None and not isinstance(optimizer, SIGUAOptimizer):
            raise TypeError(
                "SIGUATrainer's optimizers[0] must be a SIGUAOptimizer, got "
                f"{type(optimizer).__name__}: leave optimizers= out and pass condition= and gamma= "
                "(SIGUATrainer wraps the Trainer's own optimizer), or pass "
                "optimizers=(SIGUAOptimizer(torch.optim.AdamW(...), condition=..., gamma=...), None)"
            )
        if optimizer is not None and (condition is not None or gamma is not None):
            raise TypeError(
                "SIGUATrainer got both a SIGUAOptimizer in optimizers= and condition=/gamma=: give "
                "them to the SIGUAOptimizer, or leave optimizers= out"
            )
        if optimizer is None and condition is None:
            raise TypeError(
                "SIGUATrainer needs condition= (e.g. BandSelected(noise_rate=0.4, band=0.1)) to "
                "select good and bad samples, or optimizers=(SIGUAOptimizer(...), None)"
            )
        if kwargs.get("compute_loss_func") is not None:
            raise TypeError(
                "SIGUATrainer's loss is SIGUALoss (Eq. 3); pass per_sample_loss=(logits, labels) -> "
                "losses [n] instead of compute_loss_func="
            )
        if condition is not None and (isinstance(condition, type) or not callable(condition)):
            raise TypeError(
                "condition must be a condition object, e.g. BandSelected(noise_rate=0.4, band=0.1), "
                f"got {condition!r}"
            )
        self.sigua_options: dict[str, Any] = {
            "condition": condition,
            "gamma": check_real(0.01 if gamma is None else gamma, "gamma", 0.0, 1.0),
            "reduction": check_choice(reduction, "reduction", get_args(Reduction)),
        }
        self.sigua_loss = SIGUALoss(optimizer, per_sample_loss)
        kwargs["compute_loss_func"] = self.sigua_loss
        kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), SIGUAEpochCallback()]
        super().__init__(*args, **kwargs)

    def create_optimizer(self, model: Any = None) -> Any:
        """The Trainer's own optimizer (``Trainer.create_optimizer``), wrapped in a SIGUAOptimizer.

        Left as it is when ``optimizers=`` gave one.
        """
        if self.optimizer is None:
            self.optimizer = SIGUAOptimizer(super().create_optimizer(model), **self.sigua_options)
            self.sigua_loss.optimizer = self.optimizer
        return self.optimizer

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """The Trainer's ``log``, with :meth:`SIGUALoss.pop_logs` added to each training log."""
        if "loss" in logs:  # a training log; evaluation logs eval_loss
            logs.update(self.sigua_loss.pop_logs())
        super().log(logs, start_time)
