r"""SIGUAOptimizer: the step of Algorithm 1 around any ``torch.optim`` optimizer."""

from __future__ import annotations

import functools
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Literal, NamedTuple, TypeVar, get_args, overload

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim import optimizer as _torch_optim

from . import _checkpoint, _distributed, _guard, functional
from ._validation import (
    check_choice,
    check_condition,
    check_epoch,
    check_inputs,
    check_mapping,
    check_real,
    check_scaler,
    check_tensor,
)
from .conditions import AllGood, Condition
from .conditions.base import Selection, check_batch
from .functional import Reduction

NonFinite = Literal["raise", "skip", "unchecked"]
Scope = Literal["global", "local"]

__all__ = ["SIGUAOptimizer", "StepResult"]


class StepResult(NamedTuple):
    """What :meth:`SIGUAOptimizer.step` returns, and :attr:`SIGUAOptimizer.last_result` holds
    after :meth:`~SIGUAOptimizer.objective` too: tensors, to be read only when logging.

    Attributes:
        objective: the detached scalar of Eq. 3 (the value back-propagated).
        good: bool mask of the samples descended on.
        bad: bool mask of the samples ascended on.
        skipped: True when ``nonfinite="skip"`` refused the update (a NaN/inf loss or
            gradient): parameters and optimizer state unchanged, gradients set to None. With a
            fused optimizer (``fused=True``) a 0-d bool tensor instead: the update was skipped
            on the device, unread (the gradients are then left as they are).
        mean_loss: the detached plain mean of the (valid) losses, what a step without SIGUA
            would have back-propagated: log it beside ``objective``.
        grad_norm: with ``max_grad_norm``, the total 2-norm of the gradients before clipping
            (what ``torch.nn.utils.clip_grad_norm_`` returns); None otherwise.
    """

    objective: Tensor
    good: Tensor
    bad: Tensor
    skipped: bool | Tensor = False
    mean_loss: Tensor | None = None
    grad_norm: Tensor | None = None


class _Skipped(Exception):
    """Raised inside a closure to leave the wrapped optimizer's step before it updates."""


EPOCH_WARNING_STEPS = 200
"""Updates at epoch 0, without ``set_epoch`` ever called nor ``steps_per_epoch``, after which a
condition whose schedule moves with the epoch warns once that it is not moving."""


def _check_gamma(gamma: Any) -> float:
    return check_real(
        gamma, "gamma", 0.0, 1.0, hint=" (the underweight of gradient ascent; the paper uses 0.01)"
    )


def _per_sample(losses: Tensor, inputs: dict[str, Any]) -> tuple[Tensor, Tensor | None, dict[str, Any]]:
    """Validate the losses; flatten per-token losses with their ``valid=`` mask.

    Returns the 1-D losses, the flat valid mask (or None) and the inputs with that mask.
    """
    check_tensor(losses, "losses", "per-sample losses, e.g. F.cross_entropy(out, y, reduction='none')")
    if losses.ndim == 0:
        raise ValueError(
            "losses is a scalar: SIGUA weighs each sample, so it needs per-sample losses; "
            "pass reduction='none' to the loss function (e.g. F.cross_entropy(out, y, "
            "reduction='none'))"
        )
    if not losses.is_floating_point():
        raise TypeError(f"losses must be floating point, got {losses.dtype}")
    valid = inputs.get("valid")
    if valid is None and losses.ndim > 1:
        raise ValueError(
            f"losses has shape {tuple(losses.shape)}: pass per-sample losses of shape [batch], or "
            "per-token losses with valid= (the bool mask of real tokens) to select among tokens, "
            "or reduce them per sequence first with sigua_optim.functional.sequence_losses"
        )
    if valid is not None:
        if not isinstance(valid, Tensor) or valid.dtype != torch.bool or valid.shape != losses.shape:
            raise ValueError(
                f"valid= must be a bool mask shaped like the losses {tuple(losses.shape)}; got "
                f"{getattr(valid, 'dtype', type(valid).__name__)} {tuple(getattr(valid, 'shape', ()))}"
            )
        losses, valid = losses.reshape(-1), valid.reshape(-1)
        inputs = {**inputs, "valid": valid}
    check_batch(losses)
    return losses, valid, inputs


_MAX_ITEMS = 2**63 - 1  # an int64


