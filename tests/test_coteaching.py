"""Co-teaching through the library: ``Peer`` selects with the peer network's losses."""

from __future__ import annotations

import copy
import datetime
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from sigua_optim import SIGUAOptimizer, reference
from sigua_optim.conditions import AllGood, BandSelected, Peer, SmallLoss
from sigua_optim.testing import assert_matches_reference, loss_vectors

noise_rates = st.one_of(st.sampled_from([0.0, 0.5, 0.999]), st.floats(0.0, 0.999))
epochs = st.one_of(st.sampled_from([0.0, 1.0, 9.0, 10.0, 200.0]), st.floats(0.0, 300.0))
warmups = st.sampled_from([0.0, 1.0, 10.0, 2.5])


@st.composite
def loss_pairs(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    """Two networks' losses on the same batch (the same length, dtype and sampling of ties)."""
    own = draw(loss_vectors())
    peer = draw(loss_vectors(min_size=own.shape[0], max_size=own.shape[0]))
    return own, peer.to(own.dtype)


@given(loss_pairs(), noise_rates, epochs, warmups)
def test_peer_small_loss_is_co_teaching(
    pair: tuple[torch.Tensor, torch.Tensor], eps: float, epoch: float, warmup: float
) -> None:
    """Both networks' selections equal the literal loop of Co-teaching's Algorithm 1."""
    losses_f, losses_g = pair
    cond_f, cond_g = Peer(SmallLoss(eps, warmup)), Peer(SmallLoss(eps, warmup))
    for cond in (cond_f, cond_g):
        cond.set_epoch(epoch)
    update_f, update_g = reference.co_teaching(
        losses_f.double().tolist(), losses_g.double().tolist(), eps, epoch, warmup
    )
    assert cond_f(losses_f, peer_losses=losses_g).good.tolist() == update_f
    assert cond_g(losses_g, peer_losses=losses_f).good.tolist() == update_g


@given(loss_pairs(), noise_rates, st.data(), epochs, warmups, st.sampled_from(["paper", "official"]))
def test_peer_band_matches_the_reference_and_algorithm1(
    pair: tuple[torch.Tensor, torch.Tensor],
    eps: float,
    data: st.DataObject,
    epoch: float,
    warmup: float,
    semantics: str,
) -> None:
    """Co-teaching + SIGUA: the band above the peer's small-loss set, and Eq. 3 on our losses."""
    own, peer = pair
    limit = eps if semantics == "paper" else 1.0
    band = data.draw(st.floats(0.0, limit), label="band")
    cond = Peer(BandSelected(eps, band, warmup, semantics=semantics))  # type: ignore[arg-type]
    cond.set_epoch(epoch)
    assert_matches_reference(cond, own, gamma=0.01, peer_losses=peer)


def test_peer_needs_peer_losses_and_names_it() -> None:
    cond = Peer(SmallLoss(0.5, 0))
    with pytest.raises(ValueError, match="peer_losses="):
        cond(torch.rand(4))
    with pytest.raises(ValueError, match="peer_losses= must have one entry per loss"):
        cond(torch.rand(4), peer_losses=torch.rand(3))
    with pytest.raises(TypeError, match="peer_losses= must be floating point"):
        cond(torch.rand(4), peer_losses=torch.arange(4))
    with pytest.raises(TypeError, match="condition must be a condition instance"):
        Peer(SmallLoss)


def test_optimizer_refuses_a_misspelled_peer_input_before_anything_changes() -> None:
    model = torch.nn.Linear(3, 2)
    opt = SIGUAOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), Peer(SmallLoss(0.5, 0)))
    before = copy.deepcopy(model.state_dict())
    losses = F.cross_entropy(model(torch.randn(6, 3)), torch.randint(0, 2, (6,)), reduction="none")
    with pytest.raises(TypeError, match="peer_loss="):
        opt.step(losses, peer_loss=losses.detach())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_two_optimizers_train_each_network_on_its_peers_selection() -> None:
    """One Co-teaching step: each network's gradient is that of its peer-selected mean."""
    torch.manual_seed(0)
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    f, g = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    opt_f = SIGUAOptimizer(torch.optim.SGD(f.parameters(), lr=0.1), Peer(SmallLoss(0.5, 0)))
    opt_g = SIGUAOptimizer(torch.optim.SGD(g.parameters(), lr=0.1), Peer(SmallLoss(0.5, 0)))
    loss_f = F.cross_entropy(f(x), y, reduction="none")
    loss_g = F.cross_entropy(g(x), y, reduction="none")
    picked_f = SmallLoss(0.5, 0)(loss_g.detach()).good  # what f trains on: g's small losses
    expected = torch.autograd.grad((loss_f * picked_f).sum() / 8, f.weight, retain_graph=True)[0]
    result = opt_f.step(loss_f, peer_losses=loss_g.detach())
    opt_g.step(loss_g, peer_losses=loss_f.detach())
    assert torch.equal(result.good, picked_f)
    torch.testing.assert_close(f.weight.grad, expected)


