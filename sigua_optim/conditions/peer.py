r"""Co-teaching (Han et al., NeurIPS 2018): each network selects with its peer's losses.

Two networks train side by side on the same mini-batches; each is updated on the samples its
*peer* finds small-loss, so that the two filter each other's errors instead of confirming their
own. With :math:`R(t) = 1 - \tau \min(t / T_k, 1)` the kept rate (Eq. 4's :math:`\rho(t)` with
:math:`\tau = \epsilon`), Co-teaching's update of network :math:`f` on a batch is

.. math::

    \bar{\mathcal{D}}_g = \arg\min_{\mathcal{D}' : |\mathcal{D}'| \ge R(t) |\bar{\mathcal{D}}|}
    \ell(g, \mathcal{D}'), \qquad f \leftarrow f - \eta \nabla \ell(f, \bar{\mathcal{D}}_g),

and the same for :math:`g` with :math:`f`'s selection. :class:`Peer` turns any condition into its
peer-selected version: ``Peer(SmallLoss(eps))`` is Co-teaching, ``Peer(BandSelected(eps))`` is
Co-teaching + SIGUA (the band just above the peer's small-loss set is ascended with
:math:`\gamma`), each with two :class:`~sigua_optim.SIGUAOptimizer`:

.. code-block:: python

    opt_f = SIGUAOptimizer(Adam(f.parameters()), Peer(SmallLoss(0.5)), gamma=0.01)
    opt_g = SIGUAOptimizer(Adam(g.parameters()), Peer(SmallLoss(0.5)), gamma=0.01)
    for x, y in loader:
        loss_f = F.cross_entropy(f(x), y, reduction="none")
        loss_g = F.cross_entropy(g(x), y, reduction="none")
        opt_f.zero_grad(); opt_g.zero_grad()
        opt_f.step(loss_f, peer_losses=loss_g.detach())
        opt_g.step(loss_g, peer_losses=loss_f.detach())

``peer_losses=`` is a per-sample input like ``clean=``: under ``torch.distributed`` with
``selection_scope="global"`` it is gathered with the losses, so the peer's ranking is global.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .._validation import accepted_inputs, check_condition
from .base import Selection, check_batch, check_mask_input


class Peer:
    r"""Select with the peer network's losses: ``Peer(c)(losses, peer_losses=l) == c(l)``.

    The wrapped condition sees ``peer_losses`` (detached) where it would see this network's own
    losses; this network's losses only enter Eq. 3's objective. Its epoch, state and
    hyperparameters are the wrapped condition's.

    Args:
        condition: the selection to run on the peer's losses, e.g. ``SmallLoss(eps)``
            (Co-teaching) or ``BandSelected(eps)`` (Co-teaching + SIGUA).

    Example:
        >>> import torch
        >>> from sigua_optim.conditions import SmallLoss
        >>> cond = Peer(SmallLoss(noise_rate=0.6, warmup_epochs=0))  # n rho = 1.6
        >>> own, peer = torch.tensor([0.1, 0.2, 3.0, 4.0]), torch.tensor([5.0, 0.3, 0.1, 6.0])
        >>> cond(own, peer_losses=peer).good  # the peer's small losses, not ours
        tensor([False,  True,  True, False])
    """

    hyperparameters = ("peer_of",)

    def __init__(self, condition: Any) -> None:
        self.condition = check_condition(condition, "condition")
        inner = accepted_inputs(self.condition)
        # the peer's losses, and what the wrapped condition takes (None: any name)
        self.inputs = None if inner is None else inner | {"peer_losses"}

    @property
    def peer_of(self) -> dict[str, Any]:
        """The wrapped condition's type and hyperparameters (what a checkpoint compares)."""
        kind = type(self.condition)
        names = getattr(self.condition, "hyperparameters", ())
        fields = {name: getattr(self.condition, name) for name in names}
        return {"type": f"{kind.__module__}.{kind.__qualname__}", **fields}

    @property
    def warmup_epochs(self) -> float:
        """The wrapped condition's :math:`T_k` (0 when it has none)."""
        return float(getattr(self.condition, "warmup_epochs", 0))

    def __call__(self, losses: Tensor, *, peer_losses: Tensor | None = None, **inputs: Any) -> Selection:
        check_batch(losses)
        peer = check_mask_input("peer_losses", peer_losses, losses, "Peer (Co-teaching)")
        if not peer.is_floating_point():
            raise TypeError(f"peer_losses= must be floating point, one loss per sample; got {peer.dtype}")
        return self.condition(peer.detach(), **inputs)  # type: ignore[no-any-return]

    def set_epoch(self, epoch: float) -> None:
        """Forward the epoch to the wrapped condition."""
        set_epoch = getattr(self.condition, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)

    def state_dict(self) -> dict[str, Any] | None:
        """The wrapped condition's state (None when it has none)."""
        state_dict = getattr(self.condition, "state_dict", None)
        return state_dict() if callable(state_dict) else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore what :meth:`state_dict` returned."""
        load = getattr(self.condition, "load_state_dict", None)
        if callable(load) and state is not None:
            load(state)

    def __repr__(self) -> str:
        return f"Peer({self.condition!r})"
