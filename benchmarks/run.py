"""Reproduce SIGUA's experiments: ``python -m benchmarks.run [all|sets|set1|set2|fig1|sweep] [options]``.

* ``fig1``: Figure 1's oracle shift: every sample good until ``--shift`` (default: half the
  epochs), then ``KnownClean`` (good = truly clean, bad = flipped) with each of ``--gammas``
  (default 0 and 0.01); SGD 0.01 / 0.9, the deep MLP, sym-80. The gammas share the pre-shift
  training.
* ``set1``: Standard (``AllGood``), Self-Teach (``SmallLoss``), SIGUA_SL (``BandSelected``),
  Co-teaching (two networks, ``Peer(SmallLoss)``) and Co-teaching + SIGUA (``Peer(BandSelected)``);
  Adam 1e-3, lr decayed linearly to 0 from 40% of the epochs (80 of 200), T_k = 10,
  gamma 0.01 (0.001 for pair noise). Co-teaching's records are its first network's.
* ``set2``: BC (``AllGood``), nnBC / SIGUA_BC (``NonNegativeCorrection(T, ascend=False/True)``)
  on the backward-corrected loss; Adam 1e-3 (betas 0.9, 0.999), lr / 10 every 10 epochs,
  gamma 1.0, the class-level criterion (``criterion="class"``).
* ``sets``: the six methods of set1 and set2.
* ``all`` (default): ``fig1`` then ``sets``, with the interpretation printed beside the table.
* ``sweep``: SIGUA_SL with the set1 recipe over the grid ``--bands`` (delta = r * eps) x
  ``--gammas`` x ``--warmups`` (T_k), and Self-Teach at each T_k as the baseline; heat-maps of the
  test accuracy, one panel per noise and T_k.

``--dataset``: ``digits`` (scikit-learn's, bundled), ``mnist`` (IDX files from ``--data-dir``;
the real MNIST test images give "MNIST-10k", 8,000 / 2,000) or ``fashion-mnist`` (60,000 /
10,000, Debian's ``dataset-fashion-mnist`` package or ``--data-dir``).

A rerun with the same ``--out`` resumes: every (experiment, method, noise, seed) already
complete in its ``results.jsonl`` is skipped, and the records of an unfinished one are dropped.

``--paper-recipe`` switches to the paper's settings where the defaults differ: set2 with Adam
betas (0.9, 0.1) and the authors' per-sample criterion, fig1 with gammas 0 and 0.001.
docs/results.md says why the defaults differ and how each was chosen.

Every method trains through the public ``SIGUAOptimizer`` API. Writes ``results.jsonl`` (one
record per experiment, method, noise, seed and epoch, with the epoch's training seconds),
``table.md`` and ``<experiment>.png`` under ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from benchmarks import report
from benchmarks.data import (
    DataError,
    Split,
    fashion_mnist_dir,
    load_digits_split,
    load_fashion_mnist_split,
    load_mnist_split,
    mnist_dir,
)
from benchmarks.models import MODELS
from benchmarks.noise_estimation import class_dependent, offline_estimate
from sigua_optim import SIGUAOptimizer
from sigua_optim.conditions import (
    AllGood,
    BandSelected,
    KnownClean,
    NonNegativeCorrection,
    Peer,
    SmallLoss,
)
from sigua_optim.losses import BackwardCorrection, class_losses
from sigua_optim.noise import (
    check_transition_matrix,
    corrupt,
    estimate_noise_rate,
    instance_dependent,
    pair,
    symmetric,
)

SET1 = ("standard", "self-teach", "sigua-sl", "co-teaching", "co-teaching-sigua")
PEERS = ("co-teaching", "co-teaching-sigua")  # two networks, each selecting with the other's losses
SET2 = ("bc", "nnbc", "sigua-bc")
EXPERIMENTS = {"all": SET1 + SET2, "sets": SET1 + SET2, "set1": SET1, "set2": SET2, "fig1": (), "sweep": ()}
NOISES = (
    "sym-20, sym-50, pair-45 (any sym-<percent> / pair-<percent>), idn-40 (instance-dependent, any"
    " idn-<percent>), classdep (class i flips at 0.1 + 0.04 i, half to i + 1, half to i + 5) or a"
    " k x k text file"
)
CRITERIA = ("class", "sample", "total")
# delta of Eq. 6: the authors' end-of-schedule bad-set size, eps * r with their per-dataset
# r = 0.4, 0.3, 0.7 (docs/differences.md).
PAPER_BANDS = {"sym-20": 0.08, "sym-50": 0.15, "pair-45": 0.31}
BAND_FACTOR = 0.3  # delta = 0.3 * eps for any other noise


RunKey = tuple[str, str, str, str, int, str]  # experiment, dataset, model, noise, seed, method


def _key(record: dict[str, Any]) -> RunKey:
    fields = ("experiment", "dataset", "model", "noise", "seed", "method")
    return tuple(record[f] for f in fields)


class Recorder:
    """Writes one JSON line per epoch to ``results.jsonl`` and shows the latest test accuracy on
    the progress bar. Resumes: the runs already complete in the file (every epoch of
    ``epochs[experiment]`` recorded) are kept and reported done; an unfinished run's lines are dropped."""

    def __init__(self, path: Path, epochs: dict[str, int], bar: tqdm[Any]) -> None:
        old = report.read_records(path) if path.is_file() else []
        seen: dict[RunKey, set[int]] = {}
        for record in old:
            seen.setdefault(_key(record), set()).add(record["epoch"])
        whole = {name: set(range(1, count + 1)) for name, count in epochs.items()}
        self.complete = {key for key, done in seen.items() if whole.get(key[0]) == done}
        kept = [r for r in old if _key(r) in self.complete]
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self.sink, self.bar = path.open("a"), bar

    def write(self, record: dict[str, Any]) -> None:
        self.sink.write(json.dumps(record) + "\n")
        self.sink.flush()  # readable while the run goes on
        self.bar.set_postfix_str(
            f"{record['method']} {record['noise']} seed {record['seed']} test {record['test_acc']:.3f}",
            refresh=False,
        )

    def close(self) -> None:
        self.sink.close()


