r"""Fused Triton kernels for small batches on a GPU: selection and Eq. 3 in one launch each.

At a batch of a few hundred samples a GPU step is bound by kernel launches, not by arithmetic:
in torch ops, BandSelected's selection and Eq. 3 launch 12 kernels forward and 3 backward,
where a ``mean()`` launches 4 in all. With Triton installed (PyTorch's CUDA builds bring it),
batches of up to ``MAX_FUSED`` losses on a GPU take two kernels instead, one program holding
the whole batch:

- :func:`rank_masks`: Eq. 5 to the letter. For every i, the count
  :math:`\#\{j : \ell_j < \ell_i\}` over all j (:math:`n^2` comparisons in the losses' own
  dtype, exact), against each bound m: :math:`C(i) = \mathbb{I}(\text{count}_i \le m)`.
- :func:`objective`: the weights of Eq. 3, :math:`w = (C_{good} - \gamma C_{bad}) / n_b`, with
  good winning over bad as in Algorithm 1's ``if / else if``, and :math:`\ell^\top w`, in float32;
  the weights are kept for the backward, which is one multiplication.

They are used in eager mode only (not under ``torch.compile``), for float16, bfloat16 and
float32 losses. The tests hold them against the torch ops (and so against Algorithm 1's loop)
on a GPU and, through Triton's interpreter (``TRITON_INTERPRET=1``), on the CPU.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU-only install: the torch ops do everything
    triton = None

__all__ = ["AVAILABLE", "MAX_FUSED", "fusable", "objective", "rank_masks"]

AVAILABLE = triton is not None
"""Whether Triton is installed (the fused kernels need it and a GPU)."""
MAX_FUSED = 1024
"""Batches up to this size are fused: one program, n^2 comparisons, a few microseconds."""

_CHUNK = 16  # the j-losses compared with every i-loss per loop iteration
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def fusable(losses: Tensor) -> bool:
    """Whether the fused kernels take these losses: a GPU, n <= MAX_FUSED, eager, half or float32."""
    return (
        AVAILABLE
        and losses.is_cuda
        and losses.shape[0] <= MAX_FUSED
        and losses.dtype in _DTYPES
        and not torch.compiler.is_compiling()
    )


def _block(n: int) -> int:
    return max(_CHUNK, 1 << (n - 1).bit_length())


if AVAILABLE:

    @triton.jit
    def _rank_masks_kernel(  # type: ignore[no-untyped-def]
        x_ptr,
        first_ptr,
        second_ptr,
        n,
        m_first,
        m_second,
        TWO: tl.constexpr,
        BLOCK: tl.constexpr,
        CHUNK: tl.constexpr,
    ):
        i = tl.arange(0, BLOCK)
        inside = i < n
        x_i = tl.load(x_ptr + i, mask=inside)
        below = tl.zeros([BLOCK], dtype=tl.int32)
        for start in range(0, n, CHUNK):
            j = start + tl.arange(0, CHUNK)
            x_j = tl.load(x_ptr + j, mask=j < n, other=float("inf"))
            below += tl.sum((x_j[None, :] < x_i[:, None]).to(tl.int32), axis=1)
        tl.store(first_ptr + i, below <= m_first, mask=inside)
        if TWO:
            tl.store(second_ptr + i, below <= m_second, mask=inside)

    @triton.jit
    def _objective_kernel(  # type: ignore[no-untyped-def]
        x_ptr, good_ptr, bad_ptr, weights_ptr, out_ptr, n, gamma, divisor, BLOCK: tl.constexpr
    ):
        i = tl.arange(0, BLOCK)
        inside = i < n
        good = tl.load(good_ptr + i, mask=inside, other=0) != 0
        bad = tl.load(bad_ptr + i, mask=inside, other=0) != 0
        # float32 throughout (the interpreter passes a gamma below float32's normal range as float64)
        unit = tl.where(good, 1.0, tl.where(bad, -gamma, 0.0)).to(tl.float32)
        weights = tl.math.div_rn(unit, divisor)
        tl.store(weights_ptr + i, weights, mask=inside)
        x = tl.load(x_ptr + i, mask=inside, other=0).to(tl.float32)
        tl.store(out_ptr, tl.sum(x * weights, axis=0).to(out_ptr.dtype.element_ty))


def rank_masks(losses: Tensor, bounds: list[int]) -> list[Tensor]:
    """For each bound m (one or two), the mask of :math:`\\#\\{j : \\ell_j < \\ell_i\\} \\le m`."""
    if not 1 <= len(bounds) <= 2:
        raise ValueError(f"rank_masks takes one or two bounds, got {bounds}")
    values = losses.detach().contiguous()
    n = values.shape[0]
    masks = [torch.empty(n, dtype=torch.bool, device=values.device) for _ in bounds]
    first, second = masks[0], masks[-1]
    m_first, m_second = bounds[0], bounds[-1]
    two = len(bounds) == 2
    _rank_masks_kernel[(1,)](values, first, second, n, m_first, m_second, two, _block(n), _CHUNK)
    return masks


class _Objective(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, losses: Tensor, good: Tensor, bad: Tensor, gamma: float, divisor: int) -> Tensor:
        n = losses.shape[0]
        weights = torch.empty(n, dtype=torch.float32, device=losses.device)
        out = torch.empty((), dtype=losses.dtype, device=losses.device)
        _objective_kernel[(1,)](losses, good, bad, weights, out, n, gamma, float(divisor), BLOCK=_block(n))
        ctx.save_for_backward(weights)
        ctx.dtype = losses.dtype
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (weights,) = ctx.saved_tensors
        return (grad * weights).to(ctx.dtype), None, None, None, None


def objective(losses: Tensor, good: Tensor, bad: Tensor, gamma: float, divisor: int) -> Tensor:
    """Eq. 3, :math:`\\ell^\\top (C_{good} - \\gamma C_{bad}) / n_b` with ``divisor`` as
    :math:`n_b`, differentiable in ``losses``; the result has the losses' dtype."""
    result: Tensor = _Objective.apply(  # type: ignore[no-untyped-call]
        losses.contiguous(), good.contiguous(), bad.contiguous(), gamma, divisor
    )
    return result
