"""Lightning with SIGUA: automatic and manual optimization on CPU, checked against Eq. 3 and SGD."""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("lightning")

import lightning.pytorch as pl
from lightning.pytorch.loggers import Logger

from sigua_optim import SIGUAOptimizer, reference
from sigua_optim.conditions import BandSelected, NonNegativeCorrection
from sigua_optim.integrations import sigua_optimizer
from sigua_optim.integrations.lightning import SIGUAEpochCallback, log_selection, manual_step
from sigua_optim.noise import symmetric

NOISE, BAND, WARMUP, GAMMA, LR = 0.5, 0.25, 1.0, 0.5, 0.1
pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning", "ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated"
)


class Seen(NamedTuple):
    params: list[torch.Tensor]
    x: torch.Tensor
    y: torch.Tensor
    epoch: float
    objective: torch.Tensor


class Classifier(pl.LightningModule):
    def __init__(self, manual: bool, condition: Any = None, log: bool = False) -> None:
        super().__init__()
        self.log_it = log
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
        self.automatic_optimization = not manual
        self.condition = BandSelected(NOISE, BAND, WARMUP) if condition is None else condition
        self.seen: list[Seen] = []

    def configure_optimizers(self) -> SIGUAOptimizer:
        return SIGUAOptimizer(torch.optim.SGD(self.parameters(), lr=LR), self.condition, GAMMA)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        x, y = batch
        params = [p.detach().clone() for p in self.parameters()]
        opt = sigua_optimizer(self.optimizers())
        losses = F.cross_entropy(self.net(x), y, reduction="none")
        if self.automatic_optimization:
            objective = opt.objective(losses)
        else:
            self.optimizers().zero_grad()  # type: ignore[union-attr]
            objective = manual_step(self, losses)
        if self.log_it:
            log_selection(self, on_step=True, on_epoch=False)
        self.seen.append(Seen(params, x, y, opt.epoch, objective.detach()))
        return objective if self.automatic_optimization else None


class Captured(Logger):
    """A logger that keeps every row of metrics Lightning writes."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, float]] = []

    @property
    def name(self) -> str:
        return "captured"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.rows.append(dict(metrics))


def loader() -> torch.utils.data.DataLoader[Any]:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)


def fit(module: pl.LightningModule, **settings: Any) -> pl.Trainer:
    settings = {"logger": False, **settings}
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=2,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **settings,
    )
    trainer.fit(module, loader())
    return trainer


def eq3_objective(module: Classifier, seen: Seen) -> torch.Tensor:
    """Eq. 3 at the parameters the batch saw, with the paper's loops choosing good and bad."""
    with torch.no_grad():
        for p, value in zip(module.parameters(), seen.params, strict=True):
            p.copy_(value)
    losses = F.cross_entropy(module.net(seen.x), seen.y, reduction="none")
    good, bad = reference.band_selected(losses.tolist(), reference.keep_rate(NOISE, seen.epoch, WARMUP), BAND)
    weights = torch.tensor(good, dtype=losses.dtype) - GAMMA * torch.tensor(bad, dtype=losses.dtype)
    assert float((losses * weights).sum() / len(losses)) == pytest.approx(
        reference.algorithm1(losses.tolist(), good, bad, GAMMA), rel=1e-6
    )
    return (losses * weights).sum() / len(losses)


@pytest.mark.parametrize("manual", [False, True], ids=["automatic", "manual"])
def test_objective_is_eq3_and_the_step_descends_it(manual: bool) -> None:
    module = Classifier(manual)
    trainer = fit(module, callbacks=[SIGUAEpochCallback()])
    assert [s.epoch for s in module.seen] == [0.0, 0.0, 1.0, 1.0]
    assert trainer.global_step == 4
    for i, seen in enumerate(module.seen[:-1]):
        module.zero_grad()
        objective = eq3_objective(module, seen)
        assert float(seen.objective) == pytest.approx(float(objective), rel=1e-6)
        objective.backward()
        # One SGD step on Eq. 3 takes the parameters to those the next batch saw.
        for p, after in zip(module.parameters(), module.seen[i + 1].params, strict=True):
            assert p.grad is not None
            torch.testing.assert_close(p.detach() - LR * p.grad, after)