@dataclass(frozen=True)
class Emitter:
    """Records the epochs of one (experiment, noise, seed): ``emit(method, epoch, metrics)``;
    ``name`` and ``fields`` (the sweep's) rename every method and add fields to its records."""

    recorder: Recorder
    base: dict[str, Any]
    name: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)

    def __call__(self, method: str, epoch: int, metrics: dict[str, Any]) -> None:
        method = self.name or method
        self.recorder.write({**self.base, "method": method, "epoch": epoch, **self.fields, **metrics})

    def done(self, method: str) -> bool:
        """Whether the run of ``method`` is complete in the records (a resumed run skips it)."""
        return _key({**self.base, "method": self.name or method}) in self.recorder.complete


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line: ``prog: error: message``, exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


@dataclass(frozen=True)
class Noise:
    name: str
    T: torch.Tensor  # float64 k x k; instance-dependent noise: the realised class-level matrix
    eps: float | None = None  # the rate the conditions get, when not T's own (an estimate)
    instance: float | None = None  # instance-dependent noise (Xia et al.) at this mean rate

    @property
    def rate(self) -> float:
        return estimate_noise_rate(self.T) if self.eps is None else self.eps


def parse_noise(spec: str, k: int) -> Noise:
    """``sym-50`` / ``pair-45`` / ``idn-40`` (percent), ``classdep`` or the path of a
    whitespace-separated k x k matrix. ``idn``'s T is symmetric at the rate until
    :func:`apply_noise` replaces it with the realised one."""
    if spec == "classdep":
        return Noise(spec, class_dependent(k))
    match = re.fullmatch(r"(sym|pair|idn)-(\d+(?:\.\d+)?)", spec)
    if match:
        eps = float(match[2]) / 100
        if eps >= 1:
            raise ValueError(f"noise {spec}: the rate must be in [0, 100) percent, e.g. sym-50")
        instance = eps if match[1] == "idn" else None
        return Noise(spec, (pair if match[1] == "pair" else symmetric)(k, eps), instance=instance)
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"unknown noise {spec!r}: pass {NOISES}")
    T = check_transition_matrix(torch.from_numpy(np.loadtxt(path, ndmin=2)), name=str(path))
    if T.shape[0] != k:
        raise ValueError(f"{path} is {T.shape[0]} x {T.shape[0]}, the data has {k} classes")
    return Noise(path.stem, T)


