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
from sigua_optim.integrations import sigua_optimizer
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


def selected_by_hand(call: Call) -> tuple[list[float], list[bool], list[bool]]:
    """The per-sample losses of a micro-batch and Eqs. 4-6 as the paper's loops."""
    losses = F.cross_entropy(call.logits, call.labels, reduction="none").double().tolist()
    good, bad = reference.band_selected(losses, reference.keep_rate(NOISE, call.epoch, WARMUP), BAND)
    return losses, good, bad


def eq3_by_hand(call: Call, reduction: str = "paper") -> float:
    """Algorithm 1 divided by the accumulated batch size; or the authors' reduction weighted by
    the micro-batch's share of it."""
    losses, good, bad = selected_by_hand(call)
    if reduction == "official":
        return reference.official_objective(losses, good, bad, GAMMA) * len(losses) / float(call.num_items)
    return reference.algorithm1(losses, good, bad, GAMMA) * len(losses) / float(call.num_items)


def make_opt(model: torch.nn.Module) -> SIGUAOptimizer:
    return SIGUAOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), BandSelected(NOISE, BAND, WARMUP), GAMMA
    )


def check_logged_objective(trainer: Trainer, calls: list[Call], reduction: str = "paper") -> None:
    # 32 samples, batches of 8, 2 micro-batches per step: 2 steps an epoch, 2 epochs.
    assert [c.num_items for c in calls] == [16] * 8
    assert [c.epoch for c in calls] == [0.0, 0.0, 0.5, 0.5, 1.0, 1.0, 1.5, 1.5]
    logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    by_hand = [
        eq3_by_hand(calls[i], reduction) + eq3_by_hand(calls[i + 1], reduction) for i in range(0, 8, 2)
    ]
    assert logged == pytest.approx(by_hand, abs=5e-5)  # transformers < 5 rounds logs to 4 digits


def check_logged_selection(trainer: Trainer, calls: list[Call], calls_per_log: int) -> None:
    """Each training log holds the selection of the micro-batches since the previous log."""
    entries = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(entries) * calls_per_log == len(calls)
    for k, entry in enumerate(entries):
        window = calls[k * calls_per_log : (k + 1) * calls_per_log]
        picked = [selected_by_hand(call) for call in window]
        n = sum(len(losses) for losses, _, _ in picked)
        assert entry["sigua_good_fraction"] == pytest.approx(sum(sum(good) for _, good, _ in picked) / n)
        assert entry["sigua_bad_fraction"] == pytest.approx(sum(sum(bad) for _, _, bad in picked) / n)
        assert entry["sigua_mean_loss"] == pytest.approx(
            sum(sum(losses) for losses, _, _ in picked) / n, rel=1e-5
        )
        assert entry["sigua_epoch"] == window[-1].epoch
        assert entry["sigua_keep_rate"] == pytest.approx(reference.keep_rate(NOISE, window[-1].epoch, WARMUP))
    assert entries[-1]["sigua_bad_fraction"] > 0  # SIGUA selects as the warm-up ends


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
    check_logged_selection(trainer, calls, calls_per_log=2)
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


def test_the_selection_is_logged_over_each_logging_window(tmp_path: Path) -> None:
    model = tiny_bert()
    trainer = SIGUATrainer(
        model=model,
        args=arguments(tmp_path, logging_steps=2),
        train_dataset=tiny_dataset(),
        condition=BandSelected(NOISE, BAND, WARMUP),
        gamma=GAMMA,
    )
    calls: list[Call] = []
    trainer.create_optimizer()
    recorded(trainer, sigua_optimizer(trainer.optimizer), calls)
    trainer.train()
    check_logged_selection(trainer, calls, calls_per_log=4)