@pytest.mark.parametrize("manual", [False, True], ids=["automatic", "manual"])
def test_log_selection_logs_the_papers_selection(manual: bool) -> None:
    module, logger = Classifier(manual, log=True), Captured()
    fit(module, callbacks=[SIGUAEpochCallback()], logger=logger, log_every_n_steps=1)
    assert len(logger.rows) == len(module.seen) == 4
    for row, seen in zip(logger.rows, module.seen, strict=True):
        with torch.no_grad():
            eq3_objective(module, seen)  # puts the parameters the batch saw back in place
            losses = F.cross_entropy(module.net(seen.x), seen.y, reduction="none").tolist()
        rate = reference.keep_rate(NOISE, seen.epoch, WARMUP)
        good, bad = reference.band_selected(losses, rate, BAND)
        assert row["sigua_good_fraction"] == sum(good) / 8 and row["sigua_bad_fraction"] == sum(bad) / 8
        assert row["sigua_objective"] == pytest.approx(
            reference.algorithm1(losses, good, bad, GAMMA), rel=1e-5
        )
        assert row["sigua_mean_loss"] == pytest.approx(sum(losses) / 8, rel=1e-6)
        assert row["sigua_epoch"] == seen.epoch and row["sigua_keep_rate"] == pytest.approx(rate)
    assert logger.rows[-1]["sigua_bad_fraction"] > 0  # after the warm-up


@pytest.mark.parametrize("manual", [False, True], ids=["automatic+log_selection", "manual_step"])
def test_a_forgotten_epoch_callback_is_reported(manual: bool) -> None:
    with pytest.warns(UserWarning, match=r"still at epoch 0 in epoch 1 .* add SIGUAEpochCallback\(\)"):
        fit(Classifier(manual, log=not manual))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(Classifier(manual, log=not manual), callbacks=[SIGUAEpochCallback()])
    assert not [w for w in caught if "SIGUAEpochCallback" in str(w.message)]


def test_log_selection_before_any_objective_says_when_to_call_it() -> None:
    class Early(Classifier):
        def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor | None:
            log_selection(self)
            return None

    with pytest.raises(
        ValueError, match="log_selection found no selection to log: call it in training_step after"
    ):
        fit(Early(manual=False))


@pytest.mark.parametrize("manual", [False, True], ids=["log_selection", "manual_step"])
def test_helpers_for_one_optimizer_refuse_two(manual: bool) -> None:
    class Two(Classifier):
        def configure_optimizers(self) -> list[SIGUAOptimizer]:  # type: ignore[override]
            return [SIGUAOptimizer(torch.optim.SGD([p], lr=LR)) for p in self.parameters()]

        def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
            x, y = batch
            if manual:
                manual_step(self, F.cross_entropy(self.net(x), y, reduction="none"))
            log_selection(self)

    module = Two(manual=True)
    what = "manual_step steps" if manual else "log_selection logs"
    with pytest.raises(TypeError, match=f"{what} one optimizer, but configure_optimizers returned 4"):
        fit(module)


def test_fractional_epochs() -> None:
    module = Classifier(manual=False)
    fit(module, callbacks=[SIGUAEpochCallback(fractional=True)])
    assert [s.epoch for s in module.seen] == [0.0, 0.5, 1.0, 1.5]


def test_callback_without_sigua_optimizer_says_what_to_return() -> None:
    class Plain(Classifier):
        def configure_optimizers(self) -> torch.optim.Optimizer:  # type: ignore[override]
            return torch.optim.SGD(self.parameters(), lr=LR)

    with pytest.raises(TypeError, match="return SIGUAOptimizer"):
        fit(Plain(manual=False), callbacks=[SIGUAEpochCallback()])


def test_condition_needing_logits_says_to_pass_them() -> None:
    module = Classifier(manual=False, condition=NonNegativeCorrection(symmetric(3, 0.2)))
    with pytest.raises(ValueError, match="needs logits= and targets="):
        fit(module)
