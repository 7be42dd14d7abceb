"""The fast conditions and reduction against the literal loops of Algorithm 1 (hypothesis)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sigua_optim import functional, reference
from sigua_optim.conditions import AllGood, BandSelected, KnownClean, NonNegativeCorrection, SmallLoss
from sigua_optim.noise import pair, symmetric
from sigua_optim.testing import DTYPES, assert_matches_reference, loss_vectors, rates

noise_rates = st.one_of(st.sampled_from([0.0, 0.5, 0.999]), st.floats(0.0, 0.999))
epochs = st.one_of(st.sampled_from([0.0, 1.0, 9.0, 10.0, 200.0]), st.floats(0.0, 300.0))
warmups = st.sampled_from([0.0, 1.0, 10.0, 2.5])
gammas = st.one_of(st.sampled_from([0.0, 1.0, 0.01, 0.001]), st.floats(0.0, 1.0))
semantics = st.sampled_from(["paper", "official"])
reductions = st.sampled_from(["paper", "official"])


@given(loss_vectors(), gammas, reductions)
def test_all_good(losses: torch.Tensor, gamma: float, reduction: str) -> None:
    assert_matches_reference(AllGood(), losses, gamma=gamma, reduction=reduction)  # type: ignore[arg-type]


@given(loss_vectors(), noise_rates, epochs, warmups, gammas, semantics, reductions)
def test_small_loss(
    losses: torch.Tensor, eps: float, epoch: float, warmup: float, gamma: float, sem: str, red: str
) -> None:
    condition = SmallLoss(eps, warmup, semantics=sem)  # type: ignore[arg-type]
    condition.set_epoch(epoch)
    assert_matches_reference(condition, losses, gamma=gamma, reduction=red)  # type: ignore[arg-type]


@given(loss_vectors(), noise_rates, st.data(), epochs, warmups, gammas, semantics, reductions)
def test_band_selected(
    losses: torch.Tensor,
    eps: float,
    data: st.DataObject,
    epoch: float,
    warmup: float,
    gamma: float,
    sem: str,
    red: str,
) -> None:
    limit = eps if sem == "paper" else 1.0
    band = data.draw(st.one_of(st.sampled_from([0.0, limit]), st.floats(0.0, limit)), label="band")
    condition = BandSelected(eps, band, warmup, semantics=sem)  # type: ignore[arg-type]
    condition.set_epoch(epoch)
    assert_matches_reference(condition, losses, gamma=gamma, reduction=red)  # type: ignore[arg-type]


@given(loss_vectors(), st.data(), gammas)
def test_known_clean(losses: torch.Tensor, data: st.DataObject, gamma: float) -> None:
    n = losses.shape[0]
    clean = torch.tensor(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    assert_matches_reference(KnownClean(), losses, gamma=gamma, clean=clean)


def _transition_matrix(data: st.DataObject, k: int) -> torch.Tensor:
    kind = data.draw(st.sampled_from(["symmetric", "pair", "identity", "random"]), label="T")
    eps = data.draw(st.floats(0.0, 0.45), label="eps")
    eye = torch.eye(k, dtype=torch.float64)
    if kind == "symmetric":
        return symmetric(k, eps)
    if kind == "pair":
        return pair(k, eps)
    if kind == "identity":
        return eye
    raw = torch.tensor(data.draw(st.lists(st.floats(0.0, 1.0), min_size=k * k, max_size=k * k)))
    t = eye * 2.0 + raw.reshape(k, k).double()  # diagonally dominant: invertible
    return t / t.sum(dim=1, keepdim=True)


@given(st.data(), st.integers(1, 32), st.integers(2, 6), st.booleans(), gammas)
def test_nonnegative_correction(data: st.DataObject, n: int, k: int, ascend: bool, gamma: float) -> None:
    transition = _transition_matrix(data, k)
    dtype = data.draw(st.sampled_from(list(DTYPES)), label="dtype")
    scale = data.draw(st.sampled_from([0.0, 1.0, 10.0, 100.0]), label="scale")
    logits = (
        torch.randn(n, k, generator=torch.Generator().manual_seed(data.draw(st.integers(0, 99)))) * scale
    ).to(dtype)
    targets = torch.tensor(data.draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    criterion = data.draw(st.sampled_from(["sample", "total", "class"]), label="criterion")
    condition = NonNegativeCorrection(transition, ascend=ascend, criterion=criterion)  # type: ignore[arg-type]
    from sigua_optim.losses import backward_corrected_cross_entropy, class_losses

    if criterion == "class":  # the per-class terms of Eq. 8, n * k of them
        terms = class_losses(logits).double() * condition.inverse[targets]
        losses = terms.flatten().to(dtype)
    else:
        losses = backward_corrected_cross_entropy(logits, targets, transition).to(dtype)
    # The criterion is evaluated in blocks of rows: draw blocks of one row, of a few, and of all.
    chunk = data.draw(st.sampled_from([1, k, 3 * k + 1, functional.NONNEGATIVE_CHUNK]), label="chunk")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(functional, "NONNEGATIVE_CHUNK", chunk)
        assert_matches_reference(condition, losses, gamma=gamma, logits=logits, targets=targets)


@given(loss_vectors(), st.integers(-2, 70))
def test_lowest_k_is_a_stable_argsort_prefix(losses: torch.Tensor, k: int) -> None:
    values = losses.double().tolist()
    kept = sorted(range(len(values)), key=lambda i: values[i])[: max(k, 0)]
    assert functional.lowest_k_mask(losses, k).tolist() == [i in kept for i in range(len(values))]


@given(noise_rates, epochs, warmups)
def test_schedules_equal_eq4_and_the_authors_code(eps: float, epoch: float, warmup: float) -> None:
    assert functional.keep_rate(eps, epoch, warmup, "paper") == reference.keep_rate(eps, epoch, warmup)
    assert functional.keep_rate(eps, epoch, warmup, "official") == reference.official_keep_rate(
        eps, epoch, warmup
    )


@given(noise_rates, st.integers(0, 40), st.integers(0, 60), st.integers(1, 300))
def test_the_official_schedule_is_the_authors_linspace_bit_for_bit(
    eps: float, warmup: int, epoch: int, n: int
) -> None:
    """At whole epochs the reference builds the authors' array with numpy.linspace itself."""
    rate = functional.keep_rate(eps, epoch, warmup, "official")
    assert rate == reference.official_keep_rate(eps, epoch, warmup)
    condition = SmallLoss(eps, warmup, semantics="official")
    condition.set_epoch(epoch)
    want, _ = reference.official_small_loss([float(i) for i in range(n)], rate)
    assert condition(torch.arange(float(n))).good.tolist() == want