def named_groups(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> list[dict[str, Any]]:
    """The param groups with parameter names instead of tensors, and the lr the schedule started at."""
    names = {id(p): name for name, p in model.named_parameters()}
    return [
        {**group, "params": [names[id(p)] for p in group["params"]], "lr": None}
        for group in optimizer.param_groups
    ]


def test_sigua_trainer_builds_the_trainers_own_optimizer(tmp_path: Path) -> None:
    args = arguments(tmp_path, learning_rate=3e-4, weight_decay=0.05, adam_beta2=0.99, warmup_steps=1)
    plain = Trainer(model=tiny_bert(), args=args, train_dataset=tiny_dataset())
    plain_eval_loss = plain.evaluate(tiny_dataset(8))["eval_loss"]
    plain.train()
    model = tiny_bert()
    trainer = SIGUATrainer(
        model=model,
        args=args,
        train_dataset=tiny_dataset(),
        condition=BandSelected(NOISE, BAND, WARMUP),
        gamma=GAMMA,
    )
    # Evaluation before the optimizer is built: the plain mean loss, as the plain Trainer's.
    assert trainer.evaluate(tiny_dataset(8))["eval_loss"] == pytest.approx(plain_eval_loss, rel=1e-5)
    trainer.train()
    opt = sigua_optimizer(trainer.optimizer)
    assert type(opt.optimizer) is type(plain.optimizer.optimizer) is torch.optim.AdamW
    groups = named_groups(opt, model)
    assert groups == named_groups(plain.optimizer, plain.model)
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0] and groups[0]["initial_lr"] == 3e-4
    assert (
        "bert.embeddings.LayerNorm.weight" in groups[1]["params"] and "classifier.bias" in groups[1]["params"]
    )
    assert opt.gamma == GAMMA and isinstance(opt.condition, BandSelected)
    logged_lr = [[e["learning_rate"] for e in t.state.log_history if "loss" in e] for t in (trainer, plain)]
    assert logged_lr[0] == logged_lr[1] and len(logged_lr[0]) == 4
    bad = [e["sigua_bad_fraction"] for e in trainer.state.log_history if "loss" in e]
    assert bad[0] == 0 and min(bad[1:]) > 0  # SIGUA selects as the warm-up (1 epoch) goes


def test_official_reduction_weighs_each_micro_batch_by_its_share(tmp_path: Path) -> None:
    model = tiny_bert()
    opt = SIGUAOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        BandSelected(NOISE, BAND, WARMUP),
        GAMMA,
        reduction="official",
    )
    trainer = SIGUATrainer(
        model=model, args=arguments(tmp_path), train_dataset=tiny_dataset(), optimizers=(opt, None)
    )
    calls: list[Call] = []
    recorded(trainer, opt, calls)
    trainer.train()
    check_logged_objective(trainer, calls, reduction="official")


def test_plain_trainer_with_the_loss_and_the_callback(tmp_path: Path) -> None:
    model = tiny_bert()
    opt = make_opt(model)
    loss = SIGUALoss(opt)

    class OwnTrainer(Trainer):
        """A Trainer subclass of the user's own, with the log override docs/integrations.md shows."""

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            if "loss" in logs:
                logs.update(loss.pop_logs())
            super().log(logs, start_time)

    trainer = OwnTrainer(
        model=model,
        args=arguments(tmp_path),
        train_dataset=tiny_dataset(),
        optimizers=(opt, None),
        compute_loss_func=loss,
        callbacks=[SIGUAEpochCallback()],
    )
    calls: list[Call] = []
    recorded(trainer, opt, calls)
    trainer.train()
    check_logged_objective(trainer, calls)
    check_logged_selection(trainer, calls, calls_per_log=2)


