"""No host reads on the hot path, shown on CPU with the meta device: a meta tensor has no data,
so any ``.item()``, ``.tolist()``, ``.cpu()`` or ``bool(tensor)`` on it raises. A full step that
runs on meta therefore reads nothing back; on CUDA it would not synchronise."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sigua_optim import SIGUAOptimizer, functional
from sigua_optim.conditions import AllGood, BandSelected, KnownClean, SmallLoss

CONDITIONS = {
    "all-good": AllGood(),
    "small-loss": SmallLoss(0.3, warmup_epochs=0),
    "band": BandSelected(0.3, 0.2, warmup_epochs=0),
    "band-official": BandSelected(0.3, 0.5, warmup_epochs=0, semantics="official"),
    "small-loss-official": SmallLoss(0.3, warmup_epochs=0, semantics="official"),
    "known-clean": KnownClean(),
}


def meta_step(condition: object, reduction: str, nonfinite: str) -> None:
    model = torch.nn.Linear(8, 4, device="meta")
    opt = SIGUAOptimizer(
        torch.optim.Adam(model.parameters(), lr=1e-3),
        condition,  # type: ignore[arg-type]
        0.01,
        reduction=reduction,  # type: ignore[arg-type]
        nonfinite=nonfinite,  # type: ignore[arg-type]
    )
    x = torch.empty(64, 8, device="meta")
    y = torch.empty(64, dtype=torch.long, device="meta")
    clean = torch.empty(64, dtype=torch.bool, device="meta")
    inputs = {"clean": clean} if "clean" in opt.condition.inputs else {}  # type: ignore[union-attr]
    result = opt.step(F.cross_entropy(model(x), y, reduction="none"), **inputs)
    assert result.good.device.type == "meta" and result.objective.shape == ()


@pytest.mark.parametrize("name", list(CONDITIONS))
@pytest.mark.parametrize("reduction", ["paper", "official"])
def test_unchecked_step_reads_nothing_back(name: str, reduction: str) -> None:
    meta_step(CONDITIONS[name], reduction, "unchecked")


def test_the_nonfinite_check_is_the_one_host_read() -> None:
    with pytest.raises((RuntimeError, NotImplementedError)):
        meta_step(AllGood(), "paper", "raise")


@pytest.mark.parametrize("name", ["small-loss", "band", "band-official"])
def test_the_gpu_sort_path_reads_nothing_back(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """From DEVICE_SORT_MIN losses on, a GPU selects with one sort: no host read there either."""
    monkeypatch.setattr(functional, "DEVICE_SORT_MIN", 0)
    meta_step(CONDITIONS[name], "paper", "unchecked")