def test_checkpoint_stores_the_wrapped_condition_and_refuses_another() -> None:
    model = torch.nn.Linear(3, 2)
    opt = SIGUAOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), Peer(SmallLoss(0.5, 10)))
    opt.set_epoch(4)
    state = opt.state_dict()
    same = SIGUAOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), Peer(SmallLoss(0.5, 10)))
    same.load_state_dict(state)
    assert same.condition.condition.epoch == 4  # type: ignore[attr-defined]
    other = SIGUAOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), Peer(SmallLoss(0.2, 10)))
    with pytest.raises(ValueError, match="peer_of"):
        other.load_state_dict(state)
    plain = SIGUAOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), Peer(AllGood()))
    with pytest.raises(ValueError, match="peer_of"):
        plain.load_state_dict(state)


def _peer_rank(rank: int, port: int, out: str, sizes: tuple[int, int]) -> None:
    """One rank of a 2-rank gloo world: both networks' Co-teaching selections on its slice."""
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
        timeout=datetime.timedelta(seconds=60),
    )  # fmt: skip
    try:
        own, peer = _two_networks_losses(sizes)
        start = sum(sizes[:rank])
        part = slice(start, start + sizes[rank])
        w = torch.ones(1, requires_grad=True)  # a parameter for the losses to depend on
        f, g = (SIGUAOptimizer(torch.optim.SGD([w]), Peer(SmallLoss(0.4, 0))) for _ in "fg")
        chosen_f = f.step(own[part] * w, peer_losses=peer[part]).good
        chosen_g = g.step(peer[part] * w, peer_losses=own[part]).good
        torch.save({"f": chosen_f, "g": chosen_g}, f"{out}/rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    os._exit(0)  # see tests/test_distributed.py: gloo's teardown at exit may abort


def _two_networks_losses(sizes: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    offset = torch.cat([torch.zeros(sizes[0]), torch.ones(sizes[1])])  # rank 1's peer losses are larger
    return torch.rand(sum(sizes), generator=g), torch.rand(sum(sizes), generator=g) + offset


def test_co_teaching_selects_globally_under_distributed(tmp_path: Path) -> None:
    """peer_losses= is gathered with the losses: 2 ranks select as one process on the whole batch."""
    sizes = (9, 6)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_peer_rank, args=(port, str(tmp_path), sizes), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    own, peer = _two_networks_losses(sizes)
    whole_f, whole_g = reference.co_teaching(own.tolist(), peer.tolist(), 0.4, 0.0, 0.0)
    assert torch.cat([r["f"] for r in ranks]).tolist() == whole_f
    assert torch.cat([r["g"] for r in ranks]).tolist() == whole_g
    local = Peer(SmallLoss(0.4, 0))(own[:9], peer_losses=peer[:9]).good.tolist()
    assert local != whole_f[:9]  # the premise: selecting per rank would differ