def _comma_list(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        return [kind(item) for item in text.split(",") if item]

    return parse


def _method(name: str) -> str:
    if name not in SET1 + SET2:
        raise argparse.ArgumentTypeError(f"unknown method {name!r}: pass some of {SET1 + SET2}")
    return name


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1): pass a fraction, e.g. 0.5")
    return value


def _noise_rate(text: str) -> str | float:
    """``--noise-rate``: ``true``, ``estimate``, ``auto`` or a fraction."""
    return text if text in ("true", "estimate", "auto") else _fraction(text)


def _ratio(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"band ratio {text} is not in [0, 1]: delta = ratio * eps")
    return value


def _gamma(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"gamma {text} is not in [0, 1]: e.g. 0.01")
    return value


def _epochs(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"T_k {text} is not a number of epochs >= 0")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def build_parser() -> Parser:
    p = Parser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", nargs="?", default="all", choices=list(EXPERIMENTS))
    p.add_argument("--dataset", choices=["digits", "mnist", "fashion-mnist"], default="digits")
    p.add_argument("--data-dir", help="IDX folder (default: mnist $SIGUA_MNIST_DIR; fashion-mnist "
                   "$SIGUA_FASHION_MNIST_DIR, else the dataset-fashion-mnist package's)")  # fmt: skip
    p.add_argument("--noise", type=_comma_list(str), help=f"comma list of {NOISES}; "
                   "default sym-50 (fig1: sym-80)")  # fmt: skip
    p.add_argument("--noise-rate", type=_noise_rate, default="true", help="eps given to "
                   "SmallLoss/BandSelected: true (default, the noise's own), estimate (offline: "
                   "sigua_optim.estimation.estimate_noise on 5-fold cross-fitted small MLPs read "
                   "after 5 epochs), auto (online, noise_rate='auto') or a fraction")  # fmt: skip
    p.add_argument("--transition", choices=["true", "estimate"], default="true", help="T given "
                   "to the BC methods: true (default) or estimate (as --noise-rate estimate)")  # fmt: skip
    p.add_argument("--methods", type=_comma_list(_method), help="default: all of the experiment")
    p.add_argument("--gammas", type=_comma_list(_gamma), help="fig1: one run per gamma after "
                   "the shift (default 0,0.01; paper 0,0.001); sweep: the gammas of the grid "
                   "(default 0.001,0.01,0.1)")  # fmt: skip
    p.add_argument("--bands", type=_comma_list(_ratio), help="sweep: the bands of the grid as "
                   "ratios r of eps, delta = r * eps (default 0.1,0.3,0.7)")  # fmt: skip
    p.add_argument("--warmups", type=_comma_list(_epochs), help="sweep: the T_k of the grid "
                   "(default 5,10,20)")  # fmt: skip
    p.add_argument("--gamma", type=_gamma, help="set1/set2 gamma (default 0.01, 0.001 for pair "
                   "noise in set1; 1.0 in set2)")  # fmt: skip
    p.add_argument("--criterion", choices=CRITERIA, help="nnBC/SIGUA_BC criterion (default "
                   "class; paper recipe: sample, the authors' code)")  # fmt: skip
    p.add_argument("--band", type=_fraction, help="SIGUA_SL delta (default: sym-20 0.08, sym-50 "
                   f"0.15, pair-45 0.31, else {BAND_FACTOR} * eps; --noise-rate estimate: {BAND_FACTOR} * "
                   "eps_hat)")  # fmt: skip
    p.add_argument("--warmup", type=float, default=10.0, help="T_k of Eq. 4 (default 10)")
    p.add_argument("--bc-warmup", type=float, default=0.0,
                   help="epochs of plain BC before nnBC/SIGUA_BC select (default 0, the paper)")  # fmt: skip
    p.add_argument("--beta2", type=_fraction, help="set2 Adam beta2 (default 0.999; paper 0.1)")
    p.add_argument("--epochs", type=_positive, help="default set1 200, set2 30, fig1 300 "
                   "(digits: 110)")  # fmt: skip
    p.add_argument("--shift", type=_positive, help="fig1: oracle shift epoch (default epochs/2; "
                   "digits: 60)")  # fmt: skip
    p.add_argument("--batch-size", type=_positive, help="default 128 (fig1: 1024; digits: 32)")
    p.add_argument("--lr", type=float, help="default 1e-3 (fig1: SGD 0.01, momentum 0.9)")
    p.add_argument("--model", choices=list(MODELS), help="default small-mlp (fig1: deep-mlp; "
                   "digits: deep-mlp-128)")  # fmt: skip
    p.add_argument("--seeds", type=_positive, default=3, help="seeds 0..N-1 (default 3)")
    p.add_argument("--threads", type=_positive, default=1, help="torch threads (default 1)")
    p.add_argument("--out", type=Path, default=Path("results"), help="output folder")
    p.add_argument("--paper-recipe", action="store_true", help="set2: Adam betas (0.9, 0.1) and "
                   "the per-sample criterion; fig1: gammas 0,0.001")  # fmt: skip
    p.add_argument("--smoke", action="store_true", help="4 epochs, 1 seed: a quick check")
    return p


