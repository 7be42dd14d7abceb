"""Every recipe of docs/integrations.md runs as written, on CPU, and does what its text says."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch

from sigua_optim import reference
from sigua_optim.integrations import sigua_optimizer

DOC = (Path(__file__).resolve().parents[1] / "docs" / "integrations.md").read_text()
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore:`isinstance\\(treespec")


def recipes(section: str) -> list[str]:
    """The python blocks under the heading ``## {section}``, in order."""
    body = re.split(r"^## ", DOC, flags=re.M)
    text = next(part for part in body if part.startswith(section + "\n"))
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, f"no python block under '## {section}'"
    return blocks


def run(section: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "recipe"}
    for block in recipes(section):
        exec(compile(block, f"integrations.md: {section}", "exec"), namespace)
    return namespace


def test_every_python_block_is_tested() -> None:
    tested = ["Plain PyTorch", "Hugging Face Trainer", "Lightning: automatic optimization"]
    tested += ["Lightning: manual optimization", "Accelerate", "Mixed precision", "Gradient accumulation"]
    tested += ["Per-token losses", "Distributed: DDP and FSDP", "The noise is unknown"]
    tested += ["Co-teaching, and Co-teaching + SIGUA"]
    assert sum(len(recipes(section)) for section in tested) == DOC.count("```python")


def test_plain_pytorch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ns = run("Plain PyTorch", tmp_path, monkeypatch)
    assert ns["opt"].epoch == 2 and ns["objective"].ndim == 0


