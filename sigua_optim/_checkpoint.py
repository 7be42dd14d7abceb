"""Checkpoints of :class:`~sigua_optim.SIGUAOptimizer`: the whole dict is checked before any part loads.

SIGUA's own fields (``state_dict["sigua"]``), the condition's record (its type, hyperparameters
and state, dry-run on a copy) and the wrapped optimizer's part (keys, the kinds of the group
hyperparameters, the names and shapes of the state buffers) each raise a TypeError or ValueError
naming the entry.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Mapping
from typing import Any, get_args

import torch
from torch import Tensor
from torch.optim import Optimizer

from ._validation import check_choice, check_epoch, check_mapping, check_real
from .functional import Reduction


def check_sigua(sigua: Any, condition: Any) -> dict[str, Any]:
    """The validated fields of ``state_dict["sigua"]``; raises before anything loads."""
    where = "state_dict['sigua']"
    sigua = check_mapping(sigua, where)
    missing = [key for key in ("gamma", "epoch", "reduction", "condition") if key not in sigua]
    if missing:
        raise ValueError(
            f"{where} lacks {', '.join(map(repr, missing))}: load the whole dict that "
            "SIGUAOptimizer.state_dict() returned"
        )
    return {
        "gamma": check_real(sigua["gamma"], f"{where}['gamma']", 0, 1),
        "epoch": check_epoch(sigua["epoch"], f"{where}['epoch']"),
        "reduction": check_choice(sigua["reduction"], f"{where}['reduction']", get_args(Reduction)),
        "condition": check_condition_record(sigua["condition"], condition),
    }


def check_condition_record(record: Any, condition: Any) -> Any:
    """The saved condition's state, once its type and hyperparameters equal ``condition``'s and
    a copy of ``condition`` has loaded it without error."""
    where = "state_dict['sigua']['condition']"
    record = check_mapping(record, where)
    mine = condition_record(condition)
    if record.get("type") != mine["type"]:
        raise ValueError(
            f"{where}: the checkpoint was saved with a condition of type {record.get('type')!r:.100}, "
            f"this optimizer's is {mine['type']!r}: build the optimizer with the condition of the run"
        )
    saved = check_mapping(record.get("hyperparameters"), f"{where}['hyperparameters']")
    names = set(saved) | set(mine["hyperparameters"])
    differ = sorted(n for n in names if not _same_value(saved.get(n), mine["hyperparameters"].get(n)))
    if differ:
        shown = ", ".join(
            f"{n}={saved.get(n)!r:.60} saved, {mine['hyperparameters'].get(n)!r:.60} here" for n in differ
        )
        raise ValueError(
            f"{where}: the checkpoint's condition differs from this optimizer's ({shown}): "
            f"build the optimizer with the condition of the run, {condition!r:.100}"
        )
    state = record.get("state")
    if state is not None and callable(getattr(condition, "load_state_dict", None)):
        trial: Any = copy.deepcopy(condition)
        try:
            trial.load_state_dict(state)  # a dry run: raises, changes nothing
        except (TypeError, ValueError) as error:
            raise type(error)(f"{where}['state']: {error}") from error
    return state


def condition_record(condition: Any) -> dict[str, Any]:
    """A condition in a checkpoint: its type (its name, for a function), hyperparameters, state."""
    named = condition if hasattr(condition, "__qualname__") else type(condition)
    state_dict = getattr(condition, "state_dict", None)
    return {
        "type": f"{named.__module__}.{named.__qualname__}",
        "hyperparameters": {
            name: getattr(condition, name) for name in getattr(condition, "hyperparameters", ())
        },
        "state": state_dict() if callable(state_dict) else None,
    }


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return (
            isinstance(a, Tensor)
            and isinstance(b, Tensor)
            and a.shape == b.shape
            and a.dtype == b.dtype
            and torch.equal(a.cpu(), b.cpu())
        )
    return type(a) is type(b) and bool(a == b)


def _same_kind(saved: Any, current: Any) -> bool:
    """Whether a saved hyperparameter can stand for the current one (lr, betas, flags ...)."""
    if isinstance(current, bool) or current is None:
        return saved is None or isinstance(saved, bool)
    if isinstance(current, (numbers.Real, Tensor)):
        if isinstance(saved, Tensor):
            return saved.numel() == 1 and saved.dtype != torch.bool
        try:
            return not isinstance(saved, bool) and isinstance(saved, numbers.Real) and math.isfinite(saved)
        except OverflowError:
            return False
    if isinstance(current, (tuple, list)):
        return (
            isinstance(saved, (tuple, list))
            and len(saved) == len(current)
            and all(_same_kind(s, c) for s, c in zip(saved, current, strict=True))
        )
    return isinstance(saved, type(current))


_SCALAR_BUFFERS = frozenset({"step", "eta", "mu", "mu_product"})
"""The one-element state buffers of torch.optim's optimizers (the others are shaped like the parameter)."""