def resolve(args: argparse.Namespace, experiment: str) -> argparse.Namespace:
    """A copy of ``args`` for one experiment (fig1, set1, set2 or sets), defaults filled in."""
    args = copy.copy(args)
    args.experiment, fig1 = experiment, experiment == "fig1"
    if args.smoke:
        args.epochs, args.seeds = args.epochs or 4, 1
    digits_fig1 = fig1 and args.dataset == "digits"  # sized for the 5-minute main job
    epochs = {"fig1": 110 if digits_fig1 else 300, "set2": 30}.get(experiment, 200)
    args.epochs = args.epochs or epochs
    args.shift = args.shift or (60 if digits_fig1 and args.epochs > 60 else max(1, args.epochs // 2))
    args.batch_size = args.batch_size or (32 if digits_fig1 else 1024 if fig1 else 128)
    args.model = args.model or ("deep-mlp-128" if digits_fig1 else "deep-mlp" if fig1 else "small-mlp")
    args.noise = args.noise or (["sym-80"] if fig1 else ["sym-50"])
    args.methods = args.methods or list(EXPERIMENTS[experiment])
    sweep = experiment == "sweep"
    args.gammas = args.gammas or (
        [0.001, 0.01, 0.1] if sweep else [0.0, 0.001 if args.paper_recipe else 0.01]
    )
    args.bands = args.bands or [0.1, 0.3, 0.7]
    args.warmups = args.warmups or [5.0, 10.0, 20.0]
    args.beta2 = args.beta2 if args.beta2 is not None else 0.1 if args.paper_recipe else 0.999
    args.criterion = args.criterion or ("sample" if args.paper_recipe else "class")
    return args


def load_split(args: argparse.Namespace, seed: int) -> Split:
    if args.dataset == "digits":
        return load_digits_split(seed)
    if args.dataset == "fashion-mnist":
        return load_fashion_mnist_split(fashion_mnist_dir(args.data_dir))
    return load_mnist_split(mnist_dir(args.data_dir), seed)


def apply_noise(noise: Noise, split: Split, seed: int) -> tuple[torch.Tensor, torch.Tensor, Noise]:
    """The noisy train labels, the clean mask and the noise; for instance-dependent noise, T is the
    realised class-level matrix, ``T[i, j]`` = the fraction of class i labelled j."""
    generator = torch.Generator().manual_seed(seed)
    if noise.instance is None:
        return (*corrupt(split.y_train, noise.T, generator), noise)
    y, k = split.y_train, split.num_classes
    noisy, clean = instance_dependent(split.x_train, y, noise.instance, generator, num_classes=k)
    counts = torch.zeros(k, k, dtype=torch.float64).index_put_((y, noisy), torch.ones(len(y)).double(), True)
    return noisy, clean, replace(noise, T=counts / counts.sum(1, keepdim=True).clamp_min(1))


# -- one run ------------------------------------------------------------------------------------
@dataclass
class Task:
    """What a training run needs besides its model and optimizer."""

    split: Split
    noisy: torch.Tensor  # noisy train labels
    clean: torch.Tensor  # bool: noisy == true label
    correction: BackwardCorrection | None  # set: train on backward-corrected losses (set2)
    per_class: bool  # pass the per-class terms of the corrected loss (criterion "class")
    oracle: bool  # pass clean= to the condition (fig1 after the shift)
    batch_size: int
    generator: torch.Generator  # shuffling
    bar: tqdm[Any]  # progress, one step per epoch


@dataclass
class Learner:
    """A network and its optimizer; Co-teaching trains two, each selecting with the other's losses."""

    model: nn.Module
    opt: SIGUAOptimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None


def train_epoch(learners: Sequence[Learner], task: Task) -> torch.Tensor:
    """One epoch; returns the first learner's counts [seen, clean seen, good, good & clean, bad,
    bad & flipped, objective sum, batches, logit-norm sum, negative losses] accumulated as a
    tensor (read once by the caller). With two learners each gets ``peer_losses=`` the other's."""
    for learner in learners:
        learner.model.train()
    x, n = task.split.x_train, len(task.noisy)
    batch = min(task.batch_size, n)
    counts = torch.zeros(10)
    for idx in torch.randperm(n, generator=task.generator)[: n - n % batch].view(-1, batch):
        y, c = task.noisy[idx], task.clean[idx]
        inputs: dict[str, Any]
        if len(learners) == 2:  # Co-teaching: each network steps on the samples its peer selects
            logits, peer_logits = (learner.model(x[idx]) for learner in learners)
            losses, peer = (F.cross_entropy(z, y, reduction="none") for z in (logits, peer_logits))
            learners[1].opt.zero_grad()
            learners[1].opt.step(peer, peer_losses=losses.detach())
            step_losses, inputs = losses, {"peer_losses": peer.detach()}
        else:
            logits = learners[0].model(x[idx])
            step_losses, losses, inputs = _losses(logits, y, learners[0].opt, task)
        if task.oracle:
            inputs["clean"] = c
        opt = learners[0].opt
        opt.zero_grad()
        r = opt.step(step_losses, **inputs)
        # a sample's share of good / bad terms (0 or 1 except for per-class terms)
        good, bad = (m.view(batch, -1).float().mean(dim=1) for m in (r.good, r.bad))
        counts += torch.stack(
            [
                torch.tensor(float(batch)),
                c.sum(),
                good.sum(),
                good[c].sum(),
                bad.sum(),
                bad[~c].sum(),
                r.objective.float(),
                torch.tensor(1.0),
                logits.detach().norm(dim=1).mean(),
                (losses.detach() < 0).sum(),
            ]
        )
    return counts


def _losses(
    logits: torch.Tensor, y: torch.Tensor, opt: SIGUAOptimizer, task: Task
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """What one network steps on: (the losses given to step, one loss per sample, named inputs)."""
    batch = len(y)
    inputs: dict[str, Any] = {}
    if task.correction is None:
        losses = step_losses = F.cross_entropy(logits, y, reduction="none")
    elif task.per_class:  # one loss per sample and class: T^-1[y_i, c] * l_c(x_i), Eq. 8's terms
        inverse = task.correction.inverse_on(logits.device, logits.dtype)
        step_losses = (class_losses(logits) * inverse[y]).flatten()
        losses, inputs["num_items"] = step_losses.detach().view(batch, -1).sum(dim=1), batch
    else:
        losses = step_losses = task.correction(logits, y)
    if "logits" in getattr(opt.condition, "inputs", ()):
        inputs.update(logits=logits, targets=y)  # the same tensor: its per-class losses are reused
    return step_losses, losses, inputs


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, counts: torch.Tensor) -> dict[str, float | None]:
    """Accuracies (test; train on clean and on flipped labels) and the selections' quality."""
    model.eval()
    split, clean = task.split, task.clean
    test = torch.cat([model(c).argmax(1) for c in torch.split(split.x_test, 4096)])
    train = torch.cat([model(c).argmax(1) for c in torch.split(split.x_train, 4096)])
    seen, n_clean, good, good_clean, bad, bad_flipped, objective, batches, norm, negative = counts.tolist()

    def ratio(a: float, b: float) -> float | None:
        return a / b if b else None

    def accuracy(hits: torch.Tensor) -> float | None:
        return ratio(float(hits.sum()), float(hits.numel()))

    return {
        "test_acc": (test == split.y_test).double().mean().item(),
        "train_acc_clean": accuracy((train == task.noisy)[clean]),
        "train_acc_flipped": accuracy((train == task.noisy)[~clean]),
        "train_acc_flipped_true": accuracy((train == split.y_train)[~clean]),
        "good_precision": ratio(good_clean, good),
        "good_recall": ratio(good_clean, n_clean),
        "bad_precision": ratio(bad_flipped, bad),
        "bad_recall": ratio(bad_flipped, seen - n_clean),
        "good_fraction": ratio(good, seen),
        "bad_fraction": ratio(bad, seen),
        "objective": ratio(objective, batches),
        "logit_norm": ratio(norm, batches),
        "negative_fraction": ratio(negative, seen),
    }


def train(
    learners: Sequence[Learner], task: Task, epochs: range, emit: Callable[[int, dict[str, Any]], None]
) -> None:
    """Train for ``epochs``; each epoch's record is the first learner's, with the seconds that
    the epoch's training took (all learners together)."""
    opt = learners[0].opt
    for epoch in epochs:
        for learner in learners:
            learner.opt.set_epoch(epoch)
        lr = opt.param_groups[0]["lr"]
        started = time.perf_counter()
        counts = train_epoch(learners, task)
        seconds = time.perf_counter() - started
        metrics = evaluate(learners[0].model, task, counts)
        # noise_rate="auto" (SmallLoss and BandSelected): this epoch's eps_hat
        if isinstance(opt.condition, SmallLoss) and opt.condition.estimator is not None:
            metrics["eps_online"] = opt.condition.noise_rate
        emit(epoch + 1, {"lr": lr, "seconds": seconds, **metrics})
        task.bar.update()
        for learner in learners:
            if learner.scheduler is not None:
                learner.scheduler.step()


# -- experiments --------------------------------------------------------------------------------
def set_recipe(args: argparse.Namespace, method: str, noise: Noise, model: nn.Module) -> Learner:
    """The paper's SET1 / SET2 optimizer, schedule, gamma and condition for ``method``; Co-teaching
    takes SET1's with its selection made on the peer's losses (one learner of the two)."""
    lr = args.lr or 1e-3
    # "true" and "estimate" arrive in noise.rate (see given_noise); "auto" and a fraction as given
    eps: float | str = noise.rate if args.noise_rate in ("true", "estimate") else args.noise_rate
    # delta of Eq. 6: the paper's for a named noise; from an offline estimate BAND_FACTOR * eps_hat,
    # nothing of the true noise; with noise_rate="auto" a cap: the band used is min(delta, eps_hat)
    if args.band is not None:
        band = args.band
    elif args.noise_rate == "estimate":
        band = BAND_FACTOR * noise.rate
    else:
        band = PAPER_BANDS.get(noise.name, BAND_FACTOR * noise.rate)
    if method in SET1:
        base: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        decay_from = round(0.4 * args.epochs)
        scheduler: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.LambdaLR(
            base, lambda e: min(1.0, (args.epochs - e) / max(1, args.epochs - decay_from))
        )
        gamma = args.gamma if args.gamma is not None else (0.001 if "pair" in noise.name else 0.01)
    else:
        base = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, args.beta2))
        scheduler = torch.optim.lr_scheduler.StepLR(base, step_size=10, gamma=0.1)
        gamma = 1.0 if args.gamma is None else args.gamma
    conditions: dict[str, Callable[[], Callable[..., Any]]] = {
        "standard": AllGood,
        "self-teach": lambda: SmallLoss(eps, warmup_epochs=args.warmup),
        "sigua-sl": lambda: BandSelected(eps, band=band, warmup_epochs=args.warmup),
        "co-teaching": lambda: Peer(SmallLoss(eps, warmup_epochs=args.warmup)),
        "co-teaching-sigua": lambda: Peer(BandSelected(eps, band=band, warmup_epochs=args.warmup)),
        "bc": AllGood,
        "nnbc": lambda: NonNegativeCorrection(noise.T, False, args.criterion, args.bc_warmup),
        "sigua-bc": lambda: NonNegativeCorrection(noise.T, True, args.criterion, args.bc_warmup),
    }
    opt = SIGUAOptimizer(base, condition=conditions[method](), gamma=gamma, nonfinite="skip")
    return Learner(model, opt, scheduler)