def test_the_official_schedule_floors_as_the_authors_code() -> None:
    """eps = 0.4, T_k = 12, t = 10: linspace gives f = 10 * (0.4 / 11); 11 * (1 - f) floors to 6,
    where 1 - 0.4 * (10 / 11) would keep 7."""
    condition = SmallLoss(0.4, 12, semantics="official")
    condition.set_epoch(10)
    assert int(condition(torch.arange(11.0)).good.sum()) == 6


def test_the_official_schedule_with_one_warmup_epoch_is_that_of_two() -> None:
    """linspace(0, eps, 1) is [0]: no forgetting at epoch 0, eps from epoch 1 on."""
    for epoch in (0, 1, 2):
        want = functional.keep_rate(0.3, epoch, 2, "official")
        assert functional.keep_rate(0.3, epoch, 1, "official") == want == [1.0, 0.7, 0.7][epoch]


@given(loss_vectors(), rates(), rates())
def test_band_masks_match_eq6_at_any_rates(losses: torch.Tensor, rate: float, band: float) -> None:
    good, bad = functional.band_masks(losses, rate, band)
    want_good, want_bad = reference.band_selected(losses.double().tolist(), rate, band)
    assert good.tolist() == want_good
    assert bad.tolist() == want_bad


def test_small_loss_keeps_ties_together_and_one_more_than_the_authors() -> None:
    losses = torch.tensor([0.5, 0.1, 0.5, 0.9, 0.5, 0.2])
    condition = SmallLoss(0.5, warmup_epochs=0)
    # n * rho = 3: 0.1 and 0.2 have 0 and 1 smaller; every 0.5 has 2 smaller, so all three stay.
    assert condition(losses).good.tolist() == [True, True, True, False, True, True]
    official = SmallLoss(0.5, warmup_epochs=0, semantics="official")
    assert official(losses).good.tolist() == [True, True, False, False, False, True]


def test_band_is_the_middle_not_the_largest_losses() -> None:
    losses = torch.arange(10.0)
    good, bad = BandSelected(0.5, 0.2, warmup_epochs=0)(losses)
    # n rho = 5 keeps counts 0..5; the band adds counts 6..7; 8 and 9 are ignored.
    assert good.tolist() == [True] * 6 + [False] * 4
    assert bad.tolist() == [False] * 6 + [True, True, False, False]


