"""Label noise: transition matrices, corruption, and estimators of the noise.

A transition matrix ``T`` is a ``k x k`` row-stochastic matrix with
``T[i, j] = p(noisy = j | clean = i)``.

* :func:`symmetric` -- ``T[i, i] = 1 - eps`` and ``T[i, j] = eps / (k - 1)`` for ``j != i``.
* :func:`pair` -- ``T[i, i] = 1 - eps`` and ``T[i, (i + 1) mod k] = eps`` (pair flip).
* :func:`corrupt` -- draws ``noisy_i ~ T[labels_i, :]`` by inverse CDF, one uniform per sample,
  so the result is reproducible from a :class:`torch.Generator`.
* :func:`instance_dependent` -- instance-dependent noise (Xia et al., NeurIPS 2020): each
  sample's flip rate and flip target depend on its features; :func:`instance_transitions` gives
  the per-sample rows it draws from.
* :func:`estimate_transition_matrix` -- the anchor-point estimator of Patrini et al. (CVPR 2017):
  row ``i`` of ``T`` is the predicted ``p(noisy | x)`` of the sample ``x`` that most confidently
  belongs to class ``i``.
* :func:`estimate_noise_rate` -- ``eps = 1 - sum_i prior_i * T[i, i]``.

The estimators need probabilities from a model that has not seen the sample (a model's
predictions on its own training samples hide the noise it has memorised):
:func:`sigua_optim.estimation.estimate_noise` cross-fits them and builds the conditions.

>>> import torch
>>> T = symmetric(10, 0.5)
>>> noisy, clean = corrupt(torch.arange(10).repeat(100), T, torch.Generator().manual_seed(0))
>>> round(1 - clean.double().mean().item(), 1)
0.5
>>> round(estimate_noise_rate(T), 6)
0.5
"""

from __future__ import annotations

import math

import torch

from ._validation import check_real

__all__ = [
    "check_transition_matrix",
    "corrupt",
    "estimate_noise_rate",
    "estimate_transition_matrix",
    "instance_dependent",
    "instance_transitions",
    "pair",
    "symmetric",
]

_ROW_SUM_TOL = 1e-6


def _check_k_eps(k: int, eps: float) -> float:
    """``eps`` as a float, after checking ``k`` (an int >= 2) and ``eps`` (a real in [0, 1))."""
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an integer number of classes >= 2; got k={k!r:.100}")
    if k < 2:
        raise ValueError(f"k must be an integer number of classes >= 2; got k={k!r}")
    return check_real(eps, "eps", 0.0, 1.0, high_open=True, hint=" (a fraction, e.g. eps=0.5 for 50% noise)")


def symmetric(k: int, eps: float) -> torch.Tensor:
    """Symmetric noise, float64 ``k x k``: ``T[i, i] = 1 - eps``, ``T[i, j] = eps / (k - 1)``.

    >>> symmetric(3, 0.5)
    tensor([[0.5000, 0.2500, 0.2500],
            [0.2500, 0.5000, 0.2500],
            [0.2500, 0.2500, 0.5000]], dtype=torch.float64)
    """
    eps = _check_k_eps(k, eps)
    T = torch.full((k, k), eps / (k - 1), dtype=torch.float64)
    T.fill_diagonal_(1.0 - eps)
    return T


def pair(k: int, eps: float) -> torch.Tensor:
    """Pair-flip noise, float64 ``k x k``: ``T[i, i] = 1 - eps``, ``T[i, (i + 1) mod k] = eps``.

    Every other entry is 0.

    >>> pair(3, 0.45)
    tensor([[0.5500, 0.4500, 0.0000],
            [0.0000, 0.5500, 0.4500],
            [0.4500, 0.0000, 0.5500]], dtype=torch.float64)
    """
    eps = _check_k_eps(k, eps)
    eye = torch.eye(k, dtype=torch.float64)
    return (1.0 - eps) * eye + eps * eye.roll(1, dims=1)