def test_co_teaching(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each network descends on its peer's small-loss samples and ascends on the band above them."""
    ns = run("Co-teaching, and Co-teaching + SIGUA", tmp_path, monkeypatch)
    f_losses, g_losses = ns["f_losses"].detach(), ns["g_losses"].detach()
    chosen = ns["f_opt"].condition.condition(g_losses)  # BandSelected on the peer's losses
    assert ns["f_opt"].epoch == ns["g_opt"].epoch == 2
    assert torch.equal(ns["f_result"].good, chosen.good) and torch.equal(ns["f_result"].bad, chosen.bad)
    own_choice = ns["f_opt"].condition.condition(f_losses)  # what f alone would pick
    assert bool(ns["f_result"].bad.any()) and not torch.equal(chosen.good, own_choice.good)


def test_hugging_face_trainer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    ns = run("Hugging Face Trainer", tmp_path, monkeypatch)
    trainer = ns["trainer"]
    opt = sigua_optimizer(trainer.optimizer)
    assert trainer.state.global_step == 4 and opt.epoch == 1.5 and opt.gamma == 0.01
    # The Trainer's own AdamW from the arguments, with its no-decay group.
    assert type(opt.optimizer) is torch.optim.AdamW
    assert [(g["initial_lr"], g["weight_decay"]) for g in opt.param_groups] == [(1e-3, 0.01), (1e-3, 0.0)]
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    # 8 samples a micro-batch at epochs 0, 0.5, 1, 1.5: rho = 1, 0.8, 0.6, 0.6; Eq. 5 keeps those
    # with at most 8 rho smaller: 8, 7, 5, 5; Eq. 6 adds those with at most 8 (rho + 0.1): 0, 1, 1, 1.
    assert [entry["sigua_good_fraction"] for entry in logs] == [1.0, 0.875, 0.625, 0.625]
    assert [entry["sigua_bad_fraction"] for entry in logs] == [0.0, 0.125, 0.125, 0.125]
    assert [entry["sigua_keep_rate"] for entry in logs] == pytest.approx([1.0, 0.8, 0.6, 0.6])
    assert all(entry["sigua_mean_loss"] > entry["loss"] for entry in logs[1:])


def lightning_selection(trainer: Any) -> tuple[float, float, float]:
    metrics = trainer.callback_metrics
    return tuple(float(metrics[key]) for key in ("sigua_good_fraction", "sigua_bad_fraction", "sigua_epoch"))


def test_lightning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("lightning")
    ns = run("Lightning: automatic optimization", tmp_path, monkeypatch)
    # The last batch, 64 samples at epoch 1: rho = 0.5 keeps those with at most 32 smaller, 33
    # (Eq. 5); those with at most 64 * 0.65 = 41.6 smaller and not good are bad: 9 (Eq. 6).
    assert ns["trainer"].global_step == 8 and sigua_optimizer(ns["trainer"].optimizers[0]).epoch == 1
    assert lightning_selection(ns["trainer"]) == (33 / 64, 9 / 64, 1.0)
    for block in recipes("Lightning: manual optimization"):
        exec(compile(block, "integrations.md: manual", "exec"), ns)
    opt = sigua_optimizer(ns["trainer"].optimizers[0])
    assert ns["trainer"].global_step == 8 and opt.epoch == 1
    assert lightning_selection(ns["trainer"]) == (33 / 64, 9 / 64, 1.0)


def test_accelerate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("accelerate")
    ns = run("Accelerate", tmp_path, monkeypatch)
    # 8 micro-batches an epoch, a step every second one, 3 epochs.
    assert ns["checkpoint"]["sigua"]["epoch"] == 2
    assert all(state["step"] == 12 for state in ns["opt"].state.values())
    assert isinstance(ns["checkpoint"]["state"][0]["exp_avg"], torch.Tensor)


def test_mixed_precision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ns = run("Mixed precision", tmp_path, monkeypatch)
    # The same model and batch again; at epoch 0 SmallLoss keeps every sample (rho = 1), so the
    # step is SGD on the mean loss, unscaled: a scaled or unstepped gradient lands elsewhere.
    torch.manual_seed(0)
    model = torch.nn.Linear(20, 4)
    x, y = torch.randn(64, 20), torch.randint(0, 4, (64,))
    assert torch.equal(x, ns["x"]) and torch.equal(y, ns["y"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    losses = torch.nn.functional.cross_entropy(logits.float(), y, reduction="none")
    losses.mean().backward()
    assert ns["result"].good.all() and not ns["result"].bad.any()
    assert float(ns["result"].objective) == pytest.approx(float(losses.mean()), rel=1e-6)
    for name, p in model.named_parameters():
        assert p.grad is not None
        torch.testing.assert_close(getattr(ns["model"], name), p.detach() - 0.1 * p.grad)
    assert ns["scaler"].get_scale() == 2.0**16  # the first scale, kept: the gradients were finite


def test_gradient_accumulation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ns = run("Gradient accumulation", tmp_path, monkeypatch)
    assert int(ns["selection"].good.sum()) == 96 * 6 // 10 + 1  # Eq. 5 on the whole 96


def test_per_token_losses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ns = run("Per-token losses", tmp_path, monkeypatch)
    # The last step selected whole sequences on their mean valid-token loss, as the paper's loops
    # do on those 4 numbers (rho = 0.7, band 0.1), and Eq. 3 divides by the 4 sequences.
    valid = ns["valid"]
    tokens = ns["token_losses"].detach()
    sequences = ((tokens * valid).sum(dim=1) / valid.sum(dim=1)).tolist()
    good, bad = reference.band_selected(sequences, 0.7, 0.1)
    assert ns["result"].good.tolist() == good and ns["result"].bad.tolist() == bad and sum(bad) == 1
    expected = reference.algorithm1(sequences, good, bad, 0.01)
    assert float(ns["result"].objective) == pytest.approx(expected, rel=1e-6)


def test_distributed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # One process: the recipe runs as written and its step under DDP is SGD on Eq. 3 (SmallLoss
    # keeps every sample at epoch 0, so the mean loss). Selection across ranks, which one process
    # cannot show, is tested with 2 processes in tests/test_distributed.py.
    ns = run("Distributed: DDP and FSDP", tmp_path, monkeypatch)
    assert not torch.distributed.is_initialized()
    torch.manual_seed(0)
    model = torch.nn.Linear(20, 4)
    x, y = torch.randn(64, 20), torch.randint(0, 4, (64,))
    assert torch.equal(x, ns["x"]) and torch.equal(y, ns["y"])
    torch.nn.functional.cross_entropy(model(x), y).backward()
    assert ns["result"].good.all() and not ns["result"].bad.any()
    for name, p in model.named_parameters():
        assert p.grad is not None
        torch.testing.assert_close(getattr(ns["model"].module, name), p.detach() - 0.1 * p.grad)


def test_the_noise_is_unknown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    monkeypatch.chdir(tmp_path)
    plain, trainer_block = recipes("The noise is unknown")
    ns: dict[str, Any] = {"__name__": "recipe"}
    exec(compile(plain, "integrations.md: The noise is unknown", "exec"), ns)
    condition = ns["opt"].condition
    assert ns["opt"].epoch == 3 and 0 < condition.noise_rate < 1  # estimated at epochs 1, 2, 3
    assert condition.band == min(0.15, condition.noise_rate)
    exec(compile(trainer_block, "integrations.md: The noise is unknown", "exec"), ns)
    assert ns["trainer"].state.global_step == 8 and ns["opt"].condition.estimator.epoch == 1
    assert 0 < ns["opt"].condition.noise_rate < 1  # estimated from epoch 0's 128 losses
