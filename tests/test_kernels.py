"""The fused Triton kernels against the torch ops they replace (on a GPU, or in Triton's
interpreter on the CPU: see conftest.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sigua_optim import _kernels as kernels
from sigua_optim import functional
from sigua_optim.testing import _tolerance, loss_vectors, rates

pytestmark = pytest.mark.skipif(not kernels.AVAILABLE, reason="needs Triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
HALF_AND_FLOAT = (torch.float16, torch.bfloat16, torch.float32)


def torch_masks(losses: torch.Tensor, ms: list[int]) -> list[torch.Tensor]:
    """The same masks by the torch ops (an order statistic per bound, on the CPU); each bound
    m >= 0 given as the rate (m + 1/2) / n, whose floor(n * rate) is m whatever the rounding."""
    n = losses.shape[0]
    return functional._rank_at_most(losses.cpu(), tuple(((m + 0.5) / n,) for m in ms), None)


@settings(max_examples=200)
@given(loss_vectors(dtypes=HALF_AND_FLOAT), rates(), rates(), st.booleans())
def test_rank_masks_equal_eq5s_pairwise_count(
    losses: torch.Tensor, rate: float, band: float, two: bool
) -> None:
    n = losses.shape[0]
    ms = [int(n * rate) - 1, int(n * (rate + band))][: 2 if two else 1]  # -1 and >= n included
    got = kernels.rank_masks(losses.to(DEVICE), ms)
    below = (losses[None, :] < losses[:, None]).sum(dim=1)  # Eq. 5's count, n x n
    for mask, m in zip(got, ms, strict=True):
        assert mask.cpu().tolist() == (below <= m).tolist()


@pytest.mark.parametrize("n", [1, 15, 16, 17, 1000, kernels.MAX_FUSED])
@pytest.mark.parametrize("dtype", HALF_AND_FLOAT)
def test_rank_masks_at_every_block_size(n: int, dtype: torch.dtype) -> None:
    """Sizes around the 16-loss chunk and up to MAX_FUSED, with many ties: the kernel's masks
    equal those of the torch ops (order statistics)."""
    losses = (torch.randint(0, 9, (n,), generator=torch.Generator().manual_seed(n)) / 3).to(dtype)
    ms = [n // 2, (3 * n) // 4]
    got = kernels.rank_masks(losses.to(DEVICE), ms)
    for mask, want in zip(got, torch_masks(losses, ms), strict=True):
        assert torch.equal(mask.cpu(), want)


@settings(max_examples=200)
@given(loss_vectors(dtypes=HALF_AND_FLOAT), st.data(), st.floats(0.0, 1.0))
def test_objective_and_gradient_equal_the_torch_reduction(
    losses: torch.Tensor, data: st.DataObject, gamma: float
) -> None:
    n = losses.shape[0]
    good = torch.tensor(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    bad = torch.tensor(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))  # may overlap good
    divisor = data.draw(st.sampled_from([n, n + 7, 3 * n]), label="divisor")
    leaf = losses.to(DEVICE, copy=True).requires_grad_(True)
    got = kernels.objective(leaf, good.to(DEVICE), bad.to(DEVICE), gamma, divisor)
    (got_grad,) = torch.autograd.grad(got, leaf)
    reference = losses.clone().requires_grad_(True)
    want = functional.sigua_objective(reference, good, bad, gamma, "paper", divisor)
    (want_grad,) = torch.autograd.grad(want, reference)
    assert got.dtype == losses.dtype and got_grad.dtype == losses.dtype
    # The sums run in other orders: equal within float32 accumulation over the terms.
    exact = float((losses.double() * want_grad.double()).sum())
    assert abs(float(got.detach()) - float(want.detach())) <= 2 * _tolerance(
        losses.double().tolist(), exact, losses.dtype
    )
    torch.testing.assert_close(got_grad.cpu(), want_grad)


def _on_a_gpu(n: int, dtype: torch.dtype) -> torch.Tensor:
    """What ``fusable`` reads of a CUDA tensor, so that its rule is tested without a GPU."""
    return SimpleNamespace(is_cuda=True, shape=(n,), dtype=dtype)  # type: ignore[return-value]


def test_fusable_only_takes_small_half_or_float32_batches_on_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not kernels.fusable(torch.zeros(8))  # CPU: the torch ops
    for dtype in HALF_AND_FLOAT:
        assert kernels.fusable(_on_a_gpu(1, dtype)) and kernels.fusable(_on_a_gpu(kernels.MAX_FUSED, dtype))
        assert not kernels.fusable(_on_a_gpu(kernels.MAX_FUSED + 1, dtype))
    assert not kernels.fusable(_on_a_gpu(8, torch.float64))
    monkeypatch.setattr(kernels, "AVAILABLE", False)
    assert not kernels.fusable(_on_a_gpu(8, torch.float32))
    monkeypatch.undo()
    if torch.cuda.is_available():
        assert kernels.fusable(torch.zeros(8, device="cuda", dtype=torch.bfloat16))
        assert not kernels.fusable(torch.zeros(8, device="cuda", dtype=torch.float64))
        assert not kernels.fusable(torch.zeros(kernels.MAX_FUSED + 1, device="cuda"))
