"""The non-finite policy of :class:`~sigua_optim.SIGUAOptimizer`: one host read guards an update.

Before the wrapped optimizer steps, one 0-d value is computed on the device and read back once:
the sum of the objectives and of the gradients' norms (those that clipping computes anyway, or
one fused pass). It is not finite when an objective is not (every loss but padding enters its dot
product, an ignored one with weight 0, and 0 * inf is NaN) or a norm is not. Only then are the
losses and the gradients looked at one by one: finite losses whose objective overflowed, and
finite gradients whose norm (or the sum) overflowed, go on, as a plain step would; a NaN or inf
loss or gradient refuses the step. Under torch.distributed the ranks take both decisions together
(an all-reduce of the sum, then of what each found): a rank that refused while the others stepped
would leave the replicas apart."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from . import _distributed


class Pending(NamedTuple):
    """An objective back-propagated into the gradients that the next update will apply."""

    objective: Tensor  # detached
    losses: Tensor  # detached, flat
    valid: Tensor | None


PENDING_LIMIT = 64
"""Objectives kept one by one for the next update; more are merged into one (e.g. objective()
called many times without a step or zero_grad)."""


def add(pending: list[Pending], item: Pending) -> list[Pending]:
    """``pending`` with ``item``; past ``PENDING_LIMIT``, merged into one (their sum, their losses)."""
    pending = [*pending, item]
    if len(pending) <= PENDING_LIMIT:
        return pending
    valid = None
    if any(p.valid is not None for p in pending):
        valid = torch.cat(
            [torch.ones_like(p.losses, dtype=torch.bool) if p.valid is None else p.valid for p in pending]
        )
    objective = torch.stack([p.objective.float() for p in pending]).sum()
    return [Pending(objective, torch.cat([p.losses for p in pending]), valid)]


def grads_of(param_groups: Iterable[dict[str, Any]]) -> list[Tensor]:
    """The gradients of the parameters, those that have one."""
    return [p.grad for group in param_groups for p in group["params"] if p.grad is not None]


def grad_norms(grads: list[Tensor]) -> list[Tensor]:
    """The gradients' 2-norms, 0-d tensors: one ``torch._foreach_norm`` per device and dtype (one
    fused read-only pass on a GPU; on a CPU half the cost of the largest magnitude).

    A norm is not finite when its gradient holds a NaN or inf, and also when finite gradients
    overflow it: :func:`refused` then checks each gradient exactly, off the hot path.
    """
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for grad in grads:
        groups.setdefault((grad.device, grad.dtype), []).append(grad)
    return [norm for tensors in groups.values() for norm in torch._foreach_norm(tensors)]


def _broken(item: Pending) -> Tensor:
    """The mask of the item's non-finite losses, padding left out."""
    broken = ~torch.isfinite(item.losses)
    return broken if item.valid is None else broken & item.valid


def _together(flags: Tensor, group: Any) -> Tensor:
    """``flags`` (bool) or-ed over the ranks under torch.distributed (an all-reduce MAX)."""
    if _distributed.ranks(group) <= 1:
        return flags
    flags = flags.int()
    dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=group)
    return flags.bool()


def hot_total(pending: list[Pending], norms: list[Tensor]) -> Tensor | None:
    """The 0-d float32 sum of the objectives and the gradient norms, the value the hot path tests
    (None when there is nothing to check): one stack, one sum.

    It is not finite when any of them is not (NaN and inf carry through a sum), and also when
    finite values overflow float32: :func:`refused` then looks at each loss and gradient.
    """
    values = [item.objective for item in pending] + norms
    if not values:
        return None
    device = values[0].device
    return torch.stack([v if v.device == device else v.to(device) for v in values]).sum(dtype=torch.float32)


def skip_on_device(optimizer: torch.optim.Optimizer, total: Tensor, group: Any) -> Tensor:
    """Hand "``total`` is not finite" (or-ed over the ranks) to a fused optimizer as GradScaler
    does, as its ``found_inf``: its kernels then skip the update on the device, with no host read.
    Returns that flag; the caller removes ``optimizer.found_inf`` after the step."""
    flag = _together(total.isfinite().logical_not(), group)
    optimizer.found_inf = flag.float()  # type: ignore[attr-defined]
    return flag


def refused(
    policy: str,
    pending: list[Pending],
    norms: list[Tensor],
    group: Any,
    param_groups: list[dict[str, Any]],
) -> bool:
    """True when the update must be skipped (``policy="skip"``); raises under ``"raise"``.

    ``pending``: the objectives whose gradients the update applies; ``norms``: the gradients'
    norms from :func:`grad_norms` or clipping (empty when the gradients are not checked here,
    e.g. a GradScaler checks them). A refused update leaves the parameters and the optimizer
    state as they were and sets the gradients to None (they hold the NaN/inf).
    """
    total = None if policy == "unchecked" else hot_total(pending, norms)
    if total is None:
        return False
    if _distributed.ranks(group) > 1:
        dist.all_reduce(total, group=group)  # a sum: NaN and inf carry over the ranks
    if math.isfinite(total.item()):  # the one host read of a step
        return False
    broken = [_broken(item) for item in pending]
    grads = grads_of(param_groups) if norms else []
    grads_broken = any(not bool(torch.isfinite(grad).all()) for grad in grads)
    local = [any(bool(b.any()) for b in broken), grads_broken]
    losses_anywhere, grads_anywhere = _together(torch.tensor(local, device=total.device), group).tolist()
    if not (losses_anywhere or grads_anywhere):
        return False  # finite losses whose objective overflowed: the step goes on, as a plain one would
    for param in (p for g in param_groups for p in g["params"]):
        param.grad = None
    if policy == "skip":
        return True
    indices = [b.nonzero().flatten()[:8].tolist() for b in broken if b.any()]
    if indices:
        what = f"losses contain NaN or inf (at indices {indices[0]}...)"
    elif losses_anywhere:
        what = "losses contain NaN or inf on another rank; none here"
    elif grads_broken:
        what = (
            "the gradients contain NaN or inf although the losses are finite (0 * NaN in backward: "
            "a NaN or inf computed where a torch.where or a mask later drops it, sqrt or log at 0)"
        )
    else:
        what = "the gradients contain NaN or inf on another rank; none here"
    raise ValueError(
        f"{what}: the step was refused. The parameters and the optimizer state were not changed; "
        "the gradients were set to None. Lower the learning rate, check the inputs (mask NaN "
        "before the operation that makes it, not after), or pass nonfinite='skip' to skip such steps"
    )