def run_sets(args: argparse.Namespace, task: Task, noise: Noise, seed: int, emit: Emitter) -> None:
    for method in args.methods:
        if emit.done(method):
            task.bar.update(args.epochs)  # resumed: complete in the records
            continue
        learners = []
        for peer in range(2 if method in PEERS else 1):
            torch.manual_seed(seed + 1000 * peer)  # the same first network for every method
            model = MODELS[args.model](task.split.num_features, task.split.num_classes)
            learners.append(set_recipe(args, method, noise, model))
        task.generator.manual_seed(seed)
        per_class = method != "bc" and args.criterion == "class"
        # SET2 trains on Eq. 8's losses; nnBC / SIGUA_BC share their condition's T^-1 and per-class losses
        condition = learners[0].opt.condition
        correction = None if method in SET1 else getattr(condition, "correction", BackwardCorrection(noise.T))
        method_task = replace(task, correction=correction, per_class=per_class)
        train(learners, method_task, range(args.epochs), partial(emit, method))


def run_sweep(args: argparse.Namespace, task: Task, noise: Noise, seed: int, emit: Emitter) -> None:
    """Per T_k: Self-Teach, then SIGUA_SL at each band ratio r (delta = r * eps) and gamma, each a
    set1 run; the records carry ``band_ratio`` (0 for Self-Teach), ``gamma`` (None for
    Self-Teach) and ``warmup``."""
    eps = noise.rate if args.noise_rate in ("true", "estimate") else float(args.noise_rate)
    for warmup in args.warmups:
        grid = [("self-teach", 0.0, None)] + [("sigua-sl", r, g) for r in args.bands for g in args.gammas]
        for method, ratio, gamma in grid:
            name = f"{method} Tk={warmup:g}" + ("" if gamma is None else f" r={ratio:g} gamma={gamma:g}")
            point = argparse.Namespace(
                **{**vars(args), "methods": [method], "band": ratio * eps, "gamma": gamma, "warmup": warmup}
            )
            fields = {"band_ratio": ratio, "gamma": gamma, "warmup": warmup}
            run_sets(point, task, noise, seed, replace(emit, name=name, fields=fields))