def test_eq11_as_printed_never_marks_bad_on_symmetric_noise() -> None:
    k = 10
    transition = symmetric(k, 0.5)
    logits = torch.randn(256, k, generator=torch.Generator().manual_seed(0)) * 5
    targets = torch.randint(0, k, (256,), generator=torch.Generator().manual_seed(1))
    total = NonNegativeCorrection(transition, criterion="total")(
        torch.zeros(256), logits=logits, targets=targets
    )
    sample = NonNegativeCorrection(transition)(torch.zeros(256), logits=logits, targets=targets)
    assert not total.bad.any()
    assert sample.bad.any()


def test_class_criterion_ascends_on_the_terms_of_a_negative_class_risk() -> None:
    transition = pair(3, 0.45)
    inverse = torch.linalg.inv(transition)
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 4.0], [4.0, 0.0, 0.0]])
    targets = torch.tensor([0, 1, 2, 1])
    terms = torch.nn.functional.log_softmax(logits.double(), dim=1).neg() * inverse[targets]
    risks = terms.sum(dim=0)  # R_c: the clean-class risks of nnPU
    selection = NonNegativeCorrection(transition, criterion="class")(
        terms.flatten(), logits=logits, targets=targets
    )
    assert selection.bad.view(4, 3).tolist() == [(risks < 0).tolist()] * 4
    assert 0 < int((risks < 0).sum()) < 3  # some classes each way: the rule is per class
    dropped = NonNegativeCorrection(transition, ascend=False, criterion="class")(
        terms.flatten(), logits=logits, targets=targets
    )
    assert not dropped.bad.any() and dropped.good.view(4, 3).tolist() == [(risks >= 0).tolist()] * 4
    with pytest.raises(ValueError, match="4 rows x 3 classes"):
        NonNegativeCorrection(transition, criterion="class")(terms[:, 0], logits=logits, targets=targets)
    with pytest.raises(ValueError, match="valid="):
        NonNegativeCorrection(transition, criterion="class")(
            terms.flatten(), logits=logits, targets=targets, valid=torch.ones(12, dtype=torch.bool)
        )


@given(loss_vectors(), st.data(), noise_rates, gammas)
def test_per_token_selection_over_valid_losses_only(
    losses: torch.Tensor, data: st.DataObject, eps: float, gamma: float
) -> None:
    n = losses.shape[0]
    valid = torch.tensor(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    valid[data.draw(st.integers(0, n - 1))] = True  # at least one real token
    band = data.draw(st.floats(0.0, eps), label="band")
    condition = data.draw(
        st.sampled_from([AllGood(), KnownClean(), SmallLoss(eps, 0), BandSelected(eps, band, 0)]),
        label="condition",
    )
    clean = torch.tensor(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    assert_matches_reference(condition, losses, gamma=gamma, valid=valid, clean=clean)


@given(loss_vectors(), st.data(), rates(), rates())
def test_device_path_ranks_valid_losses_as_the_host_path(
    losses: torch.Tensor, data: st.DataObject, rate: float, band: float
) -> None:
    """The sort-based path used on CUDA (a device-side count of valid losses) equals the host one."""
    n = losses.shape[0]
    valid = torch.tensor(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    bounds = ((rate,), (rate, band))
    host = functional._rank_at_most(losses, bounds, valid)
    device = functional._rank_at_most_on_device(losses.detach(), bounds, valid)
    for got, want in zip(device, host, strict=True):
        assert got.tolist() == want.tolist()


@given(loss_vectors(), st.data(), rates(), rates(), st.booleans())
def test_host_and_device_selection_agree(
    losses: torch.Tensor, data: st.DataObject, rate: float, band: float, masked: bool
) -> None:
    """numpy's selection (CPU, n >= HOST_MIN_SIZE) equals torch's (small n, devices, compile)."""
    n = losses.shape[0]
    valid = torch.tensor(data.draw(st.lists(st.booleans(), min_size=n, max_size=n))) if masked else None
    bounds = ((rate,), (rate, band))
    on_device = functional._rank_at_most(losses, bounds, valid)
    with pytest.MonkeyPatch.context() as patch:  # hypothesis reruns the body: no function fixture
        patch.setattr(functional, "HOST_MIN_SIZE", 0)
        on_host = functional._rank_at_most(losses, bounds, valid)
        lowest = functional.lowest_k_mask(losses, data.draw(st.integers(0, n)))
    assert [m.tolist() for m in on_host] == [m.tolist() for m in on_device]
    assert functional.lowest_k_mask(losses, int(lowest.sum())).tolist() == lowest.tolist()
