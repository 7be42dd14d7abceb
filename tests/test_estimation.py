"""Estimating the noise: offline (sigua_optim.estimation) and online (noise_rate="auto")."""

from __future__ import annotations

import copy
import datetime
import math
import os
import re
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from sigua_optim import SIGUAOptimizer
from sigua_optim.conditions import BandSelected, NonNegativeCorrection, SmallLoss
from sigua_optim.conditions.online import LossMixture, beta_mixture_weight
from sigua_optim.estimation import METHODS, NoiseEstimate, confident_joint, cross_fit, estimate_noise
from sigua_optim.noise import corrupt, estimate_noise_rate, pair, symmetric


def class_dependent(k: int) -> torch.Tensor:
    """Class i flips with rate 0.1 + 0.3 i / (k - 1), all of it to class (i + 2) mod k."""
    T = torch.zeros(k, k, dtype=torch.float64)
    for i in range(k):
        rate = 0.1 + 0.3 * i / (k - 1)
        T[i, i], T[i, (i + 2) % k] = 1 - rate, rate
    return T


def noisy_posteriors(T: torch.Tensor, n: int, seed: int, spread: float = 0.05) -> tuple[torch.Tensor, ...]:
    """(probs, noisy, clean): p(noisy | x) = T^T p(clean | x), the clean posterior peaked on the label.

    p(clean | x) = (1 - spread) e_y + spread * Dirichlet(1); the noisy label is drawn from p(noisy | x).
    """
    g = torch.Generator().manual_seed(seed)
    k = T.shape[0]
    clean = torch.randint(0, k, (n,), generator=g)
    rest = -torch.rand(n, k, generator=g, dtype=torch.float64).log()
    posterior = (1 - spread) * F.one_hot(clean, k).double() + spread * rest / rest.sum(1, keepdim=True)
    probs = posterior @ T
    noisy = torch.multinomial(probs, 1, generator=g).flatten()
    return probs, noisy, clean


NOISES = {
    "sym-20": symmetric(10, 0.2),
    "sym-50": symmetric(10, 0.5),
    "pair-45": pair(10, 0.45),
    "classdep": class_dependent(10),
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("noise", list(NOISES))
def test_recovers_a_known_transition_matrix(noise: str, method: str) -> None:
    # Tolerances: |eps_hat - eps| <= 0.02 and the mean |T_hat - T| <= 0.01 at n = 20000.
    T = NOISES[noise]
    probs, noisy, clean = noisy_posteriors(T, 20_000, seed=0)
    est = estimate_noise(probs, noisy, method=method)
    eps = 1 - float((noisy == clean).double().mean())
    assert abs(est.eps - eps) <= 0.02
    assert float((est.T - T).abs().mean()) <= 0.01
    assert est.prior.shape == (10,) and est.prior.sum().item() == pytest.approx(1.0)
    assert est.eps == pytest.approx(estimate_noise_rate(est.T, est.prior))


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    k=st.integers(2, 6),
    order=st.randoms(use_true_random=False),
    method=st.sampled_from(METHODS),
)
def test_permuting_the_classes_permutes_the_estimate(seed: int, k: int, order: Any, method: str) -> None:
    g = torch.Generator().manual_seed(seed)
    T = torch.rand(k, k, generator=g, dtype=torch.float64) * 0.3 + torch.eye(k, dtype=torch.float64)
    T = T / T.sum(1, keepdim=True)
    probs, noisy, _ = noisy_posteriors(T, 300, seed)
    noisy[:k] = torch.arange(k)  # every class is a noisy label
    perm = list(range(k))
    order.shuffle(perm)
    p = torch.tensor(perm)  # new class j is old class p[j]
    inverse = torch.argsort(p)
    est = estimate_noise(probs, noisy, method=method)
    permuted = estimate_noise(probs[:, p], inverse[noisy], method=method)
    torch.testing.assert_close(permuted.T, est.T[p][:, p], rtol=0, atol=1e-9)
    torch.testing.assert_close(permuted.prior, est.prior[p], rtol=0, atol=1e-9)
    assert permuted.eps == pytest.approx(est.eps, abs=1e-9)