def run_fig1(args: argparse.Namespace, task: Task, noise: Noise, seed: int, emit: Emitter) -> None:
    """All samples good until the shift, then one branch per gamma from the same state."""
    names = [f"gamma={g:g}" for g in args.gammas]
    if all(map(emit.done, names)):
        return
    torch.manual_seed(seed)
    model = MODELS[args.model](task.split.num_features, task.split.num_classes)
    base = torch.optim.SGD(model.parameters(), lr=args.lr or 0.01, momentum=0.9)
    task.generator.manual_seed(seed)

    def emit_all(epoch: int, metrics: dict[str, Any]) -> None:
        for name in names:
            emit(name, epoch, metrics)

    train([Learner(model, SIGUAOptimizer(base, AllGood()))], task, range(args.shift), emit_all)
    shuffle_state, oracle_task = task.generator.get_state(), replace(task, oracle=True)
    for name, gamma in zip(names, args.gammas, strict=True):
        branch = copy.deepcopy(model)
        branch_base = torch.optim.SGD(branch.parameters(), lr=args.lr or 0.01, momentum=0.9)
        branch_base.load_state_dict(base.state_dict())
        opt = SIGUAOptimizer(branch_base, KnownClean(), gamma=gamma)
        task.generator.set_state(shuffle_state)
        epochs = range(args.shift, args.epochs)
        train([Learner(branch, opt)], oracle_task, epochs, partial(emit, name))


