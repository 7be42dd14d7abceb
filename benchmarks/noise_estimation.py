"""How well the noise estimators recover eps and T on MNIST-10k (docs/noise.md, "Measured").

For each seed and noise: the training labels are corrupted, then the predicted noisy-label
probabilities come from (a) 5-fold cross-fitting (a model per fold, read on the held-out fold
after each of ``--epochs``) and (b) one model trained on all the samples, read in-sample after
the same epochs. Both estimators of ``sigua_optim.estimation`` run on each; the record has
|eps_hat - eps| (eps: the fraction of labels actually flipped) and the mean absolute error of the
``k x k`` T_hat. One JSON line per (seed, noise, source, epoch, method), then a table.

    python -m benchmarks.noise_estimation --data-dir /path/to/mnist --seeds 0,1,2
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

from benchmarks.data import load_mnist_split
from benchmarks.models import small_mlp
from sigua_optim.estimation import METHODS, estimate_noise
from sigua_optim.noise import corrupt, pair, symmetric


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
        for batch in torch.randperm(len(y)).split(batch_size):
            opt.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--noises", default=",".join(NOISES))
    parser.add_argument("--epochs", default="3,10,20", help="epochs after which the models are read")
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
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
