"""CUDA behaviour: zero host synchronisation per step, CUDA graphs and compiled steps equal eager.

These run only where a GPU is present (CI has none); on the CPU, tests/test_no_sync.py shows the
same property on the meta device.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sigua_optim import SIGUAOptimizer, functional
from sigua_optim.conditions import AllGood, BandSelected, KnownClean, SmallLoss

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CONDITIONS = {
    "all-good": AllGood(),
    "small-loss": SmallLoss(0.3, warmup_epochs=0),
    "band": BandSelected(0.3, 0.2, warmup_epochs=0),
    "band-official": BandSelected(0.3, 0.5, warmup_epochs=0, semantics="official"),
    "known-clean": KnownClean(),
}


def _model_and_batch(n: int = 256) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)).cuda()
    x, y = torch.randn(n, 32, device="cuda"), torch.randint(0, 10, (n,), device="cuda")
    return model, x, y, torch.rand(n, device="cuda") < 0.7


@pytest.mark.parametrize("name", list(CONDITIONS))
def test_unchecked_step_has_no_host_sync(name: str) -> None:
    model, x, y, clean = _model_and_batch()
    opt = SIGUAOptimizer(torch.optim.Adam(model.parameters()), CONDITIONS[name], 0.01, nonfinite="unchecked")
    opt.step(F.cross_entropy(model(x), y, reduction="none"), clean=clean)  # warm-up: lazy state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            opt.zero_grad()
            opt.step(F.cross_entropy(model(x), y, reduction="none"), clean=clean)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_the_default_nonfinite_check_is_one_sync() -> None:
    model, x, y, _ = _model_and_batch()
    opt = SIGUAOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), AllGood(), 0.01)
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError, match="synchroniz"):
            opt.step(F.cross_entropy(model(x), y, reduction="none"))
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("name", ["small-loss", "band", "band-official"])
def test_cuda_graph_replay_equals_eager(name: str) -> None:
    condition = CONDITIONS[name]
    losses = torch.rand(4096, device="cuda")

    def select_and_reduce(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        good, bad = condition(values)
        return functional.sigua_objective(values, good, bad, 0.01), good, bad

    want = select_and_reduce(losses)
    static = losses.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        select_and_reduce(static)  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = select_and_reduce(static)
    static.copy_(losses)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured[1], want[1]) and torch.equal(captured[2], want[2])
    torch.testing.assert_close(captured[0], want[0])


def test_reduce_overhead_compile_equals_eager() -> None:
    condition = CONDITIONS["band"]

    def select_and_reduce(values: torch.Tensor) -> torch.Tensor:
        good, bad = condition(values.detach())
        return functional.sigua_objective(values, good, bad, 0.01)

    compiled = torch.compile(select_and_reduce, mode="reduce-overhead", fullgraph=True)
    for seed in range(3):
        losses = torch.rand(1000, device="cuda", generator=torch.Generator("cuda").manual_seed(seed))
        torch.testing.assert_close(compiled(losses), select_and_reduce(losses))
