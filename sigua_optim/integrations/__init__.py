"""SIGUA inside training frameworks: Hugging Face ``Trainer``, Lightning, Accelerate.

- :mod:`sigua_optim.integrations.transformers`: ``SIGUATrainer``, ``SIGUALoss`` (a
  ``compute_loss_func``) and ``SIGUAEpochCallback`` for ``transformers.Trainer``.
- :mod:`sigua_optim.integrations.lightning`: ``manual_step``, ``log_selection`` and
  ``SIGUAEpochCallback`` for ``lightning.pytorch``.
- Accelerate needs no glue: ``accelerator.prepare`` wraps a :class:`~sigua_optim.SIGUAOptimizer`
  like any optimizer (``docs/integrations.md``).

Each framework module checks the framework's version when it is imported and raises ImportError
naming the version to install; ``pip install "sigua-optim[integrations]"`` installs all three.
This package itself imports no framework.
"""

from __future__ import annotations

import importlib.metadata
import re
import warnings
import weakref
from typing import Any

from ..optimizer import SIGUAOptimizer

__all__ = ["sigua_optimizer"]


def sigua_optimizer(optimizer: Any) -> SIGUAOptimizer:
    """The :class:`~sigua_optim.SIGUAOptimizer` inside a framework's optimizer wrapper.

    Accelerate's ``AcceleratedOptimizer``, Lightning's ``LightningOptimizer`` and DeepSpeed's
    wrappers keep the optimizer they wrap as ``.optimizer``; this follows that chain.

    Example:
        >>> import torch
        >>> opt = SIGUAOptimizer(torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1))
        >>> class Wrapper:  # what a framework does
        ...     def __init__(self, optimizer): self.optimizer = optimizer
        >>> sigua_optimizer(Wrapper(opt)) is opt
        True
    """
    found = optimizer
    while not isinstance(found, SIGUAOptimizer):
        inner = getattr(found, "optimizer", None)
        if inner is None or inner is found:
            raise TypeError(
                f"no SIGUAOptimizer inside {type(optimizer).__name__}: give the framework "
                "SIGUAOptimizer(torch.optim.AdamW(model.parameters()), condition=..., gamma=...) "
                "as its optimizer"
            )
        found = inner
    return found


_WARNED: weakref.WeakSet[SIGUAOptimizer] = weakref.WeakSet()


def _schedule_logs(optimizer: SIGUAOptimizer) -> dict[str, float]:
    r"""Where the optimizer's schedule is: ``sigua_epoch`` and ``sigua_keep_rate`` (no host read).

    ``sigua_keep_rate`` is :math:`\rho(t)` of Eq. 4, given for conditions with a ``rate``
    (``SmallLoss``, ``BandSelected``).
    """
    logs = {"sigua_epoch": optimizer.epoch}
    rate = getattr(optimizer.condition, "rate", None)
    if isinstance(rate, float):
        logs["sigua_keep_rate"] = rate
    return logs


def _warn_if_epoch_stuck(optimizer: SIGUAOptimizer, epoch: float, fix: str) -> None:
    """Warn when the framework is past its first epoch but the optimizer's epoch never moved.

    A condition that follows the epoch (one with ``set_epoch``) then stays at its epoch-0
    schedule: for ``SmallLoss`` / ``BandSelected`` every sample is good and SIGUA is plain
    training. ``fix`` says what to add. Once per optimizer.
    """
    scheduled = callable(getattr(optimizer.condition, "set_epoch", None))
    if epoch >= 1 and optimizer.epoch == 0 and scheduled and optimizer not in _WARNED:
        _WARNED.add(optimizer)
        warnings.warn(
            f"the SIGUAOptimizer is still at epoch 0 in epoch {epoch:g} of training, so its "
            f"condition {optimizer.condition!r} never left its epoch-0 schedule (with a warm-up, "
            f"no sample is bad): {fix}",
            UserWarning,
            stacklevel=3,
        )


def _release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string: '4.46.0.dev0' -> (4, 46, 0)."""
    match = re.match(r"\d+(\.\d+)*", version)
    return tuple(int(part) for part in match.group().split(".")) if match else ()


def require(distribution: str, minimum: str, module: str) -> None:
    """Raise ImportError unless ``distribution >= minimum`` is installed; say what to install."""
    try:
        found = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise ImportError(
            f"{module} needs {distribution}>={minimum}, which is not installed: "
            f'pip install "sigua-optim[integrations]" (or pip install "{distribution}>={minimum}")'
        ) from None
    if _release(found) < _release(minimum):
        raise ImportError(
            f"{module} needs {distribution}>={minimum}, but {distribution} {found} is installed: "
            f'pip install -U "{distribution}>={minimum}"'
        )