def test_confident_joint_counts_by_threshold_and_calibrates_to_the_label_counts() -> None:
    probs = torch.tensor([[0.8, 0.2], [0.7, 0.3], [0.3, 0.7], [0.9, 0.1], [0.2, 0.8]])
    # t_0 = 0.75, t_1 = (0.7 + 0.1 + 0.8) / 3; sample 1 has no class at its threshold.
    Q = confident_joint(probs, torch.tensor([0, 0, 1, 1, 1]))
    expected = torch.tensor([[2.0, 0.0], [1.0, 2.0]]) / 5  # row 0: 1 count scaled to 2 labels
    torch.testing.assert_close(Q, expected.double())


def test_a_class_never_likely_true_gets_an_identity_row() -> None:
    # Thresholds 0.5, 0.5, 0.4: class 2 is a label, but the samples at its threshold are at
    # another class's threshold with a larger probability.
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.5, 0.3], [0.5, 0.1, 0.4], [0.1, 0.5, 0.4]])
    est = estimate_noise(probs, torch.tensor([0, 1, 2, 2]))
    assert est.T[2].tolist() == [0.0, 0.0, 1.0] and est.prior[2] == 0


@pytest.mark.parametrize(
    ("probs", "labels", "message"),
    [
        (torch.ones(5, 1), torch.zeros(5, dtype=torch.long), "k >= 2 columns"),
        (torch.full((4, 3), 1 / 3), torch.tensor([0, 1, 1, 0]), r"never contains the classes \[2\]"),
        (torch.tensor([[0.5, 0.5], [math.nan, 0.5]]), torch.tensor([0, 1]), "finite"),
        (torch.tensor([[2.0, -1.0], [0.5, 0.5]]), torch.tensor([0, 1]), "non-negative"),
        (torch.tensor([[0.2, 0.2], [0.5, 0.5]]), torch.tensor([0, 1]), "sum to 1"),
        (torch.empty(0, 2), torch.empty(0, dtype=torch.long), "n >= 1"),
        (torch.full((2, 2), 0.5), torch.tensor([0, 2]), r"lie in \[0, 1\]"),
        (torch.full((2, 2), 0.5), torch.tensor([0]), "one label per row"),
    ],
)
def test_bad_input_is_named(probs: torch.Tensor, labels: torch.Tensor, message: str) -> None:
    for method in METHODS:
        with pytest.raises(ValueError, match=message):
            estimate_noise(probs, labels, method=method)


def test_bad_arguments_are_named() -> None:
    probs, labels = torch.full((4, 2), 0.5), torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match="method must be one of"):
        estimate_noise(probs, labels, method="cleanlab")
    with pytest.raises(TypeError, match="noisy_labels must be an integer"):
        estimate_noise(probs, labels.float())
    with pytest.raises(ValueError, match="folds must be"):
        estimate_noise(lambda train, test: probs[test], labels, folds=1)
    with pytest.raises(ValueError, match="fit_predict must return"):
        estimate_noise(lambda train, test: probs, labels, folds=2)


