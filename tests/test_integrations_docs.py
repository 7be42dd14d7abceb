"""Every recipe of docs/integrations.md runs as written, on CPU, and does what its text says."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch

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
    assert sum(len(recipes(section)) for section in tested) == DOC.count("```python")


def test_plain_pytorch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ns = run("Plain PyTorch", tmp_path, monkeypatch)
    assert ns["opt"].epoch == 2 and ns["objective"].ndim == 0


def test_hugging_face_trainer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    ns = run("Hugging Face Trainer", tmp_path, monkeypatch)
    trainer = ns["trainer"]
    assert trainer.state.global_step == 4 and ns["opt"].epoch == 1.5
    assert sigua_optimizer(trainer.optimizer) is ns["opt"]
    assert len([entry for entry in trainer.state.log_history if "loss" in entry]) == 4


def test_lightning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("lightning")
    ns = run("Lightning: automatic optimization", tmp_path, monkeypatch)
    assert ns["trainer"].global_step == 8 and sigua_optimizer(ns["trainer"].optimizers[0]).epoch == 1
    assert "objective" in ns["trainer"].callback_metrics
    for block in recipes("Lightning: manual optimization"):
        exec(compile(block, "integrations.md: manual", "exec"), ns)
    opt = sigua_optimizer(ns["trainer"].optimizers[0])
    assert ns["trainer"].global_step == 8 and opt.epoch == 1
    assert "objective" in ns["trainer"].callback_metrics


def test_accelerate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("accelerate")
    ns = run("Accelerate", tmp_path, monkeypatch)
    # 8 micro-batches an epoch, a step every second one, 3 epochs.
    assert ns["checkpoint"]["sigua"]["epoch"] == 2
    assert all(state["step"] == 12 for state in ns["opt"].state.values())
    assert isinstance(ns["checkpoint"]["state"][0]["exp_avg"], torch.Tensor)


def test_mixed_precision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ns = run("Mixed precision", tmp_path, monkeypatch)
    assert ns["result"].good.sum() > 0 and ns["scaler"].get_scale() > 0
    assert ns["model"].weight.grad is not None


def test_gradient_accumulation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ns = run("Gradient accumulation", tmp_path, monkeypatch)
    assert int(ns["selection"].good.sum()) == 96 * 6 // 10 + 1  # Eq. 5 on the whole 96


def test_per_token_losses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ns = run("Per-token losses", tmp_path, monkeypatch)
    assert ns["result"].good.shape == (4,)  # the last step selected whole sequences


def test_distributed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ns = run("Distributed: DDP and FSDP", tmp_path, monkeypatch)
    assert ns["result"].good.shape == (64,) and not torch.distributed.is_initialized()


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