def test_a_condition_reading_logits_gets_them_from_the_trainer(tmp_path: Path) -> None:
    t = symmetric(3, 0.2)
    model = tiny_bert()
    with torch.no_grad():
        model.classifier.weight.mul_(1000)  # confident logits: some corrected losses are negative
    opt = SIGUAOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), NonNegativeCorrection(t), gamma=1.0)
    trainer = SIGUATrainer(
        model=model,
        args=arguments(tmp_path, max_steps=1),
        train_dataset=tiny_dataset(16),
        optimizers=(opt, None),
        per_sample_loss=lambda logits, labels: backward_corrected_cross_entropy(logits, labels, t),
    )
    calls: list[Call] = []
    recorded(trainer, opt, calls)
    trainer.train()
    # Eqs. 11-12 on the logits the Trainer computed, as the paper's loops; Algorithm 1 over 16.
    inverse = torch.linalg.inv(t.double())
    by_hand, bad = 0.0, 0
    for call in calls:
        class_losses = -torch.log_softmax(call.logits.double(), dim=1)
        corrected = (class_losses * inverse[call.labels]).sum(dim=1).tolist()
        good, ascend, _ = reference.nonnegative_correction(
            class_losses.tolist(), call.labels.tolist(), inverse.tolist(), "sample", True
        )
        by_hand += reference.algorithm1(corrected, good, ascend, 1.0) * len(corrected) / 16
        bad += sum(ascend)
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(calls) == 2 and logged[0]["loss"] == pytest.approx(by_hand, rel=1e-4)
    assert logged[0]["sigua_bad_fraction"] == bad / 16 and 0 < bad < 16


def test_bad_input_says_what_to_change(tmp_path: Path) -> None:
    model = tiny_bert()
    opt = make_opt(model)
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(
        TypeError, match=r"optimizers\[0\] must be a SIGUAOptimizer, got SGD: leave optimizers="
    ):
        SIGUATrainer(model=model, args=arguments(tmp_path), optimizers=(base, None))
    with pytest.raises(TypeError, match=r"SIGUATrainer needs condition= \(e.g. BandSelected"):
        SIGUATrainer(model=model, args=arguments(tmp_path))
    with pytest.raises(TypeError, match="both a SIGUAOptimizer in optimizers= and condition=/gamma="):
        SIGUATrainer(model=model, args=arguments(tmp_path), optimizers=(opt, None), gamma=0.1)
    with pytest.raises(TypeError, match="condition must be a condition object"):
        SIGUATrainer(model=model, args=arguments(tmp_path), condition=BandSelected)
    with pytest.raises(ValueError, match=r"gamma must be a finite number in \[0, 1\]"):
        SIGUATrainer(model=model, args=arguments(tmp_path), condition=BandSelected(0.2, 0.1), gamma=2)
    with pytest.raises(ValueError, match="reduction must be one of 'paper', 'official'"):
        SIGUATrainer(
            model=model, args=arguments(tmp_path), condition=BandSelected(0.2, 0.1), reduction="mean"
        )
    with pytest.raises(TypeError, match="SIGUALoss has no optimizer to train with"):
        SIGUALoss(None)({"logits": torch.randn(4, 3, requires_grad=True)}, torch.zeros(4, dtype=torch.long))
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


def test_the_loss_reads_nothing_back_until_the_logs_are_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    model = torch.nn.Linear(4, 3)
    loss = SIGUALoss(make_opt(model))
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(3)]
    with monkeypatch.context() as patch:
        for read in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__"):
            patch.setattr(torch.Tensor, read, lambda *args: pytest.fail("a host read before pop_logs"))
        for x, y in batches:
            # an int count: a CPU tensor's count is read (validated) by objective(), a GPU one's is not
            loss({"logits": model(x)}, y, num_items_in_batch=16).backward()
    logs = loss.pop_logs()
    losses = torch.cat([F.cross_entropy(model(x), y, reduction="none") for x, y in batches])
    assert logs["sigua_good_fraction"] == 1.0 and logs["sigua_bad_fraction"] == 0.0  # epoch 0: rho = 1
    assert logs["sigua_mean_loss"] == pytest.approx(float(losses.detach().mean()))
    assert loss.pop_logs() == {}  # the sums start over
