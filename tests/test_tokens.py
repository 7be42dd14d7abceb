"""Per-token losses ([batch, seq] with padding): selection over real tokens, or per sequence."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from sigua_optim import SIGUAOptimizer, functional, reference
from sigua_optim.conditions import BandSelected, NonNegativeCorrection, SmallLoss
from sigua_optim.noise import pair

VOCAB, BATCH, SEQ = 7, 4, 9


def language_model() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(VOCAB, 12), torch.nn.Linear(12, VOCAB)).double()
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)
    lengths = torch.tensor([9, 5, 1, 7])
    valid = torch.arange(SEQ)[None, :] < lengths[:, None]
    targets = torch.randint(0, VOCAB, (BATCH, SEQ), generator=g).masked_fill(~valid, -100)
    return model, tokens, targets, valid


def token_losses(model: torch.nn.Module, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = model(tokens)
    return F.cross_entropy(logits.transpose(1, 2), targets, reduction="none", ignore_index=-100)


def test_token_step_is_algorithm1_over_the_real_tokens() -> None:
    model, tokens, targets, valid = language_model()
    twin = copy.deepcopy(model)
    opt = SIGUAOptimizer(torch.optim.SGD(model.parameters(), lr=0.5), BandSelected(0.4, 0.3, 0), 0.2)
    result = opt.step(token_losses(model, tokens, targets), valid=valid)
    assert result.good.shape == (BATCH, SEQ) and not (result.good | result.bad)[~valid].any()

    losses = token_losses(twin, tokens, targets)
    real = losses[valid]
    good, bad = reference.band_selected(real.detach().tolist(), 0.6, 0.3)
    assert result.good[valid].tolist() == good and result.bad[valid].tolist() == bad
    accumulated = torch.zeros((), dtype=torch.float64)
    for i in range(real.shape[0]):  # Algorithm 1 over the 22 real tokens, n_b = 22
        if good[i]:
            accumulated = accumulated + real[i]
        elif bad[i]:
            accumulated = accumulated - 0.2 * real[i]
    (accumulated / real.shape[0]).backward()
    torch.optim.SGD(twin.parameters(), lr=0.5).step()
    torch.testing.assert_close(result.objective, accumulated.detach() / real.shape[0])
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q)


@pytest.mark.parametrize("garbage", [float("nan"), float("inf")])
def test_nonfinite_padding_is_neither_checked_nor_summed(garbage: float) -> None:
    """Losses at padding may hold anything: the step neither raises nor lets them into Eq. 3."""
    model, tokens, targets, valid = language_model()
    twin = copy.deepcopy(model)
    condition = BandSelected(0.4, 0.3, 0)
    opt = SIGUAOptimizer(torch.optim.SGD(model.parameters(), lr=0.5), condition, 0.2)
    dirty = token_losses(model, tokens, targets) + torch.zeros(BATCH, SEQ).masked_fill(~valid, garbage)
    result = opt.step(dirty, valid=valid)
    clean = SIGUAOptimizer(torch.optim.SGD(twin.parameters(), lr=0.5), condition, 0.2)
    expected = clean.step(token_losses(twin, tokens, targets), valid=valid)
    assert not result.skipped and torch.equal(result.good, expected.good)
    torch.testing.assert_close(result.objective, expected.objective)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_sequence_selection_on_the_mean_token_loss() -> None:
    model, tokens, targets, valid = language_model()
    opt = SIGUAOptimizer(torch.optim.SGD(model.parameters(), lr=0.5), SmallLoss(0.5, 0), 0.2)
    losses = token_losses(model, tokens, targets)
    per_sequence = functional.sequence_losses(losses, valid)
    torch.testing.assert_close(per_sequence, torch.stack([losses[b][valid[b]].mean() for b in range(BATCH)]))
    result = opt.step(per_sequence)
    good, _ = reference.small_loss(per_sequence.detach().tolist(), 0.5)
    assert result.good.tolist() == good


def test_nonnegative_correction_per_token_ignores_padding_targets() -> None:
    model, tokens, targets, valid = language_model()
    logits = model(tokens)
    condition = NonNegativeCorrection(pair(VOCAB, 0.3))
    flat = torch.zeros(BATCH * SEQ)
    selection = condition(flat, logits=logits, targets=targets, valid=valid.reshape(-1))
    assert not (selection.good | selection.bad)[~valid.reshape(-1)].any()
    real = condition(flat[: int(valid.sum())], logits=logits[valid], targets=targets[valid])
    assert selection.good[valid.reshape(-1)].tolist() == real.good.tolist()


def test_token_input_errors() -> None:
    model, tokens, targets, valid = language_model()
    opt = SIGUAOptimizer(torch.optim.SGD(model.parameters(), lr=0.5), SmallLoss(0.5, 0), 0.2)
    losses = token_losses(model, tokens, targets)
    with pytest.raises(
        ValueError, match="pass per-sample losses of shape \\[batch\\], or per-token losses with valid="
    ):
        opt.step(losses)
    with pytest.raises(ValueError, match="valid= must be a bool mask shaped like the losses"):
        opt.step(losses, valid=valid[:, :3])
    with pytest.raises(ValueError, match="valid= must be a bool mask"):
        opt.step(losses, valid=valid.float())
    official = SmallLoss(0.5, 0, semantics="official")
    with pytest.raises(ValueError, match="semantics='official' has no valid= mask"):
        opt.step(losses, valid=valid, condition=official)
    assert all(p.grad is None for p in model.parameters())