def test_cross_fit_predicts_every_sample_once_from_the_other_folds() -> None:
    probs, noisy, _ = noisy_posteriors(symmetric(4, 0.3), 103, seed=1)
    seen: list[torch.Tensor] = []

    def fit_predict(train: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
        assert not set(train.tolist()) & set(test.tolist())
        assert len(train) + len(test) == 103
        seen.append(test)
        return probs[test].float()

    out = cross_fit(fit_predict, 103, folds=4, generator=torch.Generator().manual_seed(0))
    assert sorted(torch.cat(seen).tolist()) == list(range(103)) and len(seen) == 4
    torch.testing.assert_close(out, probs.float().double())
    est = estimate_noise(fit_predict, noisy, folds=4)
    direct = estimate_noise(probs.float(), noisy)
    assert est.eps == direct.eps and torch.equal(est.T, direct.T)


def test_the_estimate_builds_the_conditions() -> None:
    T = symmetric(3, 0.3)
    est = NoiseEstimate(0.3, T, torch.full((3,), 1 / 3, dtype=torch.float64))
    assert est.small_loss(warmup_epochs=5).noise_rate == 0.3
    band = est.band_selected(band=0.5)
    assert (band.noise_rate, band.band) == (0.3, 0.3)  # the band is clipped to eps
    correction = est.nonnegative_correction(ascend=False)
    assert isinstance(correction, NonNegativeCorrection) and not correction.ascend
    torch.testing.assert_close(correction.transition_matrix.double(), T)


# -- online: the loss mixture ------------------------------------------------------------------


def two_populations(n: int, eps: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(losses, noisy): clean losses ~ Exp(mean 0.1), noisy ones ~ 2.5 + Exp(mean 1)."""
    g = torch.Generator().manual_seed(seed)
    noisy = torch.rand(n, generator=g) < eps
    base = -torch.rand(n, generator=g).log()
    return torch.where(noisy, 2.5 + base, 0.1 * base), noisy


def _rank(rank: int, port: int, out: str) -> None:
    """Each of 2 ranks observes its half of the losses; the estimate is saved to ``out``."""
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=2,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        losses, _ = two_populations(4000, 0.3, seed=rank)  # different data on each rank
        mixture = LossMixture()
        mixture.observe(losses)
        torch.save(mixture.update(1), f"{out}/rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    os._exit(0)  # as tests/test_distributed.py: skip gloo's C++ teardown at exit


def test_the_histogram_is_summed_over_the_ranks(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_rank, args=(port, str(tmp_path)), nprocs=2, join=True)
    got = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    one = LossMixture()  # one process seeing both ranks' losses
    for rank in range(2):
        one.observe(two_populations(4000, 0.3, seed=rank)[0])
    assert got[0] == got[1] == one.update(1)
    alone = LossMixture()
    alone.observe(two_populations(4000, 0.3, seed=0)[0])
    assert alone.update(1) != got[0]  # rank 0's half alone gives another estimate


@pytest.mark.parametrize("eps", [0.2, 0.45])
def test_mixture_recovers_the_weight_of_two_known_loss_populations(eps: float) -> None:
    losses, noisy = two_populations(20_000, eps, seed=0)
    mixture = LossMixture()
    for batch in losses.split(128):
        mixture.observe(batch)
    assert abs(mixture.update(1) - float(noisy.double().mean())) <= 0.02


def test_beta_mixture_weight_is_the_mass_of_the_high_component() -> None:
    centers = (torch.arange(20, dtype=torch.float64) + 0.5) / 20
    counts = torch.zeros(20, dtype=torch.float64)
    counts[:3], counts[-4:] = torch.tensor([50.0, 30, 10]), torch.tensor([3.0, 8, 14, 5])
    assert beta_mixture_weight(centers, counts) == pytest.approx(30 / 120, abs=0.01)


def test_estimate_updates_only_at_a_new_whole_epoch_and_freezes() -> None:
    mixture = LossMixture(freeze_after=2)
    two = torch.cat([torch.full((70,), 0.05), torch.full((30,), 3.0)])
    mixture.observe(two)
    assert mixture.update(0.5) == 0.0  # same epoch: nothing fitted
    assert mixture.update(1.0) == pytest.approx(0.3, abs=0.01)
    mixture.observe(torch.cat([torch.full((50,), 0.05), torch.full((50,), 3.0)]))
    assert mixture.update(2.0) == pytest.approx(0.5, abs=0.01)
    assert mixture.frozen
    mixture.observe(two)
    assert mixture.counts is None and mixture.update(3.0) == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize(
    "losses",
    [
        torch.empty(0),  # an empty epoch
        torch.full((500,), 0.7),  # all losses equal: one bin
        torch.full((500,), math.nan),  # NaN losses are not counted
        torch.full((50,), 0.1),  # fewer than min_samples
    ],
)
def test_an_epoch_without_a_fit_keeps_the_previous_estimate(losses: torch.Tensor) -> None:
    mixture = LossMixture()
    assert mixture.update(1) == 0.0  # nothing seen at all: the fallback 0
    mixture.observe(torch.cat([torch.full((60,), 0.05), torch.full((40,), 3.0)]))
    first = mixture.update(2)
    assert first == pytest.approx(0.4, abs=0.01)
    mixture.observe(losses)
    assert mixture.update(3) == first


def test_invalid_losses_are_not_counted() -> None:
    mixture = LossMixture(bins=10)
    losses = torch.tensor([0.01, 5.0, 0.02, 6.0])
    mixture.observe(losses, valid=torch.tensor([True, False, True, False]))
    assert mixture.counts is not None and mixture.counts.tolist() == [2.0] + [0.0] * 9


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_observing_losses_on_cuda_reads_nothing_back() -> None:
    mixture = LossMixture()
    losses = torch.rand(1000, device="cuda") * 3
    torch.cuda.set_sync_debug_mode("error")  # any host synchronisation raises
    try:
        mixture.observe(losses)
        mixture.observe(losses, valid=losses > 1.0)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert mixture.counts is not None and mixture.counts.device == losses.device


def test_bad_online_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="noise_rate must be a float in \\[0, 1\\) or 'auto'"):
        SmallLoss(noise_rate="guess")
    with pytest.raises(ValueError, match="bins must be"):
        LossMixture(bins=1)
    with pytest.raises(ValueError, match="min_samples must be"):
        LossMixture(min_samples=0)
    with pytest.raises(ValueError, match="max_rate"):
        LossMixture(max_rate=1.0)
    with pytest.raises(ValueError, match=r"band must be a finite number in \[0, 1\]"):
        BandSelected(noise_rate="auto", band=1.5)


def test_auto_condition_follows_the_estimate_and_the_band_rule() -> None:
    cond = BandSelected(noise_rate="auto", band=0.25, warmup_epochs=4)
    assert (cond.noise_rate, cond.band, cond.rate) == (0.0, 0.0, 1.0)  # no data: keep everything
    assert cond.estimator is not None and cond.estimator.freeze_after == 4
    cond(torch.cat([torch.full((80,), 0.05), torch.full((20,), 3.0)]))
    cond.set_epoch(1)
    assert cond.noise_rate == pytest.approx(0.2, abs=0.01)
    assert cond.band == cond.noise_rate  # min(0.25, eps_hat)
    assert cond.rate == pytest.approx(1 - cond.noise_rate / 4)


def _train(
    opt: SIGUAOptimizer, model: torch.nn.Module, epochs: range, data: tuple[torch.Tensor, ...]
) -> None:
    x, y = data
    for epoch in epochs:
        for step, batch in enumerate(torch.arange(len(y)).split(32)):
            opt.set_epoch(epoch + step / 8)
            opt.zero_grad()
            opt.step(F.cross_entropy(model(x[batch]), y[batch], reduction="none"))


def test_state_dict_round_trip_of_an_auto_condition_resumes_bit_identically() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    clean = (x[:, :3].argmax(1)).long()
    y, _ = corrupt(clean, symmetric(3, 0.4), g)

    def make() -> tuple[torch.nn.Module, SIGUAOptimizer]:
        torch.manual_seed(1)
        model = torch.nn.Linear(8, 3)
        cond = BandSelected(noise_rate=LossMixture(min_samples=10), band=0.2, warmup_epochs=3)
        return model, SIGUAOptimizer(torch.optim.SGD(model.parameters(), lr=0.5), cond)

    model, opt = make()
    _train(opt, model, range(2), (x, y))
    saved = copy.deepcopy((model.state_dict(), opt.state_dict()))
    _train(opt, model, range(2, 5), (x, y))

    model2, opt2 = make()
    model2.load_state_dict(saved[0])
    opt2.load_state_dict(saved[1])
    assert opt2.condition.noise_rate == saved[1]["sigua"]["condition"]["state"]["estimator"]["noise_rate"] > 0
    _train(opt2, model2, range(2, 5), (x, y))
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)
    assert opt2.condition.noise_rate == opt.condition.noise_rate > 0
    assert opt2.condition.band == opt.condition.band
    resumed, uninterrupted = (o.state_dict()["sigua"]["condition"] for o in (opt2, opt))
    assert resumed["hyperparameters"] == uninterrupted["hyperparameters"]  # noise_rate_setting "auto"
    torch.testing.assert_close(resumed["state"], uninterrupted["state"], rtol=0, atol=0)


DOC = Path(__file__).resolve().parents[1] / "docs" / "noise.md"


def test_noise_doc_recipe_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert blocks, "no python block in docs/noise.md"
    namespace: dict[str, Any] = {"__name__": "recipe"}
    for block in blocks:
        exec(compile(block, "noise.md", "exec"), namespace)
    assert 0.0 < namespace["estimate"].eps < 1.0
    assert namespace["opt"].condition.noise_rate == namespace["estimate"].eps