def _fits(buffer: torch.Size, parameter: torch.Size) -> bool:
    """A state buffer of a parameter: its shape, or (Adafactor's factors) sizes of 1 in it."""
    return len(buffer) == len(parameter) and all(b in (p, 1) for b, p in zip(buffer, parameter, strict=True))


def check_wrapped_state(optimizer: Optimizer, state_dict: dict[str, Any]) -> None:
    """Check the wrapped optimizer's part of a checkpoint before it loads (see load_state_dict)."""
    for key in ("state", "param_groups"):
        if key not in state_dict:
            raise ValueError(f"state_dict lacks {key!r}: load the dict an optimizer's state_dict() returned")
    state = check_mapping(state_dict["state"], "state_dict['state']")
    groups = state_dict["param_groups"]
    if not isinstance(groups, (list, tuple)) or not all(isinstance(g, Mapping) for g in groups):
        raise TypeError(f"state_dict['param_groups'] must be a list of dicts, got {groups!r:.100}")
    if len(groups) != len(optimizer.param_groups):
        raise ValueError(
            f"state_dict['param_groups'] has {len(groups)} groups, the optimizer "
            f"{len(optimizer.param_groups)}"
        )
    shapes: dict[Any, torch.Size] = {}
    for i, (saved, group) in enumerate(zip(groups, optimizer.param_groups, strict=True)):
        where = f"state_dict['param_groups'][{i}]"
        ids = saved.get("params")
        if (
            not isinstance(ids, (list, tuple))
            or len(ids) != len(group["params"])
            or not all(isinstance(j, int) and not isinstance(j, bool) for j in ids)
        ):
            raise ValueError(f"{where}['params'] must list the {len(group['params'])} ids of its parameters")
        for key, value in group.items():
            if key in ("params", "param_names") or (
                key not in saved and (value is None or isinstance(value, bool))
            ):
                continue  # a flag missing from an older checkpoint: the optimizer fills it in
            if key not in saved:
                raise ValueError(f"{where} lacks the hyperparameter {key!r}")
            if not _same_kind(saved[key], value):
                raise TypeError(
                    f"{where}[{key!r}] must be of the kind of {value!r:.60}, got {saved[key]!r:.60}"
                )
        shapes.update(zip(ids, (p.shape for p in group["params"]), strict=True))
    builtin = type(optimizer).__module__.startswith("torch.optim") and not isinstance(
        optimizer, torch.optim.LBFGS
    )
    names: set[str] | None = None
    for key, entry in state.items():
        where = f"state_dict['state'][{key!r:.20}]"
        if key not in shapes:
            raise ValueError(f"{where}: no param group lists a parameter with id {key!r:.20}")
        entry = check_mapping(entry, where)
        if not builtin:
            continue
        if names is not None and set(entry) != names:
            raise ValueError(f"{where} has the buffers {sorted(entry)}, another parameter {sorted(names)}")
        names = set(entry)
        for name, value in entry.items():
            if not isinstance(value, Tensor) or not value.is_floating_point():
                raise TypeError(f"{where}[{name!r}] must be a floating-point tensor, got {value!r:.60}")
            scalar = name in _SCALAR_BUFFERS
            if value.numel() != 1 if scalar else not _fits(value.shape, shapes[key]):
                raise ValueError(
                    f"{where}[{name!r}] has shape {tuple(value.shape)}, its parameter {tuple(shapes[key])}"
                )