def check_transition_matrix(T: torch.Tensor, name: str = "T") -> torch.Tensor:
    """Validate a transition matrix and return it as a float64 tensor.

    Raises :class:`TypeError` naming ``name`` unless ``T`` is a real (not complex) tensor, and
    :class:`ValueError` unless it is a square ``k x k`` matrix (``k >= 2``) of finite,
    non-negative entries whose rows each sum to 1.

    >>> check_transition_matrix(torch.tensor([[0.9, 0.1], [0.2, 0.8]])).dtype
    torch.float64
    """
    if not isinstance(T, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(T).__name__}")
    if T.dtype.is_complex:
        raise TypeError(f"{name} must be real (probabilities); got a {T.dtype} tensor: pass {name}.real")
    if T.dim() != 2 or T.shape[0] != T.shape[1] or T.shape[0] < 2:
        raise ValueError(f"{name} must be a square k x k matrix with k >= 2; got shape {tuple(T.shape)}")
    T64 = T.detach().to(torch.float64)
    if not bool(torch.isfinite(T64).all()) or bool((T64 < 0).any()):
        raise ValueError(f"{name} must have finite, non-negative entries (probabilities)")
    worst = float((T64.sum(dim=1) - 1.0).abs().max())
    if worst > _ROW_SUM_TOL:
        raise ValueError(
            f"every row of {name} must sum to 1 (T[i, j] = p(noisy=j | clean=i)); "
            f"the worst row is off by {worst:.3g}; "
            f"normalise with {name} / {name}.sum(1, keepdim=True)"
        )
    return T64


