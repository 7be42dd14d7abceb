"""Accelerate with SIGUA: prepare keeps the optimizer, accumulate averages Eq. 3, checkpoints carry SIGUA."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("accelerate")

from accelerate import Accelerator
from accelerate.optimizer import AcceleratedOptimizer

from sigua_optim import Selection, SIGUAOptimizer
from sigua_optim.conditions import BandSelected
from sigua_optim.integrations import sigua_optimizer

LR = 0.1


def setup() -> tuple[torch.nn.Module, SIGUAOptimizer, torch.utils.data.DataLoader[tuple[torch.Tensor, ...]]]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).double()
    base = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    opt = SIGUAOptimizer(base, BandSelected(noise_rate=0.4, band=0.3, warmup_epochs=0), gamma=0.5)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (16,), generator=g)
    return model, opt, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)


def test_prepare_keeps_our_optimizer() -> None:
    model, opt, loader = setup()
    _, prepared, _ = Accelerator(cpu=True).prepare(model, opt, loader)
    assert isinstance(prepared, AcceleratedOptimizer) and prepared.optimizer is opt
    assert sigua_optimizer(prepared) is opt and prepared.param_groups is opt.optimizer.param_groups


def test_accumulate_steps_on_the_mean_of_the_micro_batch_objectives() -> None:
    model, opt, loader = setup()
    reference = copy.deepcopy(model)
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    model, prepared, loader = accelerator.prepare(model, opt, loader)
    start = [p.detach().clone() for p in model.parameters()]
    batches, objectives, selections, after = [], [], [], []
    for x, y in loader:
        with accelerator.accumulate(model):
            losses = F.cross_entropy(model(x), y, reduction="none")
            selection = opt.select(losses)
            objective = opt.objective(losses, selection=selection)
            accelerator.backward(objective)
            prepared.step()
            prepared.zero_grad()
        batches.append((x, y))
        objectives.append(objective.detach())
        selections.append(selection)
        after.append([p.detach().clone() for p in model.parameters()])
    # No step after the first micro-batch; after the second, one SGD step on the mean of the two
    # objectives: Eq. 3 over the 8 samples with each micro-batch's own selection.
    assert all(torch.equal(a, b) for a, b in zip(after[0], start, strict=True))
    x = torch.cat([batches[0][0], batches[1][0]])
    y = torch.cat([batches[0][1], batches[1][1]])
    good = torch.cat([selections[0].good, selections[1].good])
    bad = torch.cat([selections[0].bad, selections[1].bad])
    whole = opt.objective(F.cross_entropy(reference(x), y, reduction="none"), selection=Selection(good, bad))
    torch.testing.assert_close(whole.detach(), (objectives[0] + objectives[1]) / 2)
    whole.backward()
    for p, stepped in zip(reference.parameters(), after[1], strict=True):
        assert p.grad is not None
        torch.testing.assert_close(p.detach() - LR * p.grad, stepped)


def test_state_dict_round_trip_through_the_accelerated_optimizer(tmp_path: Path) -> None:
    model, opt, loader = setup()
    accelerator = Accelerator(cpu=True)
    model, prepared, loader = accelerator.prepare(model, opt, loader)
    x, y = next(iter(loader))
    opt.set_epoch(3.5)
    accelerator.backward(opt.objective(F.cross_entropy(model(x), y, reduction="none")))
    prepared.step()
    state = prepared.state_dict()
    assert state["sigua"]["epoch"] == 3.5 and state["sigua"]["gamma"] == 0.5
    # accelerator.save_state / load_state go through the same state dicts.
    accelerator.save_state(str(tmp_path))
    opt.set_epoch(9)
    accelerator.load_state(str(tmp_path))
    assert opt.epoch == 3.5

    model2, opt2, loader2 = setup()
    opt2.gamma = 0.1
    model2, prepared2, loader2 = accelerator.prepare(model2, opt2, loader2)
    prepared2.load_state_dict(state)
    assert (opt2.epoch, opt2.gamma, opt2.condition.epoch) == (3.5, 0.5, 3.5)
    momentum = [s["momentum_buffer"] for s in opt.state.values()]
    assert all(
        torch.equal(a, s["momentum_buffer"]) for a, s in zip(momentum, opt2.state.values(), strict=True)
    )
