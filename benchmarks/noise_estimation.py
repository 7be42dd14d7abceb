"""How well the noise estimators recover eps and T on MNIST-10k (docs/noise.md, "Measured").

For each seed and noise: the training labels are corrupted, then the predicted noisy-label
probabilities come from (a) 5-fold cross-fitting (a model per fold, read on the held-out fold
after each of ``--epochs``) and (b) one model trained on all the samples, read in-sample after
the same epochs. Both estimators of ``sigua_optim.estimation`` run on each; the record has
|eps_hat - eps| (eps: the fraction of labels actually flipped) and the mean absolute error of the
``k x k`` T_hat. One JSON line per (seed, noise, source, epoch, method), then a table.

With ``--sigua-epochs N``: SIGUA_SL (BandSelected, Adam 1e-3, gamma 0.01, T_k = 10) trained N
epochs with the true noise rate, the offline estimate (confident joint, 5-fold cross-fitting,
fold models read after 5 epochs) and ``noise_rate="auto"``; one JSON line per epoch (test
accuracy, the rate in use), then the last-10-epoch mean test accuracy and the rate in use at the end.

    python -m benchmarks.noise_estimation --data-dir /path/to/mnist --seeds 0,1,2
    python -m benchmarks.noise_estimation --data-dir /path/to/mnist --sigua-epochs 40 --noises sym-50
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks.data import Split, load_mnist_split
from benchmarks.models import small_mlp
from sigua_optim import SIGUAOptimizer
from sigua_optim.conditions import BandSelected
from sigua_optim.estimation import METHODS, NoiseEstimate, estimate_noise
from sigua_optim.noise import corrupt, estimate_noise_rate, pair, symmetric


def class_dependent(k: int) -> Tensor:
    """Class i flips with rate 0.1 + 0.04 i, half to class i + 1 and half to class i + 5 (mod k)."""
    T = torch.zeros(k, k, dtype=torch.float64)
    for i in range(k):
        rate = 0.1 + 0.04 * i
        T[i, i] = 1 - rate
        T[i, (i + 1) % k] += rate / 2
        T[i, (i + 5) % k] += rate / 2
    return T


NOISES: dict[str, Callable[[int], Tensor]] = {
    "sym-20": lambda k: symmetric(k, 0.2),
    "sym-50": lambda k: symmetric(k, 0.5),
    "pair-45": lambda k: pair(k, 0.45),
    "classdep": class_dependent,
}


def train_reading(
    x: Tensor, y: Tensor, x_read: Tensor, epochs: Sequence[int], seed: int, batch_size: int = 128
) -> dict[int, Tensor]:
    """Train the small MLP on (x, y) with Adam 1e-3; softmax on ``x_read`` after each of ``epochs``."""
    torch.manual_seed(seed)
    model = small_mlp(x.shape[1], 10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    out: dict[int, Tensor] = {}
    for epoch in range(1, max(epochs) + 1):
        model.train()
        for batch in torch.split(torch.randperm(len(y)), batch_size):
            opt.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()  # type: ignore[no-untyped-call]
            opt.step()
        if epoch in epochs:
            model.eval()
            with torch.no_grad():
                out[epoch] = model(x_read).softmax(dim=1).double()
    return out


def probabilities(
    x: Tensor, noisy: Tensor, epochs: Sequence[int], seed: int, folds: int
) -> dict[str, Tensor]:
    """``{"crossfit@E": ..., "insample@E": ...}``: out-of-fold and in-sample probabilities."""
    out: dict[str, Tensor] = {}
    order = torch.randperm(len(noisy), generator=torch.Generator().manual_seed(seed))
    parts = order.tensor_split(folds)
    for f, test in enumerate(parts):
        train = torch.cat([p for g, p in enumerate(parts) if g != f])
        for epoch, probs in train_reading(x[train], noisy[train], x[test], epochs, seed + f).items():
            out.setdefault(f"crossfit@{epoch}", torch.empty(len(noisy), 10, dtype=torch.float64))[test] = (
                probs
            )
    for epoch, probs in train_reading(x, noisy, x, epochs, seed).items():
        out[f"insample@{epoch}"] = probs
    return out


def offline_estimate(x: Tensor, noisy: Tensor, seed: int) -> NoiseEstimate:
    """The confident-joint estimate of eps and T from 5-fold cross-fitted models read after 5 epochs."""

    def fit_predict(train: Tensor, test: Tensor) -> Tensor:
        return train_reading(x[train], noisy[train], x[test], [5], seed)[5]

    return estimate_noise(fit_predict, noisy, generator=torch.Generator().manual_seed(seed))


def sigua_run(
    split: Split, noisy: Tensor, noise_rate: float | str, band: float, epochs: int, seed: int
) -> list[tuple[float, float]]:
    """SIGUA_SL for ``epochs`` epochs; (test accuracy, noise rate in use) after each epoch."""
    torch.manual_seed(seed)
    model = small_mlp(split.num_features, 10)
    condition = BandSelected(noise_rate, band=band, warmup_epochs=10)
    opt = SIGUAOptimizer(torch.optim.Adam(model.parameters(), lr=1e-3), condition, gamma=0.01)
    shuffle = torch.Generator().manual_seed(seed)
    out = []
    for epoch in range(epochs):
        opt.set_epoch(epoch)
        model.train()
        for batch in torch.split(torch.randperm(len(noisy), generator=shuffle), 128):
            opt.zero_grad()
            opt.step(F.cross_entropy(model(split.x_train[batch]), noisy[batch], reduction="none"))
        model.eval()
        with torch.no_grad():
            accuracy = (model(split.x_test).argmax(1) == split.y_test).double().mean().item()
        out.append((accuracy, condition.noise_rate))
    return out


def compare_sigua(args: argparse.Namespace) -> None:
    """Test accuracy of SIGUA_SL with the true, the offline and the online noise rate."""
    table: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for seed in (int(s) for s in args.seeds.split(",")):
        split = load_mnist_split(args.data_dir, seed)
        for name in args.noises.split(","):
            T = NOISES[name](10)
            noisy, _ = corrupt(split.y_train, T, torch.Generator().manual_seed(seed))
            for mode in args.modes.split(","):
                rate: float | str = mode
                if mode == "true":
                    rate = estimate_noise_rate(T)
                elif mode == "offline":
                    rate = offline_estimate(split.x_train, noisy, seed).eps
                trace = sigua_run(split, noisy, rate, args.band, args.sigua_epochs, seed)
                for epoch, (accuracy, used) in enumerate(trace, 1):
                    record = {"seed": seed, "noise": name, "mode": mode, "epoch": epoch}
                    print(json.dumps({**record, "test_acc": accuracy, "noise_rate": used}), flush=True)
                last = [accuracy for accuracy, _ in trace[-10:]]
                table[name, mode].append((sum(last) / len(last), trace[-1][1]))
    print("\n| noise | noise rate | last-10-epoch test accuracy (mean over seeds) | rate used at the end |")
    print("| --- | --- | --- | --- |")
    for (name, mode), rows in table.items():
        accs, ends = zip(*rows, strict=True)
        rates_used = ", ".join(f"{u:.3f}" for u in ends)
        print(f"| {name} | {mode} | {100 * sum(accs) / len(accs):.2f} | {rates_used} |")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--noises", default=",".join(NOISES))
    parser.add_argument("--epochs", default="3,10,20", help="epochs after which the models are read")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--sigua-epochs", type=int, default=0, help="compare SIGUA_SL runs instead")
    parser.add_argument(
        "--modes", default="true,offline,auto", help="true, offline, auto (with --sigua-epochs)"
    )
    parser.add_argument("--band", type=float, default=0.15, help="SIGUA_SL's band (with --sigua-epochs)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.sigua_epochs:
        compare_sigua(args)
        return 0
    epochs = [int(e) for e in args.epochs.split(",")]
    table: dict[tuple[str, str, str], list[tuple[float, float]]] = defaultdict(list)
    for seed in (int(s) for s in args.seeds.split(",")):
        split = load_mnist_split(args.data_dir, seed)
        for name in args.noises.split(","):
            T = NOISES[name](10)
            noisy, clean = corrupt(split.y_train, T, torch.Generator().manual_seed(seed))
            eps = 1 - float(clean.double().mean())
            for source, probs in probabilities(split.x_train, noisy, epochs, seed, args.folds).items():
                for method in METHODS:
                    est = estimate_noise(probs, noisy, method=method)
                    err, t_mae = abs(est.eps - eps), float((est.T - T).abs().mean())
                    record = {"seed": seed, "noise": name, "eps": eps, "source": source, "method": method}
                    print(
                        json.dumps({**record, "eps_hat": est.eps, "eps_err": err, "T_mae": t_mae}), flush=True
                    )
                    table[name, source, method].append((err, t_mae))
    print("\n| noise | probabilities | method | mean abs(eps_hat - eps) | max | mean abs(T_hat - T) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for (name, source, method), rows in table.items():
        errs, maes = zip(*rows, strict=True)
        print(
            f"| {name} | {source} | {method} | {sum(errs) / len(errs):.3f} | {max(errs):.3f} "
            f"| {sum(maes) / len(maes):.4f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