def _check_num_items(num_items: int | Tensor | None, reduction: str, read: bool = True) -> None:
    """num_items: a positive int or a 0-d integer or floating tensor, with the paper's reduction only.

    A tensor's value is read (one host read) when ``read`` is True and not inside
    ``torch.compile``; its dtype and shape are always checked.
    """
    if num_items is None:
        return
    if reduction != "paper":
        raise ValueError(
            "num_items= needs reduction='paper': the official reduction averages each group over "
            "its own count, which one micro-batch cannot know; pass reduction='paper'"
        )
    what = "the positive number of samples in the whole batch"
    if isinstance(num_items, Tensor):
        if num_items.ndim != 0 or num_items.dtype == torch.bool or num_items.is_complex():
            raise TypeError(
                f"num_items= must be an int or a 0-d integer or floating tensor ({what}); got "
                f"{num_items.dtype} of shape {tuple(num_items.shape)}"
            )
        if read and not torch.compiler.is_compiling():
            value = float(num_items)  # the one host read of num_items (see objective())
            if not (1 <= value <= _MAX_ITEMS):
                raise ValueError(f"num_items= must be {what} (>= 1), got tensor({value})")
        return
    if isinstance(num_items, bool) or not isinstance(num_items, int):
        raise TypeError(f"num_items= must be {what}, an int or a 0-d tensor; got {num_items!r:.100}")
    if not 1 <= num_items <= _MAX_ITEMS:
        raise ValueError(f"num_items= must be {what}, in [1, 2**63 - 1]; got {num_items!r:.100}")


def _check_selection(selection: Any, losses: Tensor, source: str) -> None:
    """A selection is Selection(good, bad): two bool tensors shaped like the losses."""
    masks = tuple(selection) if isinstance(selection, tuple) else ()
    if len(masks) != 2 or not all(
        isinstance(m, Tensor) and m.dtype == torch.bool and m.shape == losses.shape for m in masks
    ):
        raise TypeError(
            f"{source} must be Selection(good, bad), two bool tensors of shape "
            f"{tuple(losses.shape)}; got {selection!r:.200}"
        )


def _check_max_grad_norm(max_grad_norm: float) -> float:
    norm = check_real(max_grad_norm, "max_grad_norm", hint=" (the total gradient norm to clip to, e.g. 1.0)")
    if norm <= 0:
        raise ValueError(f"max_grad_norm must be > 0 (e.g. 1.0), or None not to clip; got {max_grad_norm!r}")
    return norm


def _fused(optimizer: Optimizer) -> bool:
    """Whether the optimizer's step takes ``found_inf`` (torch's fused Adam, AdamW, SGD), as
    ``torch.amp.GradScaler`` tells: it then skips its update on the device."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False))


def _schedule_moves(condition: Any) -> bool:
    """Whether the condition's selection follows the epoch (a set_epoch and a warm-up)."""
    return callable(getattr(condition, "set_epoch", None)) and getattr(condition, "warmup_epochs", 0) > 0


_Step = TypeVar("_Step", bound=Callable[..., Any])


def _profiled_when_needed(step: _Step) -> _Step:
    """``step`` with torch's ``Optimizer.step`` wrapper (a ``record_function`` for the profiler,
    then the step hooks) only while a profiler runs, a step hook is registered or
    ``torch.compile`` traces it.

    torch wraps every optimizer's ``step`` so; the wrapped optimizer's own step keeps its wrapper.
    The ``record_function`` costs 10-70 us of host time on a CPU even with no profiler running,
    so a SIGUA step skips it when nothing would see it. Marked ``hooked``, torch leaves it be.
    """
    profiled = Optimizer.profile_hook_step(step)
    global_hooks = [
        getattr(_torch_optim, f"_global_optimizer_{when}_hooks", None) for when in ("pre", "post")
    ]

    @functools.wraps(step)
    def wrapper(self: Optimizer, *args: Any, **kwargs: Any) -> Any:
        if (
            torch.compiler.is_compiling()  # torch's wrapper traces; the profiler query would break
            or self._optimizer_step_pre_hooks
            or self._optimizer_step_post_hooks
            or any(hooks is None or hooks for hooks in global_hooks)  # None: unknown, assume some
            or torch._C._autograd._profiler_enabled()
        ):
            return profiled(self, *args, **kwargs)
        return step(self, *args, **kwargs)

    wrapper.hooked = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


