"""transformers.Trainer with SIGUA: a tiny random BERT classifier trained on CPU, checked against Eq. 3."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from sigua_optim import SIGUAOptimizer, reference
from sigua_optim.conditions import BandSelected, NonNegativeCorrection
from sigua_optim.integrations.transformers import SIGUAEpochCallback, SIGUALoss, SIGUATrainer
from sigua_optim.losses import backward_corrected_cross_entropy
from sigua_optim.noise import symmetric

NOISE, BAND, WARMUP, GAMMA = 0.5, 0.25, 1.0, 0.5


class Call(NamedTuple):
    logits: torch.Tensor
    labels: torch.Tensor
    num_items: Any
    epoch: float


def tiny_bert(num_labels: int = 3) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=num_labels,
    )
    return BertForSequenceClassification(config)


def tiny_dataset(n: int = 32, num_labels: int = 3) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50, (n, 8), generator=g)
    labels = torch.randint(0, num_labels, (n,), generator=g)
    return [{"input_ids": ids[i], "labels": labels[i]} for i in range(n)]


def arguments(tmp_path: Path, **overrides: Any) -> TrainingArguments:
    settings: dict[str, Any] = {
        "output_dir": str(tmp_path),
        "use_cpu": True,
        "report_to": "none",
        "save_strategy": "no",
        "per_device_train_batch_size": 8,
        "gradient_accumulation_steps": 2,
        "num_train_epochs": 2,
        "logging_steps": 1,
        "disable_tqdm": True,
        "seed": 0,
    }
    return TrainingArguments(**{**settings, **overrides})


def recorded(trainer: Trainer, opt: SIGUAOptimizer, calls: list[Call]) -> None:
    """Wrap the trainer's compute_loss_func to record what each micro-batch saw."""
    loss_func = trainer.compute_loss_func

    def wrapped(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        loss: torch.Tensor = loss_func(outputs, labels, num_items_in_batch=num_items_in_batch)
        calls.append(Call(outputs["logits"].detach().clone(), labels.clone(), num_items_in_batch, opt.epoch))
        return loss

    trainer.compute_loss_func = wrapped


def eq3_by_hand(call: Call) -> float:
    """Eqs. 4-6 and Algorithm 1 as the paper's loops, divided by the accumulated batch size."""
    losses = F.cross_entropy(call.logits, call.labels, reduction="none").double().tolist()
    rate = reference.keep_rate(NOISE, call.epoch, WARMUP)
    good, bad = reference.band_selected(losses, rate, BAND)
    return reference.algorithm1(losses, good, bad, GAMMA) * len(losses) / float(call.num_items)


def make_opt(model: torch.nn.Module) -> SIGUAOptimizer:
    return SIGUAOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), BandSelected(NOISE, BAND, WARMUP), GAMMA
    )


def check_logged_objective(trainer: Trainer, calls: list[Call]) -> None:
    # 32 samples, batches of 8, 2 micro-batches per step: 2 steps an epoch, 2 epochs.
    assert [c.num_items for c in calls] == [16] * 8
    assert [c.epoch for c in calls] == [0.0, 0.0, 0.5, 0.5, 1.0, 1.0, 1.5, 1.5]
    logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    by_hand = [eq3_by_hand(calls[i]) + eq3_by_hand(calls[i + 1]) for i in range(0, 8, 2)]
    assert logged == pytest.approx(by_hand, abs=5e-5)  # transformers < 5 rounds logs to 4 digits


def test_sigua_trainer_logs_eq3_over_the_accumulated_batch(tmp_path: Path) -> None:
    model = tiny_bert()
    before = [p.detach().clone() for p in model.parameters()]
    opt = make_opt(model)
    trainer = SIGUATrainer(
        model=model, args=arguments(tmp_path), train_dataset=tiny_dataset(), optimizers=(opt, None)
    )
    calls: list[Call] = []
    recorded(trainer, opt, calls)
    trainer.train()
    check_logged_objective(trainer, calls)
    assert opt.epoch == 1.5 and trainer.state.epoch == 2.0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    # Evaluation: the plain mean cross entropy, not the SIGUA objective.
    metrics = trainer.evaluate(tiny_dataset(8))
    model.eval()
    with torch.no_grad():
        batch = tiny_dataset(8)
        logits = model(torch.stack([b["input_ids"] for b in batch])).logits
    expected = F.cross_entropy(logits, torch.stack([b["labels"] for b in batch]))
    assert metrics["eval_loss"] == pytest.approx(float(expected), rel=1e-5)


def test_plain_trainer_with_the_loss_and_the_callback(tmp_path: Path) -> None:
    model = tiny_bert()
    opt = make_opt(model)
    trainer = Trainer(
        model=model,
        args=arguments(tmp_path),
        train_dataset=tiny_dataset(),
        optimizers=(opt, None),
        compute_loss_func=SIGUALoss(opt),
        callbacks=[SIGUAEpochCallback()],
    )
    calls: list[Call] = []
    recorded(trainer, opt, calls)
    trainer.train()
    check_logged_objective(trainer, calls)


def test_a_condition_reading_logits_gets_them_from_the_trainer(tmp_path: Path) -> None:
    t = symmetric(3, 0.2)
    model = tiny_bert()
    opt = SIGUAOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), NonNegativeCorrection(t), gamma=1.0)
    trainer = SIGUATrainer(
        model=model,
        args=arguments(tmp_path, max_steps=1),
        train_dataset=tiny_dataset(16),
        optimizers=(opt, None),
        per_sample_loss=lambda logits, labels: backward_corrected_cross_entropy(logits, labels, t),
    )
    trainer.train()
    assert trainer.state.global_step == 1


def test_bad_input_says_what_to_change(tmp_path: Path) -> None:
    model = tiny_bert()
    opt = make_opt(model)
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match=r"SIGUATrainer needs optimizers=\(SIGUAOptimizer"):
        SIGUATrainer(model=model, args=arguments(tmp_path), optimizers=(base, None))
    with pytest.raises(TypeError, match="SIGUATrainer needs optimizers="):
        SIGUATrainer(model=model, args=arguments(tmp_path))
    with pytest.raises(TypeError, match="instead of compute_loss_func="):
        SIGUATrainer(
            model=model, args=arguments(tmp_path), optimizers=(opt, None), compute_loss_func=F.l1_loss
        )
    with pytest.raises(TypeError, match="SIGUALoss needs the SIGUAOptimizer"):
        SIGUALoss(base)  # type: ignore[arg-type]
    logits = torch.randn(4, 3, requires_grad=True)
    with pytest.raises(ValueError, match="SIGUALoss got no labels"):
        SIGUALoss(opt)({"logits": logits}, None)
    with pytest.raises(ValueError, match=r"returned only \['last_hidden_state'\]"):
        SIGUALoss(opt)({"last_hidden_state": logits}, torch.zeros(4, dtype=torch.long))
    trainer = Trainer(
        model=model,
        args=arguments(tmp_path),
        train_dataset=tiny_dataset(16),
        optimizers=(base, None),
        callbacks=[SIGUAEpochCallback()],
    )
    with pytest.raises(TypeError, match="no SIGUAOptimizer inside AcceleratedOptimizer"):
        trainer.train()