def total_epochs(args: argparse.Namespace) -> int:
    epochs, shift, runs = int(args.epochs), int(args.shift), int(args.seeds) * len(args.noise)
    if args.experiment == "fig1":
        return runs * (shift + len(args.gammas) * (epochs - shift))
    if args.experiment == "sweep":
        return runs * len(args.warmups) * (1 + len(args.bands) * len(args.gammas)) * epochs
    return runs * len(args.methods) * epochs


def prepare(args: argparse.Namespace, seed: int) -> tuple[Split, list[Noise]]:
    split = load_split(args, seed)
    return split, [parse_noise(spec, split.num_classes) for spec in args.noise]


def experiments(parser: Parser, argv: Sequence[str] | None) -> list[argparse.Namespace]:
    """The experiments to run, each with its own resolved options; exits 2 on bad input."""
    args = parser.parse_args(argv)
    if args.experiment == "fig1" and args.methods:
        parser.error("fig1 compares gammas: pass --gammas 0,0.001 instead of --methods")
    if args.experiment == "sweep" and args.methods:
        parser.error("sweep runs Self-Teach and SIGUA_SL over --bands x --gammas x --warmups: drop --methods")
    if args.experiment == "sweep" and args.noise_rate == "auto":
        parser.error("sweep sets delta = r * eps: pass --noise-rate true, estimate or a fraction, not auto")
    groups = {"all": ["fig1", "set1", "set2"], "sets": ["set1", "set2"]}
    names = groups.get(args.experiment, [args.experiment])
    if args.methods:  # fig1 stays in "all" with --methods; a set without any of them goes
        names = [n for n in names if n == "fig1" or set(args.methods) & set(EXPERIMENTS[n])]
    parts = []
    for name in names:
        part = resolve(args, name)
        part.methods = [m for m in part.methods if m in EXPERIMENTS[name]]
        if name == "fig1" and part.shift >= part.epochs:
            parser.error(f"--shift {part.shift} must be below --epochs {part.epochs}")
        try:
            prepare(part, 0)  # fail fast on a bad data folder or noise
        except (DataError, ValueError) as exc:
            parser.error(str(exc))
        parts.append(part)
    return parts


