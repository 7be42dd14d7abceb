"""Global selection under torch.distributed: 2 processes (gloo, CPU) equal one process on the
concatenated batch — masks, objective, gradients after DDP's all-reduce, and the update."""

from __future__ import annotations

import datetime
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from sigua_optim import SIGUAOptimizer
from sigua_optim.conditions import BandSelected

WORLD = 2


def model_and_data(sizes: tuple[int, ...]) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    g = torch.Generator().manual_seed(1)
    total = sum(sizes)
    return (
        model,
        torch.randn(total, 5, generator=g, dtype=torch.float64),
        torch.randint(0, 3, (total,), generator=g),
    )


def make_optimizer(
    model: torch.nn.Module, scope: str, nonfinite: str = "raise", reduction: str = "paper"
) -> SIGUAOptimizer:
    condition = BandSelected(0.4, 0.3, warmup_epochs=0)
    base = torch.optim.SGD(model.parameters(), lr=0.5)
    return SIGUAOptimizer(
        base,
        condition,
        0.2,
        selection_scope=scope,  # type: ignore[arg-type]
        nonfinite=nonfinite,  # type: ignore[arg-type]
        reduction=reduction,  # type: ignore[arg-type]
    )


def worker(
    rank: int,
    port: int,
    out: str,
    sizes: tuple[int, ...],
    scope: str,
    nonfinite: str,
    poison: bool,
    reduction: str,
) -> None:
    """One rank's step, saved to ``out``; with ``poison``, rank 1 alone has a NaN loss. Records
    the number of all-gathers the step ran."""
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),  # a rank left waiting fails the test, not hangs it
    )
    try:
        model, x, y = model_and_data(sizes)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        opt = make_optimizer(ddp, scope, nonfinite, reduction)
        all_gather, gathers = dist.all_gather, []
        dist.all_gather = lambda *a, **k: gathers.append(1) or all_gather(*a, **k)  # type: ignore[assignment]
        start = sum(sizes[:rank])
        part = slice(start, start + sizes[rank])
        losses = F.cross_entropy(ddp(x[part]), y[part], reduction="none")
        if poison and rank == 1:
            losses = losses * torch.tensor([float("nan")] + [1.0] * (sizes[rank] - 1), dtype=losses.dtype)
        record: dict[str, object] = {}
        try:
            result = opt.step(losses)
            record |= result._asdict()
        except ValueError as error:
            record["error"] = str(error)
        dist.all_gather = all_gather
        record["gathers"] = len(gathers)
        record["grads"] = [p.grad for p in model.parameters()]
        record["params"] = [p.detach().clone() for p in model.parameters()]
        torch.save(record, f"{out}/rank{rank}.pt")
        dist.barrier()  # both ranks done before either tears the group down
    finally:
        dist.destroy_process_group()
    # torch 2.13's gloo aborts now and then in its C++ teardown at interpreter exit ("terminate
    # called without an active exception"), with plain DDP and no SIGUA as well: the results are
    # on disk, so leave without running those destructors.
    os._exit(0)


def run_world(
    tmp_path: Path,
    sizes: tuple[int, ...],
    scope: str,
    nonfinite: str = "raise",
    poison: bool = False,
    reduction: str = "paper",
) -> list[dict[str, object]]:
    with socket.socket() as probe:  # a free port on the loopback interface
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(
        worker,
        args=(port, str(tmp_path), sizes, scope, nonfinite, poison, reduction),
        nprocs=WORLD,
        join=True,
    )
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("reduction", ["paper", "official"])
@pytest.mark.parametrize("sizes", [(12, 12), (12, 7)])
def test_global_selection_equals_one_process_on_the_concatenated_batch(
    tmp_path: Path, sizes: tuple[int, int], reduction: str
) -> None:
    """Also with the official reduction: its group means divide by the global group counts."""
    ranks = run_world(tmp_path, sizes, "global", reduction=reduction)
    assert [r["gathers"] for r in ranks] == [2, 2]  # the sizes and the losses: no mask without valid=
    model, x, y = model_and_data(sizes)  # one process, the concatenated batch, no process group
    whole = make_optimizer(model, "global", reduction=reduction).step(
        F.cross_entropy(model(x), y, reduction="none")
    )
    assert torch.cat([r["good"] for r in ranks]).tolist() == whole.good.tolist()  # type: ignore[misc]
    assert torch.cat([r["bad"] for r in ranks]).tolist() == whole.bad.tolist()  # type: ignore[misc]
    fresh, starts = model_and_data(sizes)[0], (0, sizes[0])
    local = [
        BandSelected(0.4, 0.3, warmup_epochs=0)(
            F.cross_entropy(fresh(x[a : a + n]), y[a : a + n], reduction="none").detach()
        ).good.tolist()
        for a, n in zip(starts, sizes, strict=True)
    ]
    assert local != [r["good"].tolist() for r in ranks]  # type: ignore[attr-defined]  # global differs from local
    # Each rank's objective is its share times the world size; their mean is Eq. 3 of the whole.
    mean_objective = sum(float(r["objective"]) for r in ranks) / WORLD  # type: ignore[arg-type]
    assert mean_objective == pytest.approx(float(whole.objective), rel=1e-12)
    for r in ranks:  # gradients after DDP's all-reduce, and the parameters after the step
        for got, want in zip(r["grads"], model.parameters(), strict=True):  # type: ignore[call-overload]
            torch.testing.assert_close(got, want.grad)
        for got, want in zip(r["params"], model.parameters(), strict=True):  # type: ignore[call-overload]
            torch.testing.assert_close(got, want.detach())


def test_local_selection_selects_within_each_rank(tmp_path: Path) -> None:
    sizes = (10, 10)
    ranks = run_world(tmp_path, sizes, "local")
    model, x, y = model_and_data(sizes)
    for rank, r in enumerate(ranks):
        part = slice(rank * 10, rank * 10 + 10)
        want = BandSelected(0.4, 0.3, warmup_epochs=0)(
            F.cross_entropy(model(x[part]), y[part], reduction="none").detach()
        )
        assert r["good"].tolist() == want.good.tolist()  # type: ignore[attr-defined]


@pytest.mark.parametrize("scope", ["global", "local"])
@pytest.mark.parametrize("nonfinite", ["skip", "raise"])
def test_a_nan_on_one_rank_stops_every_rank(tmp_path: Path, scope: str, nonfinite: str) -> None:
    """Rank 1 alone has a NaN loss: both ranks skip (or both raise), and no rank waits in DDP."""
    ranks = run_world(tmp_path, (8, 8), scope, nonfinite, poison=True)
    initial = model_and_data((8, 8))[0]
    for rank, r in enumerate(ranks):
        if nonfinite == "skip":
            assert r["skipped"] is True
        else:
            assert ("at indices [0]" if rank == 1 else "on another rank") in str(r["error"])
        assert all(g is None for g in r["grads"])  # type: ignore[attr-defined]
        for got, want in zip(r["params"], initial.parameters(), strict=True):  # type: ignore[call-overload]
            assert torch.equal(got, want.detach())