class SIGUAOptimizer(Optimizer):
    r"""SIGUA (Han et al., ICML 2020) around any optimizer: descend on good, ascend on bad data.

    One :meth:`step` with per-sample losses :math:`\ell \in \mathbb{R}^{n_b}` runs Algorithm 1:
    the condition marks each sample good, bad or neither, the objective of Eq. 3

    .. math::
        \ell_b = \ell^\top \bigl(C_{good} - \gamma\, C_{bad}\bigr) / n_b

    is back-propagated, and the wrapped optimizer steps. Good samples are learned (weight 1), bad
    ones are forgotten by gradient ascent with the learning rate reduced by :math:`\gamma`, the
    rest is ignored; the divisor is the whole batch size.

    It is a ``torch.optim.Optimizer`` that shares ``param_groups``, ``state`` and ``defaults``
    with the wrapped one, so LR schedulers, ``GradScaler`` and training frameworks accept it.

    Args:
        optimizer: the wrapped ``torch.optim.Optimizer`` (Adam, SGD, ...).
        condition: the default condition (default: :class:`~sigua_optim.conditions.AllGood`,
            plain training); any callable ``(losses, **inputs) -> Selection``.
        gamma: :math:`\gamma \in [0, 1]` (default: 0.01), the underweight of the ascent; 0 is
            StopGrad (bad data ignored). Like the learning rate, it is saved in checkpoints and
            :meth:`load_state_dict` restores the saved value.
        reduction: ``"paper"`` (default, Eq. 3) or ``"official"``: the authors' code,
            :math:`\mathrm{mean}_{good}(\ell) - \gamma\,\mathrm{mean}_{bad}(\ell)`.
        nonfinite: what a NaN or inf loss or gradient does to an update, on every path:
            ``step(losses)``, and the plain ``step()`` / ``step(closure)`` after
            :meth:`objective` and your own backward. ``"raise"`` (default): a ValueError and
            ``"skip"``: the update is refused (``last_result.skipped`` is True); either way the
            parameters and the optimizer state are unchanged and the gradients are set to None.
            Both read one value back from the device per update, after backward: the float32
            sum of the objective and the gradients' norms, not finite when the objective or a
            gradient is not (as ``GradScaler`` reads one flag); ``"skip"`` with a fused
            optimizer (``fused=True``) reads nothing: its kernels skip on the device. Under
            ``torch.distributed`` the ranks decide together, by an all-reduce of that value.
            With ``scaler=`` only the losses are checked here: the GradScaler checks the
            gradients itself (and skips the step, as under AMP). ``"unchecked"``: no check and
            no host synchronisation; a NaN reaches the parameters, as in a plain PyTorch step.
        selection_scope: under an initialised ``torch.distributed`` process group (DDP, FSDP),
            ``"global"`` (default) selects over the batches of all ranks, as one process would
            over their concatenation (the losses are all-gathered; n_b, and the official
            reduction's group counts, are the global ones); ``"local"`` selects within each
            rank's batch.
        distributed: deprecated alias of ``selection_scope`` (a DeprecationWarning); it takes
            the same strings, not a bool.
        process_group: the group to select over (default: the world).
        steps_per_epoch: when given, every update (a ``step(losses)``, or a plain ``step()``;
            not each :meth:`objective` of an accumulated batch) advances the epoch by
            ``1 / steps_per_epoch``, so :math:`\rho(t)` moves without :meth:`set_epoch`; a
            :meth:`set_epoch` call still sets the epoch, and the count restarts from it. Default
            None: the epoch moves only by :meth:`set_epoch` (trainers' callbacks call it, and
            only the loop knows its length), and a condition whose schedule needs it warns once
            after ``EPOCH_WARNING_STEPS`` updates without it.
        max_grad_norm: when given, the gradients are clipped to this total 2-norm
            (``torch.nn.utils.clip_grad_norm_``) between backward and every update, after
            ``scaler.unscale_`` with ``scaler=``; the norm before clipping is
            ``last_result.grad_norm``. Default None: no clipping.

    Example:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from sigua_optim import SIGUAOptimizer
        >>> from sigua_optim.conditions import BandSelected
        >>> model = torch.nn.Linear(4, 3)
        >>> opt = SIGUAOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
        ...                      condition=BandSelected(noise_rate=0.5, band=0.25), gamma=0.01)
        >>> opt.set_epoch(12)
        >>> x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
        >>> opt.zero_grad()
        >>> result = opt.step(F.cross_entropy(model(x), y, reduction="none"))
        >>> int(result.good.sum()), int(result.bad.sum())
        (5, 2)
    """

    process_group: Any = None  # not pickled: a group belongs to one process
    last_result: StepResult | None = None
    """The :class:`StepResult` of the last :meth:`objective` or :meth:`step` with losses; a plain
    step after :meth:`objective` sets its ``skipped`` and ``grad_norm`` (not pickled)."""
    # Defaults for an optimizer unpickled without them; each is replaced, never mutated in place.
    steps_per_epoch: int | None = None
    max_grad_norm: float | None = None
    _epoch_set = 0.0
    _steps_in_epoch = 0
    _epoch_moved = False
    _pending: list[_guard.Pending] = []  # noqa: RUF012

    def __init__(
        self,
        optimizer: Optimizer,
        condition: Condition | Callable[..., Selection] | None = None,
        gamma: float = 0.01,
        *,
        reduction: Reduction = "paper",
        nonfinite: NonFinite = "raise",
        selection_scope: Scope = "global",
        distributed: Scope | None = None,
        process_group: Any = None,
        steps_per_epoch: int | None = None,
        max_grad_norm: float | None = None,
    ) -> None:
        if isinstance(optimizer, SIGUAOptimizer):
            raise TypeError("optimizer is already a SIGUAOptimizer: wrap the base optimizer once")
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                "optimizer must be a torch.optim.Optimizer built on the model's parameters, e.g. "
                f"SIGUAOptimizer(torch.optim.Adam(model.parameters())); got {type(optimizer).__name__}"
            )
        if condition is not None:
            check_condition(condition)
        if distributed is not None:
            warnings.warn(
                "SIGUAOptimizer(distributed=) is deprecated: pass selection_scope= instead",
                DeprecationWarning,
                stacklevel=2,
            )
            selection_scope = distributed
        self.optimizer = optimizer
        self.condition = AllGood() if condition is None else condition
        self.gamma = gamma
        self.reduction = reduction
        self.nonfinite = nonfinite
        self.selection_scope = selection_scope
        self.process_group = process_group
        if steps_per_epoch is not None and (
            isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) or steps_per_epoch < 1
        ):
            raise ValueError(
                "steps_per_epoch must be a positive int, the optimizer steps of one epoch "
                f"(len(loader) // accumulation steps), or None; got {steps_per_epoch!r:.100}"
            )
        self.steps_per_epoch = steps_per_epoch
        self.max_grad_norm = None if max_grad_norm is None else _check_max_grad_norm(max_grad_norm)
        self.epoch = 0.0
        self._epoch_set = 0.0  # the epoch of the last set_epoch ...
        self._steps_in_epoch = 0  # ... and the updates since: epoch = _epoch_set + steps / steps_per_epoch
        self._epoch_moved = False
        self._pending = []
        self.last_result = None
        # The hook tables torch.optim.Optimizer.__init__ would make; param_groups, state and
        # defaults are not copied but delegated to the wrapped optimizer (properties below).
        self._optimizer_step_pre_hooks = OrderedDict()
        self._optimizer_step_post_hooks = OrderedDict()
        self._optimizer_state_dict_pre_hooks = OrderedDict()
        self._optimizer_state_dict_post_hooks = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()
        self._patch_step_function()

    # -- shared with the wrapped optimizer ------------------------------------------------------
    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The wrapped optimizer's ``param_groups`` (the same list: schedulers change its lr)."""
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = value

    @property
    def state(self) -> Any:
        """The wrapped optimizer's ``state`` (the same object: momentum, Adam's moments)."""
        return self.optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        self.optimizer.state = value

    @property
    def defaults(self) -> dict[str, Any]:
        """The wrapped optimizer's ``defaults``."""
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self.optimizer.defaults = value

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forward to the wrapped optimizer's ``zero_grad``."""
        self.optimizer.zero_grad(set_to_none=set_to_none)
        self._pending = []  # the objectives of those gradients are gone with them

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Forward to the wrapped optimizer's ``add_param_group``."""
        self.optimizer.add_param_group(param_group)

    def __getstate__(self) -> dict[str, Any]:
        """Everything but the process group (it belongs to one process), the objectives pending
        for the next update's guard, and the hooks (not pickled by ``torch.optim.Optimizer``
        either)."""
        return {
            name: value
            for name, value in self.__dict__.items()
            if name not in ("process_group", "_pending")
            and not (name.startswith("_optimizer_") and name.endswith("_hooks"))
        }

    def __repr__(self) -> str:
        return (
            f"SIGUAOptimizer({self.optimizer!r},\n  condition={self.condition!r}, "
            f"gamma={self.gamma}, reduction={self.reduction!r}, epoch={self.epoch:g})"
        )

    # -- SIGUA's own settings --------------------------------------------------------------------
    @property
    def gamma(self) -> float:
        r""":math:`\gamma \in [0, 1]`, the underweight of gradient ascent on bad data."""
        return self._gamma

    @gamma.setter
    def gamma(self, value: float) -> None:
        self._gamma = _check_gamma(value)

    @property
    def reduction(self) -> Reduction:
        """``"paper"`` (Eq. 3) or ``"official"`` (the authors' group means)."""
        return self._reduction

    @reduction.setter
    def reduction(self, value: Reduction) -> None:
        check_choice(value, "reduction", get_args(Reduction))
        self._reduction = value

    @property
    def nonfinite(self) -> NonFinite:
        """What a NaN or infinite loss does: ``"raise"``, ``"skip"`` or ``"unchecked"``."""
        return self._nonfinite_policy

    @nonfinite.setter
    def nonfinite(self, value: NonFinite) -> None:
        check_choice(value, "nonfinite", get_args(NonFinite))
        self._nonfinite_policy = value

    @property
    def selection_scope(self) -> Scope:
        """``"global"`` (select over the batches of all ranks) or ``"local"`` (each rank's own)."""
        return self._selection_scope

    @selection_scope.setter
    def selection_scope(self, value: Scope) -> None:
        check_choice(value, "selection_scope", get_args(Scope))
        self._selection_scope = value

    @property
    def distributed(self) -> Scope:
        """The former name of :attr:`selection_scope` (same value; the keyword is deprecated)."""
        return self._selection_scope

    @distributed.setter
    def distributed(self, value: Scope) -> None:
        self.selection_scope = value

    def set_epoch(self, epoch: float) -> None:
        r"""Set the epoch t (from 0; a float for step-level schedules) that drives :math:`\rho(t)`.

        Forwarded to the default condition, and to a per-call condition before it runs. With
        ``steps_per_epoch``, the updates that follow advance it from here.
        """
        self.epoch = self._epoch_set = check_epoch(epoch)
        self._steps_in_epoch = 0
        self._epoch_moved = True
        self._follow_epoch(self.condition)

    def _advance(self) -> None:
        """An update was taken (or skipped): move the epoch by ``1 / steps_per_epoch``."""
        self._steps_in_epoch += 1
        if self.steps_per_epoch is not None:
            self.epoch = self._epoch_set + self._steps_in_epoch / self.steps_per_epoch
            self._follow_epoch(self.condition)
        elif (
            not self._epoch_moved
            and self._steps_in_epoch == EPOCH_WARNING_STEPS
            and _schedule_moves(self.condition)
        ):
            warnings.warn(
                f"{EPOCH_WARNING_STEPS} optimizer steps at epoch 0: the schedule of "
                f"{self.condition!r} follows the epoch, which has not moved, so it still keeps "
                "every sample as good (plain training). Call opt.set_epoch(epoch) at the start of "
                "each epoch, or pass SIGUAOptimizer(..., steps_per_epoch=len(loader))",
                UserWarning,
                stacklevel=4,
            )

    def _follow_epoch(self, condition: Any) -> None:
        set_epoch = getattr(condition, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(self.epoch)

    # -- the step ------------------------------------------------------------------------------
    def select(
        self,
        losses: Tensor,
        *,
        condition: Condition | Callable[..., Selection] | None = None,
        **inputs: Any,
    ) -> Selection:
        """The condition's Selection(good, bad) for these losses at the current epoch.

        For a selection over more than one call (gradient accumulation with global selection):
        select on the concatenated detached losses, then pass each micro-batch's slice to
        :meth:`objective` / :meth:`step` as ``selection=`` with ``num_items=`` the total count.
        """
        self._check_call("select()", losses, condition, None, None, None, inputs)
        flat, valid, inputs = _per_sample(losses, inputs)
        selection = self._select(flat, valid, condition, inputs)
        return Selection(selection.good.reshape(losses.shape), selection.bad.reshape(losses.shape))

    def _check_call(
        self,
        where: str,
        losses: Any,
        condition: Any,
        selection: Any,
        num_items: Any,
        scaler: Any,
        inputs: dict[str, Any],
    ) -> None:
        """The arguments of ``step``/``objective``/``select`` read by type before anything else.

        A tensor ``num_items`` is read on the host when it is on the CPU; on a GPU only its dtype
        and shape are checked here (no host synchronisation): a 0 or NaN count makes Eq. 3 not
        finite, which the non-finite guard refuses; a negative count is not caught there.
        """
        check_tensor(losses, "losses", "per-sample losses, e.g. F.cross_entropy(out, y, reduction='none')")
        if condition is not None:
            check_condition(condition, "condition=")
        check_scaler(scaler)
        read = not isinstance(num_items, Tensor) or num_items.device.type == "cpu"
        _check_num_items(num_items, self.reduction, read)
        if selection is None:
            check_inputs(self.condition if condition is None else condition, inputs, where)
        elif set(inputs) - {"valid"}:
            names = ", ".join(f"{name}=" for name in sorted(set(inputs) - {"valid"}))
            raise TypeError(f"{where} got {names} with selection=: no condition runs to take them")

    def _select(
        self, losses: Tensor, valid: Tensor | None, condition: Any, inputs: dict[str, Any]
    ) -> Selection:
        condition = self.condition if condition is None else condition
        if condition is not self.condition:
            self._follow_epoch(condition)
        selection = condition(losses.detach(), **inputs)
        _check_selection(selection, losses, f"the value returned by the condition {condition!r}")
        if valid is None:
            return Selection(*selection)
        return Selection(selection.good & valid, selection.bad & valid)  # padding is never chosen

    def objective(
        self,
        losses: Tensor,
        *,
        condition: Condition | Callable[..., Selection] | None = None,
        selection: Selection | None = None,
        num_items: int | Tensor | None = None,
        **inputs: Any,
    ) -> Tensor:
        """The scalar of Eq. 3 for these per-sample losses, without backward or step.

        For callers that run backward themselves: ``scaler.scale(opt.objective(losses)).backward()``,
        ``accelerator.backward(...)``, Lightning's ``training_step``, a Trainer's ``compute_loss``.

        Args:
            losses: per-sample losses ``[n]`` that require grad.
            condition: this call's condition instead of the default one.
            selection: a Selection(good, bad) made already (e.g. by :meth:`select` over a whole
                accumulated batch); the condition is then not called.
            num_items: the divisor :math:`n_b` of Eq. 3 instead of ``len(losses)``: the number
                of samples in the whole accumulated batch (Hugging Face's
                ``num_items_in_batch``), so that the objectives of the micro-batches add up to
                the objective of the whole batch. An int or a 0-d integer or floating tensor;
                paper reduction only. It must be >= 1 (0, a negative count or NaN would turn
                descent into ascent or NaN). An int is checked for free; a tensor's dtype and
                shape too; its value is read on the host (one read) when it is on the CPU, or
                under ``nonfinite="raise"``/``"skip"``, which read the device each step anyway.
                Under ``nonfinite="unchecked"`` or inside ``torch.compile``, a device tensor's
                value is not checked: no host synchronisation.
            **inputs: named inputs for the condition; a keyword the condition does not take is
                a TypeError (see :class:`~sigua_optim.conditions.Condition`).

        The selection is kept, sync-free, in :attr:`last_result` (a :class:`StepResult`) for
        logging: ``opt.last_result.good.sum()``.
        """
        self._check_call("objective()", losses, condition, selection, num_items, None, inputs)
        objective, chosen = self._select_and_reduce(losses, condition, selection, num_items, inputs)
        self._keep(objective, chosen, losses, inputs)
        return objective

    def _keep(self, objective: Tensor, chosen: Selection, losses: Tensor, inputs: dict[str, Any]) -> None:
        """Record the objective: in :attr:`last_result`, and for the guard of the next update."""
        detached, values = objective.detach(), losses.detach()  # each detached once
        self.last_result = StepResult(detached, chosen.good, chosen.bad, mean_loss=self._mean(values, inputs))
        if self.nonfinite != "unchecked" and objective.requires_grad:
            valid = inputs.get("valid")
            flat = values if values.ndim == 1 else values.reshape(-1)
            item = _guard.Pending(detached, flat, None if valid is None else valid.reshape(-1))
            self._pending = _guard.add(self._pending, item)

    @staticmethod
    def _mean(values: Tensor, inputs: dict[str, Any]) -> Tensor:
        """The plain mean of the (valid) detached losses: what a step without SIGUA would take."""
        valid = inputs.get("valid")
        if valid is None:
            return values.mean()
        mean: Tensor = torch.where(valid, values, 0.0).sum() / valid.sum().clamp_min(1)
        return mean

    def _select_and_reduce(
        self,
        losses: Tensor,
        condition: Any,
        selection: Selection | None,
        num_items: int | Tensor | None,
        inputs: dict[str, Any],
    ) -> tuple[Tensor, Selection]:
        shape = losses.shape
        losses, valid, inputs = _per_sample(losses, inputs)
        if not losses.requires_grad:
            raise ValueError(
                "losses does not require grad: compute it from the model's output with autograd "
                "on (not under torch.no_grad() or after .detach()), or the step cannot learn"
            )
        divisors = None
        if selection is None and num_items is None and self._world_size() > 1:
            selection, divisors = _distributed.select_globally(
                lambda whole, mask, shared: self._select(whole, mask, condition, shared),
                losses,
                valid,
                inputs,
                self.process_group,
            )
            num_items = divisors.total
        elif selection is None:
            selection = self._select(losses, valid, condition, inputs)
        elif condition is not None:
            raise TypeError("pass condition= or selection=, not both: a selection is already made")
        else:
            _check_selection(selection, losses.reshape(shape), "selection=")
            selection = Selection(selection.good.reshape(-1), selection.bad.reshape(-1))
        if valid is not None:
            # Padding losses weigh 0 and never make Eq. 3 NaN (no 0 * NaN); a NaN the model
            # computed there still reaches the gradients (backward: 0 * NaN), for the guard.
            losses = torch.where(valid, losses, 0.0)
            if num_items is None:
                num_items = valid.sum().clamp_min(1)  # n_b of Eq. 3 counts the real tokens
        if divisors is not None and self.reduction == "official":
            objective = _distributed.official_objective(
                losses, selection.good, selection.bad, self.gamma, divisors
            )
        else:
            objective = functional.sigua_objective(
                losses, selection.good, selection.bad, self.gamma, self.reduction, num_items
            )
        if len(shape) > 1:
            selection = Selection(selection.good.reshape(shape), selection.bad.reshape(shape))
        return objective, selection

    def _world_size(self) -> int:
        """Ranks sharing the selection: > 1 under an initialised process group, scope "global"."""
        return 1 if self.selection_scope == "local" else _distributed.ranks(self.process_group)

    @overload  # type: ignore[override]
    def step(
        self,
        losses: Tensor,
        closure: None = None,
        *,
        condition: Condition | Callable[..., Selection] | None = None,
        selection: Selection | None = None,
        num_items: int | Tensor | None = None,
        scaler: torch.amp.GradScaler | None = None,
        **inputs: Any,
    ) -> StepResult: ...

    @overload
    def step(
        self, losses: Callable[[], Any] | None = None, closure: Callable[[], Any] | None = None
    ) -> Any: ...

    @_profiled_when_needed
    def step(
        self,
        losses: Tensor | Callable[[], Any] | None = None,
        closure: Callable[[], Any] | None = None,
        *,
        condition: Condition | Callable[..., Selection] | None = None,
        selection: Selection | None = None,
        num_items: int | Tensor | None = None,
        scaler: torch.amp.GradScaler | None = None,
        **inputs: Any,
    ) -> Any:
        """One SIGUA step: select, reduce (Eq. 3), back-propagate, then update: clip (with
        ``max_grad_norm``), guard (``nonfinite``), step the wrapped optimizer.

        Args:
            losses: per-sample losses ``[n]`` that require grad (``reduction='none'``), from a
                forward pass not yet back-propagated. Without them (or with a callable, taken as
                a closure) this is a plain step of the wrapped optimizer, for callers that ran
                backward themselves (GradScaler, trainers), with the same clipping and guard.
            closure: passed to the wrapped optimizer's step (plain step only); the clipping and
                the guard run after its first evaluation, before any update. LBFGS needs one:
                ``def closure(): opt.zero_grad(); o = opt.objective(losses_fn()); o.backward();
                return o``, then ``opt.step(closure)``.
            condition: this call's condition instead of the default one.
            selection: a Selection made already (see :meth:`objective`).
            num_items: the divisor of Eq. 3 instead of ``len(losses)`` (see :meth:`objective`).
            scaler: a ``torch.amp.GradScaler``: the objective is scaled before backward and the
                wrapped optimizer steps through ``scaler.step``, which skips the step when the
                gradients are not finite; the gradients are unscaled before clipping. Call
                ``scaler.update()`` afterwards, as usual (also after a step refused for a NaN/inf
                loss: its gradients were unscaled, so the scaler records them).
            **inputs: named inputs for the condition (``clean=``, ``logits=``, ``targets=``, ...).

        Returns:
            A :class:`StepResult` of tensors (no host synchronisation), also kept in
            :attr:`last_result`; or, for a plain step, whatever the wrapped optimizer's step
            returns (None when ``nonfinite="skip"`` refused it), :attr:`last_result` then being
            the last :meth:`objective`'s, with ``skipped`` and ``grad_norm`` of this update.
        """
        if losses is None or callable(losses):
            given = [
                name
                for name, value in (
                    ("condition", condition),
                    ("selection", selection),
                    ("num_items", num_items),
                    ("scaler", scaler),
                )
                if value is not None
            ]
            if inputs or given:
                raise TypeError(
                    f"{', '.join(given + list(inputs))}= need per-sample losses: call step(losses, ...)"
                )
            return self._plain_step(losses if closure is None else closure)
        if closure is not None:
            raise TypeError("pass either per-sample losses or a closure to step(), not both")
        self._check_call("step()", losses, condition, selection, num_items, scaler, inputs)
        if isinstance(self.optimizer, torch.optim.LBFGS):
            raise TypeError(
                "step(losses) cannot drive LBFGS, which evaluates the loss several times per step: "
                "pass a closure, opt.step(closure) with def closure(): opt.zero_grad(); "
                "objective = opt.objective(per_sample_losses()); objective.backward(); return objective"
            )
        objective, chosen = self._select_and_reduce(losses, condition, selection, num_items, inputs)
        try:
            (objective if scaler is None else scaler.scale(objective)).backward()  # type: ignore[no-untyped-call]
        except RuntimeError as error:
            # The first node of the caller's graph fails, before any parameter's gradient is
            # written: every path to the parameters runs through it.
            if "backward through the graph a second time" not in str(error):
                raise
            raise ValueError(
                "losses was already back-propagated (its graph is freed): step(losses) runs the "
                "backward itself, so call either loss.backward() and a plain opt.step(), or "
                "opt.step(losses) alone, from a fresh forward pass"
            ) from error
        if scaler is not None:
            scaler.unscale_(self.optimizer)  # before clipping and the guard, as scaler.step would
        self._keep(objective, chosen, losses, inputs)
        if scaler is None:
            self._update(self.optimizer.step, False)
        else:
            self._update(lambda: scaler.step(self.optimizer), True)
        assert self.last_result is not None
        return self.last_result

    def _plain_step(self, closure: Callable[[], Any] | None) -> Any:
        """The wrapped optimizer's step after the caller's backward, guarded and clipped.

        With a closure (Lightning's automatic optimization, LBFGS) the guard and the clipping
        run after its first evaluation, inside the wrapped optimizer's step but before it
        changes anything.
        """
        if closure is None:
            return self._update(self.optimizer.step, False)
        first = True

        def evaluate() -> Any:
            nonlocal first
            loss = closure()
            if first:
                first = False
                if self._guarded(False) is True:
                    raise _Skipped
            return loss

        try:
            out = self.optimizer.step(evaluate)
        except _Skipped:
            out = None
        finally:
            self.optimizer.__dict__.pop("found_inf", None)
        self._pending = []  # objectives of LBFGS's later evaluations
        self._advance()
        return out

    def _update(self, apply: Callable[[], Any], scaled: bool) -> Any:
        """Clip, guard, then ``apply`` the wrapped optimizer's step unless refused; advance the epoch."""
        out = None
        if self._guarded(scaled) is not True:
            try:
                out = apply()
            finally:
                self.optimizer.__dict__.pop("found_inf", None)
        self._advance()
        return out

    def _guarded(self, scaled: bool) -> bool | Tensor:
        """Clip, then apply the non-finite policy to the coming update: True to skip it.

        ``scaled``: a GradScaler unscaled the gradients and checks them itself; the guard then
        judges the losses only. Under ``"skip"`` with a fused optimizer (``fused=True`` Adam,
        AdamW, SGD) the flag goes to its kernels as ``found_inf`` and is returned, a device
        tensor, unread. Records the outcome in :attr:`last_result` when an objective was taken
        for this update.
        """
        grad_norm = None
        norms: list[Tensor] = []
        if self.max_grad_norm is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(
                [p for group in self.param_groups for p in group["params"]], self.max_grad_norm
            )
            norms = [] if scaled else [grad_norm]
        elif not scaled and self.nonfinite != "unchecked":
            norms = _guard.grad_norms(_guard.grads_of(self.param_groups))
        pending, self._pending = self._pending, []
        skipped: bool | Tensor
        if self.nonfinite == "skip" and not scaled and _fused(self.optimizer):  # a scaler sets its own
            total = _guard.hot_total(pending, norms)
            skipped = (
                False if total is None else _guard.skip_on_device(self.optimizer, total, self.process_group)
            )
        else:
            skipped = _guard.refused(self.nonfinite, pending, norms, self.process_group, self.param_groups)
        if pending and self.last_result is not None:
            self.last_result = self.last_result._replace(skipped=skipped, grad_norm=grad_norm)
        return skipped

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's state dict plus SIGUA's own under the key ``"sigua"``.

        ``state_dict["sigua"]`` holds ``gamma``, ``epoch`` (fractional with ``steps_per_epoch``),
        ``reduction`` and ``condition``: the
        condition's type, its hyperparameters (the attributes its class names in
        ``hyperparameters``: noise rate, band, warm-up, semantics, T, ...) and its own
        ``state_dict()``. Hooks registered with ``register_state_dict_pre_hook`` /
        ``register_state_dict_post_hook`` run as on any torch optimizer.
        """
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        state = self.optimizer.state_dict()
        state["sigua"] = self._sigua_state()
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            returned = post_hook(self, state)
            if returned is not None:
                state = returned
        return state

    def _sigua_state(self) -> dict[str, Any]:
        """SIGUA's fields of a checkpoint (a new field: here, _checkpoint.check_sigua, _load_sigua)."""
        return {
            "gamma": self.gamma,
            "epoch": self.epoch,
            "reduction": self.reduction,
            "condition": _checkpoint.condition_record(self.condition),
        }

    def _load_sigua(self, fields: dict[str, Any]) -> None:
        self._gamma, self.reduction = fields["gamma"], fields["reduction"]
        self.set_epoch(fields["epoch"])  # with steps_per_epoch, the updates count on from it
        load = getattr(self.condition, "load_state_dict", None)
        if fields["condition"] is not None and callable(load):
            load(fields["condition"])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load :meth:`state_dict`'s output, or a plain state dict of the wrapped optimizer.

        The whole dict is checked before any part loads (a ValueError or TypeError naming the
        entry, and nothing changed): SIGUA's fields, the condition, and the wrapped optimizer's
        part (``state`` and ``param_groups`` present; each group's hyperparameters of the
        current ones' kinds; for ``torch.optim`` optimizers but LBFGS, every parameter's state
        with the same buffer names, each a floating-point tensor: ``step`` (and ASGD's and
        NAdam's scalars) of one element, the others of the parameter's number of dimensions,
        each size the parameter's or 1).

        Like the learning rate in ``param_groups``, the saved ``gamma`` and ``reduction``
        replace the current ones, and the epoch is restored. The condition is not replaced:
        the checkpoint's condition must be of the same type with the same hyperparameters
        (otherwise a ValueError); its state (e.g. its epoch) is loaded into it. A plain state
        dict of the wrapped optimizer (no ``"sigua"`` key) leaves SIGUA's settings as they are.
        Hooks registered with ``register_load_state_dict_pre_hook`` / ``..._post_hook`` run
        as on any torch optimizer.
        """
        state_dict = dict(check_mapping(state_dict, "state_dict"))
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            returned = pre_hook(self, state_dict)
            if returned is not None:
                state_dict = dict(
                    check_mapping(returned, "the state_dict a load_state_dict pre-hook returned")
                )
        sigua = state_dict.pop("sigua", None)
        fields = None if sigua is None else _checkpoint.check_sigua(sigua, self.condition)
        _checkpoint.check_wrapped_state(self.optimizer, state_dict)
        before = self.optimizer.state, self.optimizer.param_groups
        try:
            self.optimizer.load_state_dict(state_dict)
        except (KeyError, IndexError, RuntimeError, TypeError, ValueError) as error:
            # torch builds a new state and new groups, then swaps them in: the old ones are intact.
            self.optimizer.state, self.optimizer.param_groups = before
            message = f"state_dict: the wrapped optimizer refused it ({type(error).__name__}: {error})"
            raise (TypeError if isinstance(error, TypeError) else ValueError)(message) from error
        if fields is not None:
            self._load_sigua(fields)
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)