def run_experiment(args: argparse.Namespace, recorder: Recorder, bar: tqdm[Any]) -> None:
    runner = {"fig1": run_fig1, "sweep": run_sweep}.get(args.experiment, run_sets)
    for seed in range(args.seeds):
        split, noises = prepare(args, seed)
        for spec in noises:
            base = {"experiment": args.experiment, "dataset": args.dataset,
                    "model": args.model, "noise": spec.name, "seed": seed}  # fmt: skip
            if args.experiment in ("set1", "set2") and all(map(Emitter(recorder, base).done, args.methods)):
                bar.update(len(args.methods) * args.epochs)  # resumed: complete in the records
                continue
            noisy, clean, noise = apply_noise(spec, split, seed)
            task = Task(split, noisy, clean, None, False, False, args.batch_size, torch.Generator(), bar)
            base.update(classes=split.num_classes, eps=noise.rate)
            used, errors = given_noise(args, split, noisy, noise, seed)
            runner(args, task, used, seed, Emitter(recorder, {**base, **errors}))


def given_noise(
    args: argparse.Namespace, split: Split, noisy: torch.Tensor, noise: Noise, seed: int
) -> tuple[Noise, dict[str, float]]:
    """The noise the methods are given (true, or estimated from the noisy training labels), and
    for the records the estimates' errors: ``eps_hat`` and ``eps_err`` = |eps_hat - eps|,
    ``T_mae`` = mean |T_hat - T|."""
    if args.experiment == "fig1" or "estimate" not in (args.noise_rate, args.transition):
        return noise, {}
    estimate = offline_estimate(split.x_train, noisy, seed)
    errors = {"eps_hat": estimate.eps, "eps_err": abs(estimate.eps - noise.rate)}
    if args.transition == "estimate":
        errors["T_mae"] = float((estimate.T - noise.T).abs().mean())
    T = estimate.T if args.transition == "estimate" else noise.T
    return Noise(noise.name, T, estimate.eps if args.noise_rate == "estimate" else None), errors


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    parts = experiments(parser, argv)
    first = parts[0]
    torch.set_num_threads(first.threads)
    first.out.mkdir(parents=True, exist_ok=True)
    results = first.out / "results.jsonl"
    config = {p.experiment: vars(p) for p in parts}
    (first.out / "config.json").write_text(json.dumps(config, default=str, indent=1) + "\n")
    bar = tqdm(total=sum(map(total_epochs, parts)), unit="epoch", dynamic_ncols=True, mininterval=2.0)
    started = time.time()
    recorder = Recorder(results, {p.experiment: p.epochs for p in parts}, bar)
    for part in parts:
        run_experiment(part, recorder, bar)
    recorder.close()
    bar.close()
    seconds = time.time() - started
    text, plots = report.write(report.read_records(results), first.out, first.dataset)
    print(text)
    print(f"\n{seconds:.0f} s. Records: {results}  Table: {first.out / 'table.md'}  "
          f"Plots: {', '.join(map(str, plots))}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
