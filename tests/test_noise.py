"""Tests of sigua_optim.noise: transition matrices, corruption, estimators, validation."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sigua_optim.noise import (
    check_transition_matrix,
    corrupt,
    estimate_noise_rate,
    estimate_transition_matrix,
    instance_dependent,
    instance_transitions,
    pair,
    symmetric,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("make", [symmetric, pair])
@pytest.mark.parametrize(("k", "eps"), [(2, 0.0), (3, 0.45), (10, 0.2), (10, 0.8)])
def test_rows_sum_to_one_and_diagonal(make, k: int, eps: float) -> None:
    T = make(k, eps)
    assert T.dtype == torch.float64 and T.shape == (k, k)
    torch.testing.assert_close(T.sum(1), torch.ones(k, dtype=torch.float64))
    torch.testing.assert_close(T.diagonal(), torch.full((k,), 1 - eps, dtype=torch.float64))
    assert bool((T >= 0).all())


def test_symmetric_off_diagonal_and_pair_structure() -> None:
    S = symmetric(5, 0.4)
    assert torch.allclose(S[0, 1:], torch.full((4,), 0.1, dtype=torch.float64))
    P = pair(5, 0.4)
    for i in range(5):
        assert P[i, (i + 1) % 5] == pytest.approx(0.4)
        assert P[i].count_nonzero() == 2


@pytest.mark.parametrize(("make", "eps"), [(symmetric, 0.2), (symmetric, 0.5), (pair, 0.45)])
def test_empirical_flip_rate_within_binomial_tolerance(make, eps: float) -> None:
    n, k = 20_000, 10
    labels = torch.arange(k).repeat(n // k)
    noisy, clean = corrupt(labels, make(k, eps), _gen(1))
    rate = 1.0 - clean.double().mean().item()
    assert abs(rate - eps) < 5 * math.sqrt(eps * (1 - eps) / n)
    assert torch.equal(clean, noisy == labels)
    assert int(noisy.min()) >= 0 and int(noisy.max()) < k


def test_pair_flips_go_to_next_class() -> None:
    labels = torch.arange(7).repeat(500)
    noisy, clean = corrupt(labels, pair(7, 0.45), _gen(2))
    assert torch.equal(noisy[~clean], (labels[~clean] + 1) % 7)


def test_symmetric_flips_spread_over_other_classes() -> None:
    labels = torch.zeros(30_000, dtype=torch.long)
    noisy, clean = corrupt(labels, symmetric(4, 0.6), _gen(3))
    counts = torch.bincount(noisy[~clean], minlength=4).double()
    assert counts[0] == 0
    share = counts[1:] / counts.sum()
    assert bool(((share - 1 / 3).abs() < 0.02).all())


def test_corrupt_reproducible_from_seed_and_keeps_dtype() -> None:
    labels = torch.randint(0, 10, (1000,), generator=_gen(0)).to(torch.int32)
    a = corrupt(labels, symmetric(10, 0.5), _gen(7))
    b = corrupt(labels, symmetric(10, 0.5), _gen(7))
    c = corrupt(labels, symmetric(10, 0.5), _gen(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert a[0].dtype == torch.int32


def test_corrupt_with_identity_and_deterministic_rows() -> None:
    labels = torch.tensor([0, 1, 2, 2, 1])
    assert torch.equal(corrupt(labels, torch.eye(3), _gen(0))[0], labels)
    to_zero = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [1.0, 0, 0]])
    noisy, clean = corrupt(labels, to_zero, _gen(0))
    assert noisy.tolist() == [0, 0, 0, 0, 0]
    assert clean.tolist() == [True, False, False, False, False]


def _synthetic_probs(T: torch.Tensor, n_per_class: int, seed: int) -> torch.Tensor:
    """p(noisy | x) = T^T p(clean | x); half of each class are perfect anchors."""
    k = T.shape[0]
    y = torch.arange(k).repeat(n_per_class)
    conf = torch.rand(len(y), 1, generator=_gen(seed), dtype=torch.float64)
    conf[: len(y) // 2] = 1.0
    clean_post = conf * torch.nn.functional.one_hot(y, k).double() + (1 - conf) / k
    return clean_post @ T


@pytest.mark.parametrize("T", [symmetric(10, 0.5), pair(10, 0.45), symmetric(3, 0.2)])
@pytest.mark.parametrize("percentile", [100.0, 97.0])
def test_estimator_recovers_known_T(T: torch.Tensor, percentile: float) -> None:
    T_hat = estimate_transition_matrix(_synthetic_probs(T, 300, seed=4), percentile)
    torch.testing.assert_close(T_hat, T, atol=1e-9, rtol=0)


def test_percentile_ignores_overconfident_outliers() -> None:
    T = pair(10, 0.45)
    outliers = torch.eye(10, dtype=torch.float64).repeat(3, 1)  # p(noisy = i | x) = 1
    probs = torch.cat([_synthetic_probs(T, 300, seed=6), outliers])
    assert not torch.allclose(estimate_transition_matrix(probs, 100.0), T, atol=0.1)
    torch.testing.assert_close(estimate_transition_matrix(probs, 97.0), T, atol=1e-9, rtol=0)


def test_estimated_noise_rate_from_estimated_T() -> None:
    T_hat = estimate_transition_matrix(_synthetic_probs(pair(10, 0.45), 300, seed=5), 100.0)
    assert estimate_noise_rate(T_hat) == pytest.approx(0.45, abs=0.01)


def test_noise_rate_with_prior() -> None:
    T = torch.tensor([[1.0, 0.0], [0.4, 0.6]])
    assert estimate_noise_rate(T) == pytest.approx(0.2)
    assert estimate_noise_rate(T, torch.tensor([0.0, 1.0])) == pytest.approx(0.4)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: symmetric(10, 1.0), "eps"),
        (lambda: pair(10, -0.1), "eps"),
        (lambda: symmetric(1, 0.2), "k"),
        (lambda: check_transition_matrix(torch.ones(2, 3) / 3), "T"),
        (lambda: check_transition_matrix(torch.tensor([[1.5, -0.5], [0.0, 1.0]])), "T"),
        (lambda: check_transition_matrix(torch.tensor([[0.5, 0.4], [0.0, 1.0]])), "T"),
        (lambda: corrupt(torch.tensor([0, 3]), symmetric(3, 0.2)), "labels"),
        (lambda: corrupt(torch.tensor([-1, 0]), symmetric(3, 0.2)), "labels"),
        (lambda: corrupt(torch.tensor([0.0, 1.0]), symmetric(3, 0.2)), "labels"),
        (lambda: corrupt(torch.tensor([], dtype=torch.long), symmetric(3, 0.2)), "labels"),
        (lambda: corrupt(torch.tensor([0, 1]), torch.eye(3)[:2]), "T"),
        (lambda: estimate_transition_matrix(torch.ones(4, 3)), "probs"),
        (lambda: estimate_transition_matrix(torch.full((4, 2), 0.5), percentile=0.0), "percentile"),
        (lambda: estimate_noise_rate(torch.eye(2), torch.tensor([0.7, 0.7])), "prior"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(call, name: str) -> None:
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        call()


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: symmetric(3, "abc"), "eps"),
        (lambda: pair(3, [0.2]), "eps"),
        (lambda: symmetric(3, complex(0.2, 0)), "eps"),
        (lambda: pair(2.5, 0.2), "k"),
        (lambda: corrupt(torch.tensor([0, 1]), symmetric(3, 0.2), generator=0), "generator"),
        (lambda: check_transition_matrix(torch.eye(2, dtype=torch.complex64)), "T"),
        (lambda: check_transition_matrix([[1.0, 0.0], [0.0, 1.0]]), "T"),
    ],
)
def test_wrong_types_raise_type_error_naming_the_argument(call, name: str) -> None:
    with pytest.raises(TypeError, match=rf"\b{name}\b"):
        call()


def test_a_complex_transition_matrix_is_refused_not_truncated() -> None:
    """Its imaginary part would be dropped by the float64 conversion."""
    T = torch.eye(2, dtype=torch.complex128) + 0.5j
    with pytest.raises(TypeError, match="T must be real"):
        corrupt(torch.tensor([0, 1]), T)


# -- instance-dependent noise ---------------------------------------------------------------------
def _images(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 5, 5, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("eps", [0.0, 0.05, 0.2, 0.4, 0.7, 0.95])
@pytest.mark.parametrize("std", [0.1, 0.3])
def test_instance_dependent_rate_is_eps_within_sampling_error(eps: float, std: float) -> None:
    """Realised rate within 4 binomial standard errors (n = 20,000), near 0 and 1 too."""
    x, y = _images(20_000)
    noisy, clean = instance_dependent(x, y, eps, torch.Generator().manual_seed(1), rate_std=std)
    tolerance = 4 * (eps * (1 - eps) / 20_000) ** 0.5
    assert abs(float((~clean).double().mean()) - eps) <= tolerance
    assert torch.equal(clean, noisy == y)


def test_instance_dependent_is_seeded_and_depends_on_the_features() -> None:
    x, y = _images(2000)
    a = instance_dependent(x, y, 0.4, torch.Generator().manual_seed(3))
    b = instance_dependent(x, y, 0.4, torch.Generator().manual_seed(3))
    c = instance_dependent(x, y, 0.4, torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])
    # the same seed on other images flips other samples to other classes
    other = instance_dependent(x.flip(0), y, 0.4, torch.Generator().manual_seed(3))
    assert not torch.equal(a[0], other[0])


@settings(deadline=None, max_examples=30)
@given(st.integers(2, 6), st.integers(1, 40), st.floats(0.0, 0.95), st.floats(0.0, 0.5), st.integers(0, 99))
def test_instance_rows_never_flip_to_the_true_label(
    k: int, n: int, eps: float, std: float, seed: int
) -> None:
    """Each row: 1 - q_i at the true label, the flip mass q_i on the other classes, sum 1."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(n, 3, generator=g), torch.randint(0, k, (n,), generator=g)
    rows = instance_transitions(x, y, eps, torch.Generator().manual_seed(seed), num_classes=k, rate_std=std)
    torch.testing.assert_close(rows.sum(1), torch.ones(n, dtype=torch.float64))
    assert bool((rows >= 0).all())
    own = rows.gather(1, y.unsqueeze(1)).squeeze(1)
    assert bool(((own >= 0) & (own <= 1)).all())
    g = torch.Generator().manual_seed(seed)
    noisy, clean = instance_dependent(x, y, eps, g, num_classes=k, rate_std=std)
    assert bool((rows.gather(1, noisy.unsqueeze(1)) > 0).all())  # drawn only where the row has mass
    assert torch.equal(clean, noisy == y)


def test_instance_dependent_refuses_bad_input_naming_it() -> None:
    x, y = _images(10)
    with pytest.raises(ValueError, match="eps"):
        instance_dependent(x, y, 1.0)
    with pytest.raises(ValueError, match="rate_std"):
        instance_dependent(x, y, 0.2, rate_std=-1.0)
    with pytest.raises(ValueError, match="one row per label"):
        instance_dependent(x[:5], y, 0.2)
    with pytest.raises(ValueError, match="integer tensor"):
        instance_dependent(x, y.float(), 0.2)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        instance_dependent(x, y, 0.2, num_classes=3)
    with pytest.raises(TypeError, match="generator"):
        instance_dependent(x, y, 0.2, 0)  # type: ignore[arg-type]
