"""Global selection under torch.distributed: one selection over the batches of all ranks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from .conditions.base import Selection

AVAILABLE = dist.is_available()  # a property of the torch build

Select = Callable[[Tensor, "Tensor | None", dict[str, Any]], Selection]


class Divisors(NamedTuple):
    """The global counts of a selection over the world size (each rank's share of them).

    DDP and FSDP average the ranks' gradients, so a rank dividing by ``count / world`` makes
    the average divide by ``count``, as one process would over the concatenated batch.
    """

    total: Tensor  # n_b of Eq. 3: every (valid) sample
    good: Tensor  # the good group, for the official reduction's mean
    bad: Tensor  # the bad (and not good) group


def ranks(group: Any) -> int:
    """Ranks of ``group`` under an initialised torch.distributed; 1 without one."""
    if not AVAILABLE or not dist.is_initialized():
        return 1
    return int(dist.get_world_size(group))


def select_globally(
    select: Select, losses: Tensor, valid: Tensor | None, inputs: dict[str, Any], group: Any
) -> tuple[Selection, Divisors]:
    """Select over the batches of all ranks, as one process would over their concatenation.

    The losses, every per-sample input and (only with ``valid=``) the valid mask are
    all-gathered, padded to the largest local batch; ``select`` runs on the whole; each rank
    keeps its slice. Costs one all-gather of the local sizes (read back: the gathered shapes
    depend on them), one of the losses, one per per-sample input and one of ``valid``.
    """
    world, rank = ranks(group), dist.get_rank(group)
    n, device = losses.shape[0], losses.device
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([n], device=device), group=group)
    counts = [int(size) for size in sizes]  # host read: the gathered shapes depend on it
    width = max(counts)

    def gather(value: Tensor) -> Tensor:
        padded = value.new_zeros((width, *value.shape[1:]))
        padded[:n] = value
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous(), group=group)
        return torch.cat(parts)

    shared = {
        name: gather(value) if isinstance(value, Tensor) and value.shape[:1] == (n,) else value
        for name, value in inputs.items()
        if name != "valid"
    }
    everyone: Tensor | None = None
    total = torch.tensor(float(sum(counts)), dtype=torch.float64, device=device)
    if valid is not None:
        everyone = gather(valid)
        total = everyone.sum().double().clamp_min(1)
    elif len(set(counts)) > 1:  # the padding of the shorter batches, known from the sizes
        slots = torch.arange(width, device=device)
        everyone = torch.cat([slots < count for count in counts])
    if everyone is not None:
        shared["valid"] = everyone
    whole = select(gather(losses.detach()), everyone, shared)
    start = rank * width
    local = Selection(whole.good[start : start + n], whole.bad[start : start + n])
    good = whole.good.sum().clamp_min(1).double() / world  # an empty group weighs nothing
    bad = (whole.bad > whole.good).sum().clamp_min(1).double() / world
    return local, Divisors(total / world, good, bad)


def official_objective(losses: Tensor, good: Tensor, bad: Tensor, gamma: float, divisors: Divisors) -> Tensor:
    r"""The official reduction with the global group counts: :math:`\sum_{good}\ell / n_{good}
    - \gamma \sum_{bad}\ell / n_{bad}` over this rank's losses, each count the global one over
    the world size."""
    acc = torch.promote_types(losses.dtype, torch.float32)
    weights = good.to(acc) / divisors.good.to(acc) - gamma * (bad > good).to(acc) / divisors.bad.to(acc)
    return torch.dot(losses.to(acc), weights).to(losses.dtype)