def corrupt(
    labels: torch.Tensor, T: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw noisy labels ``noisy_i ~ T[labels_i, :]``; return ``(noisy_labels, clean_mask)``.

    One uniform ``u_i`` per sample, then ``noisy_i = #{j : cdf[labels_i, j] <= u_i}`` with
    ``cdf = T.cumsum(1)`` (inverse CDF), so the same generator seed gives the same labels.
    ``clean_mask[i]`` is ``noisy_i == labels_i``. Both outputs live on ``labels.device``.

    >>> noisy, clean = corrupt(torch.tensor([0, 1, 2]), pair(3, 0.0))
    >>> noisy.tolist(), clean.tolist()
    ([0, 1, 2], [True, True, True])
    """
    T64 = check_transition_matrix(T)
    _check_labels(labels, T64.shape[0], generator)
    return _draw(labels, T64.to(labels.device)[labels.long()], generator)


def _check_labels(labels: torch.Tensor, k: int, generator: torch.Generator | None) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None; got {generator!r:.100} "
            "(for a seed, pass torch.Generator().manual_seed(seed))"
        )
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"labels must be a torch.Tensor; got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(
            f"labels must be an integer tensor of class indices; got dtype {labels.dtype} "
            "(pass labels.long())"
        )
    if labels.dim() != 1 or labels.numel() == 0:
        raise ValueError(f"labels must be a non-empty 1-D tensor; got shape {tuple(labels.shape)}")
    if bool((labels < 0).any()) or bool((labels >= k).any()):
        raise ValueError(
            f"labels must lie in [0, {k - 1}] ({k} classes); "
            f"got values from {int(labels.min())} to {int(labels.max())}"
        )


def _draw(
    labels: torch.Tensor, rows: torch.Tensor, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``noisy_i ~ rows[i]`` by inverse CDF, one uniform per sample; ``(noisy, noisy == labels)``."""
    device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(labels.numel(), generator=generator, dtype=torch.float64, device=device)
    cdf = rows.cumsum(dim=1)
    noisy = (cdf <= u.to(labels.device).unsqueeze(1)).sum(dim=1).clamp_max(rows.shape[1] - 1)
    noisy = noisy.to(labels.dtype)
    return noisy, noisy == labels


def _truncated_normal_loc(mean: float, std: float) -> float:
    """The centre mu of N(mu, std^2) truncated to [0, 1] whose mean is ``mean`` (bisection)."""

    def truncated_mean(mu: float) -> float:
        a, b = -mu / std, (1.0 - mu) / std
        pdf = (math.exp(-0.5 * a * a) - math.exp(-0.5 * b * b)) / math.sqrt(2 * math.pi)
        mass = 0.5 * (math.erf(b / math.sqrt(2)) - math.erf(a / math.sqrt(2)))
        if mass <= 0:  # mu far outside [0, 1]: all the mass at the nearer end
            return 0.0 if mu < 0.5 else 1.0
        return mu + std * pdf / mass

    low, high = -1.0 - 10 * std, 2.0 + 10 * std  # the truncated mean rises with mu, 0 to 1
    for _ in range(100):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if truncated_mean(middle) < mean else (low, middle)
    return 0.5 * (low + high)


def instance_transitions(
    features: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    generator: torch.Generator | None = None,
    *,
    num_classes: int | None = None,
    rate_std: float = 0.1,
) -> torch.Tensor:
    r"""Per-sample transition rows of instance-dependent noise (Xia et al., NeurIPS 2020).

    For sample :math:`i` with features :math:`x_i` (flattened) and label :math:`y_i`:

    1. a flip rate :math:`q_i \sim \mathcal{N}(\mu, \sigma^2)` truncated to [0, 1]
       (:math:`\sigma` = ``rate_std``), drawn by inverse CDF, with :math:`\mu` chosen so that
       the truncated mean is exactly :math:`\epsilon` (Xia et al. centre the normal at
       :math:`\epsilon`, which moves the mean rate toward 0.5 near 0 and 1: +0.029 at
       :math:`\epsilon = 0.1`);
    2. a projection :math:`p_i = x_i^\top W_{y_i}` with one :math:`d \times k` matrix
       :math:`W_c \sim \mathcal{N}(0, 1)` per class, drawn once;
    3. the row :math:`T_i[y_i] = 1 - q_i`, :math:`T_i[j] = q_i\,\mathrm{softmax}_{j \ne y_i}(p_i)_j`:
       the sample flips with probability :math:`q_i`, to a class its features decide.

    The expected flip rate is :math:`\epsilon`. Returns a float64 ``[n, k]`` tensor on
    ``labels.device``; every row sums to 1 and holds :math:`1 - q_i` at the true label. The
    same generator seed gives the same rows.

    Args:
        features: ``[n, ...]`` real tensor, one sample per row (flattened), as the model sees it.
        labels: ``[n]`` integer class indices (the clean labels).
        eps: :math:`\epsilon` in [0, 1), the mean flip rate.
        generator: the :class:`torch.Generator` of the draws (CPU), for reproducible noise.
        num_classes: k (default: ``labels.max() + 1``).
        rate_std: :math:`\sigma \ge 0` of the per-sample rates (default 0.1, as Xia et al.).

    >>> x = torch.rand(6, 4, generator=torch.Generator().manual_seed(0))
    >>> y = torch.tensor([0, 1, 2, 0, 1, 2])
    >>> rows = instance_transitions(x, y, 0.4, torch.Generator().manual_seed(1))
    >>> rows.shape, bool(torch.allclose(rows.sum(1), torch.ones(6, dtype=torch.float64)))
    (torch.Size([6, 3]), True)
    """
    eps = check_real(eps, "eps", 0.0, 1.0, high_open=True, hint=" (a fraction, e.g. eps=0.4 for 40%)")
    rate_std = check_real(rate_std, "rate_std", 0.0, float("inf"), hint=" (e.g. 0.1)")
    if not isinstance(features, torch.Tensor) or features.dtype.is_complex or features.dtype == torch.bool:
        raise TypeError(f"features must be a real torch.Tensor, one sample per row; got {features!r:.60}")
    if not isinstance(labels, torch.Tensor) or features.shape[:1] != labels.shape[:1]:
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(
            f"features must have one row per label: features {tuple(features.shape)}, labels {shape}"
        )
    k = int(num_classes) if num_classes is not None else int(labels.max()) + 1 if labels.numel() else 0
    if k < 2:
        raise ValueError(f"num_classes must be >= 2; got {k} (pass num_classes=k)")
    _check_labels(labels, k, generator)
    n, device = labels.numel(), generator.device if generator is not None else torch.device("cpu")
    x = features.detach().reshape(n, -1).to(device=device, dtype=torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("features must be finite")
    # 1. q_i ~ N(eps, std^2) truncated to [0, 1], by inverse CDF
    if rate_std == 0 or eps == 0:
        q = torch.full((n,), eps, dtype=torch.float64, device=device)
    else:
        mu = _truncated_normal_loc(eps, rate_std)
        lo, hi = (torch.special.ndtr(torch.tensor((b - mu) / rate_std).double()) for b in (0, 1))
        u = torch.rand(n, generator=generator, dtype=torch.float64, device=device)
        q = (mu + rate_std * torch.special.ndtri(lo + (hi - lo) * u)).clamp(0.0, 1.0)
    # 2. one d x k projection per class
    W = torch.randn(k, x.shape[1], k, generator=generator, dtype=torch.float64, device=device)
    y = labels.long().to(device)
    p = torch.empty(n, k, dtype=torch.float64, device=device)
    for c in range(k):  # one matmul per class, not per sample
        rows_c = y == c
        p[rows_c] = x[rows_c] @ W[c]
    # 3. the flip mass q_i spread over the other classes by softmax(p_i)
    own = torch.nn.functional.one_hot(y, k).bool()
    rows = q.unsqueeze(1) * p.masked_fill(own, float("-inf")).softmax(dim=1)
    rows[own] = 1.0 - q
    return rows.to(labels.device)


def instance_dependent(
    features: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    generator: torch.Generator | None = None,
    *,
    num_classes: int | None = None,
    rate_std: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Instance-dependent noisy labels: ``noisy_i ~ instance_transitions(...)[i]``; returns
    ``(noisy_labels, clean_mask)`` as :func:`corrupt` does.

    The flip rate and target of each sample depend on its features (see
    :func:`instance_transitions`); one generator draws the rates, the projections and the
    labels, so the same seed gives the same labels.

    >>> x = torch.rand(1000, 8, generator=torch.Generator().manual_seed(0))
    >>> y = torch.arange(1000) % 4
    >>> noisy, clean = instance_dependent(x, y, 0.4, torch.Generator().manual_seed(0))
    >>> round(1 - clean.double().mean().item(), 1)
    0.4
    """
    rows = instance_transitions(features, labels, eps, generator, num_classes=num_classes, rate_std=rate_std)
    return _draw(labels, rows, generator)


def _float64_probabilities(probs: torch.Tensor) -> torch.Tensor:
    """``probs`` ``[n, k]`` in float64, once its entries are finite and non-negative
    and its rows sum to 1 (softmax outputs); a ValueError naming ``probs`` otherwise."""
    P = probs.detach().to(torch.float64)
    if not bool(torch.isfinite(P).all()) or bool((P < 0).any()):
        raise ValueError("probs must be finite and non-negative (pass logits.softmax(dim=1), not logits)")
    if float((P.sum(dim=1) - 1.0).abs().max()) > 1e-4:
        raise ValueError("every row of probs must sum to 1 (pass logits.softmax(dim=1))")
    return P


def estimate_transition_matrix(probs: torch.Tensor, percentile: float = 97.0) -> torch.Tensor:
    """Anchor-point estimate of ``T`` from predicted noisy-label probabilities (Patrini et al.).

    ``probs`` is ``[n, k]``: each row is a model's softmax ``p(noisy | x_n)``, the model trained
    on the noisy labels. For each class ``i`` the anchor is the sample whose ``probs[:, i]`` is
    the largest value not above its ``percentile``-th percentile (``percentile=100``: the plain
    argmax; 97, the default, ignores the top 3% as outliers). Row ``i`` of the estimate is the
    anchor's predicted row, ``T_hat[i, :] = probs[anchor_i, :]``; each row is renormalised to
    sum to 1. Returns a float64 ``k x k`` tensor.

    >>> probs = torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.5, 0.5]])
    >>> estimate_transition_matrix(probs, percentile=100.0)
    tensor([[0.9000, 0.1000],
            [0.3000, 0.7000]], dtype=torch.float64)
    """
    if not isinstance(probs, torch.Tensor) or probs.dim() != 2 or probs.shape[1] < 2:
        shape = tuple(probs.shape) if isinstance(probs, torch.Tensor) else type(probs).__name__
        raise ValueError(f"probs must be an [n, k] tensor of probabilities with k >= 2; got {shape}")
    if probs.shape[0] == 0:
        raise ValueError("probs must have at least one row (one sample)")
    if not 0.0 < float(percentile) <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], e.g. 97.0; got percentile={percentile!r}")
    P = _float64_probabilities(probs)
    threshold = torch.quantile(P, float(percentile) / 100.0, dim=0, interpolation="lower")
    masked = torch.where(threshold >= P, P, torch.full_like(P, -1.0))
    anchors = masked.argmax(dim=0)
    T_hat = P[anchors]
    return T_hat / T_hat.sum(dim=1, keepdim=True)


def estimate_noise_rate(T: torch.Tensor, prior: torch.Tensor | None = None) -> float:
    """Overall flip rate ``eps = 1 - sum_i prior_i * T[i, i]`` (``prior`` uniform by default).

    ``prior`` is the clean class distribution ``p(clean = i)``; it must be non-negative and
    sum to 1.

    >>> round(estimate_noise_rate(pair(4, 0.45)), 6)
    0.45
    >>> estimate_noise_rate(torch.tensor([[1.0, 0.0], [0.5, 0.5]]), torch.tensor([0.5, 0.5]))
    0.25
    """
    T64 = check_transition_matrix(T)
    k = T64.shape[0]
    if prior is None:
        w = torch.full((k,), 1.0 / k, dtype=torch.float64)
    else:
        w = prior.detach().to(torch.float64).cpu()
        if w.shape != (k,) or bool((w < 0).any()) or abs(float(w.sum()) - 1.0) > _ROW_SUM_TOL:
            raise ValueError(
                f"prior must be a length-{k} non-negative vector summing to 1 "
                "(e.g. torch.bincount(labels) / len(labels)); omit it for a uniform prior"
            )
    return float(1.0 - (w * T64.diagonal().cpu()).sum())
