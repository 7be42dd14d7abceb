"""CUDA behaviour: zero host synchronisation per step, CUDA graphs and compiled steps equal eager.

These run only where a GPU is present (CI has none); on the CPU, tests/test_no_sync.py shows the
same property on the meta device.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from sigua_optim import SIGUAOptimizer, functional
from sigua_optim import _kernels as kernels
from sigua_optim.conditions import AllGood, BandSelected, KnownClean, NonNegativeCorrection, SmallLoss
from sigua_optim.losses import backward_corrected_cross_entropy
from sigua_optim.noise import symmetric
from sigua_optim.testing import assert_matches_reference, loss_vectors

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


@settings(max_examples=300)
@given(loss_vectors(), st.data(), st.sampled_from(["fused", "kthvalue", "sort"]))
def test_selection_on_cuda_equals_the_reference_loop(
    losses: torch.Tensor, data: st.DataObject, path: str
) -> None:
    """Ties, one sample, all equal, extremes, every dtype: each CUDA path (the fused kernels up
    to ``MAX_FUSED`` losses, ``torch.kthvalue``, one sort from ``DEVICE_SORT_MIN`` losses on, the
    sort-based count with ``valid=``) equals Algorithm 1's loop."""
    eps = data.draw(st.one_of(st.sampled_from([0.0, 0.5, 0.999]), st.floats(0.0, 0.999)), label="eps")
    semantics = data.draw(st.sampled_from(["paper", "official"]), label="semantics")
    band = data.draw(st.floats(0.0, eps if semantics == "paper" else 1.0), label="band")
    condition = data.draw(
        st.sampled_from(
            [SmallLoss(eps, 0, semantics=semantics), BandSelected(eps, band, 0, semantics=semantics)]  # type: ignore[arg-type]
        ),
        label="condition",
    )
    inputs = {}
    n = losses.shape[0]
    if semantics == "paper" and data.draw(st.booleans(), label="per-token"):
        valid = torch.tensor(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
        valid[data.draw(st.integers(0, n - 1))] = True
        inputs["valid"] = valid.cuda()
    reduction = data.draw(st.sampled_from(["paper", "official"]), label="reduction")
    with pytest.MonkeyPatch.context() as patch:  # hypothesis draws the path per example
        if path == "sort":
            patch.setattr(functional, "DEVICE_SORT_MIN", 0)
        if path != "fused":
            patch.setattr(kernels, "MAX_FUSED", 0)
        assert_matches_reference(condition, losses.cuda(), gamma=0.01, reduction=reduction, **inputs)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_large_batches_on_cuda_select_as_the_cpu(dtype: torch.dtype) -> None:
    """Above DEVICE_SORT_MIN (one sort on the GPU) and above HOST_MIN_SIZE (numpy on the CPU),
    with many ties: the same masks, for both semantics."""
    generator = torch.Generator().manual_seed(0)
    n = 3 * functional.DEVICE_SORT_MIN + 7
    losses = (torch.randint(0, 50, (n,), generator=generator) / 7 + torch.rand(n, generator=generator)).to(
        dtype
    )
    losses[::5] = losses[0]  # one loss shared by a fifth of the batch
    for condition in (
        SmallLoss(0.4, 0),
        BandSelected(0.4, 0.3, 0),
        SmallLoss(0.4, 0, semantics="official"),
        BandSelected(0.4, 0.3, 0, semantics="official"),
    ):
        on_cpu, on_gpu = condition(losses), condition(losses.cuda())
        assert torch.equal(on_gpu.good.cpu(), on_cpu.good) and torch.equal(on_gpu.bad.cpu(), on_cpu.bad)


@settings(max_examples=50)
@given(st.integers(1, 64), st.integers(0, 99), st.sampled_from(["sample", "total"]))
def test_nonnegative_correction_on_cuda_equals_the_reference_loop(n: int, seed: int, criterion: str) -> None:
    transition = symmetric(4, 0.4)
    generator = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, 4, generator=generator) * 5).cuda()
    targets = torch.randint(0, 4, (n,), generator=generator).cuda()
    losses = backward_corrected_cross_entropy(logits, targets, transition)
    condition = NonNegativeCorrection(transition, criterion=criterion)  # type: ignore[arg-type]
    assert_matches_reference(condition, losses, gamma=1.0, logits=logits, targets=targets)


def test_a_whole_step_captured_in_a_cuda_graph_equals_eager_steps() -> None:
    """Forward, selection, Eq. 3, backward and a capturable Adam step in one CUDA graph: its
    replays on new batches give the parameters of the same steps run eagerly."""
    model, _, _, _ = _model_and_batch()
    twin = copy.deepcopy(model)
    generator = torch.Generator(device="cuda").manual_seed(1)
    batches = [
        (
            torch.randn(256, 32, device="cuda", generator=generator),
            torch.randint(0, 10, (256,), device="cuda", generator=generator),
        )
        for _ in range(6)
    ]

    def optimizer(net: torch.nn.Module) -> SIGUAOptimizer:
        adam = torch.optim.Adam(net.parameters(), lr=1e-2, capturable=True)
        return SIGUAOptimizer(adam, BandSelected(0.4, 0.2, warmup_epochs=0), 0.01, nonfinite="unchecked")

    def step(net: torch.nn.Module, opt: SIGUAOptimizer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        return opt.step(F.cross_entropy(net(x), y, reduction="none")).bad

    eager = optimizer(model)
    want = [step(model, eager, x, y) for x, y in batches]

    captured = optimizer(twin)
    static_x, static_y = batches[0][0].clone(), batches[0][1].clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # the first step runs eagerly: it creates Adam's state
        step(twin, captured, static_x, static_y)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    captured.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        static_bad = step(twin, captured, static_x, static_y)
    for (x, y), bad in zip(batches[1:], want[1:], strict=True):
        static_x.copy_(x)
        static_y.copy_(y)
        graph.replay()
        assert torch.equal(static_bad, bad)
    for got, expected in zip(twin.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(got, expected)
