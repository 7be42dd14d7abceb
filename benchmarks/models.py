"""Networks used in the paper's experiments; every model takes flattened inputs ``[n, features]``.

* ``deep_mlp``: Figure 1's 784-[Lin(500)-BN-ReLU]x5-Lin(10) (1,405k parameters at 784 inputs).
* ``deep-mlp-128``: the same with 128 units per hidden layer (77k parameters at 64 inputs), for
  Figure 1 on the bundled digits, where the 500-unit one is too slow for a 5-minute run.
* ``wide_mlp``: Figure 1's 784-[Lin(10k)-BN-ReLU]-[Lin(100)-BN-ReLU]-Lin(10).
* ``cnn9``: the 9-layer CNN of the authors' code: 3x3 convs 128-128-128, max-pool, dropout
  0.25, 256-256-256, max-pool, dropout 0.25, 512 (no padding), 256, 128, global average pool,
  Linear(128, k), BatchNorm + LeakyReLU(0.01) after every conv, no input normalisation; dropout is a normal
  ``nn.Dropout``, so it is off in ``eval()`` mode. Needs square images of side >= 28.
* ``small_mlp``: in-[Lin(256)-ReLU]x2-Lin(k), for the digits default and quick MNIST runs.
* ``resnet18``: ResNet-18 (He et al., 2016) for 32 x 32 images as on CIFAR: a 3x3 stem of 64
  channels without max-pool, four stages of two BasicBlocks (64, 128, 256, 512 channels, stride 2
  from the second stage on, 1x1 projection shortcuts where the shape changes), global average
  pool, Linear(512, k); 11.2M parameters. Used by the speed benchmark only (not in ``MODELS``:
  the runner's data are grey-scale).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
from torch import nn


def _lin_bn_relu(n_in: int, n_out: int) -> list[nn.Module]:
    return [nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out), nn.ReLU()]


def deep_mlp(in_features: int = 784, num_classes: int = 10, width: int = 500) -> nn.Sequential:
    layers: list[nn.Module] = _lin_bn_relu(in_features, width)
    for _ in range(4):
        layers += _lin_bn_relu(width, width)
    return nn.Sequential(*layers, nn.Linear(width, num_classes))


def wide_mlp(in_features: int = 784, num_classes: int = 10) -> nn.Sequential:
    return nn.Sequential(
        *_lin_bn_relu(in_features, 10_000),
        *_lin_bn_relu(10_000, 100),
        nn.Linear(100, num_classes),
    )


def small_mlp(in_features: int = 64, num_classes: int = 10) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_features, 256),
        nn.ReLU(),
        nn.Linear(256, 256),
        nn.ReLU(),
        nn.Linear(256, num_classes),
    )


def _conv(n_in: int, n_out: int, padding: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(n_in, n_out, 3, padding=padding), nn.BatchNorm2d(n_out), nn.LeakyReLU(0.01)]


def cnn9(in_features: int = 784, num_classes: int = 10, channels: int = 1) -> nn.Sequential:
    side = math.isqrt(in_features // channels)
    if side * side * channels != in_features or side < 28:
        raise ValueError(f"cnn9 needs square images of side >= 28; got {in_features} features")
    return nn.Sequential(
        nn.Unflatten(1, (channels, side, side)),
        *_conv(channels, 128), *_conv(128, 128), *_conv(128, 128),
        nn.MaxPool2d(2), nn.Dropout(0.25),
        *_conv(128, 256), *_conv(256, 256), *_conv(256, 256),
        nn.MaxPool2d(2), nn.Dropout(0.25),
        *_conv(256, 512, padding=0), *_conv(512, 256, padding=0), *_conv(256, 128, padding=0),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(128, num_classes),
    )  # fmt: skip


class BasicBlock(nn.Module):
    """relu(bn(conv3x3(relu(bn(conv3x3(x))))) + shortcut(x)), the shortcut a 1x1 conv + BN where
    the stride or the channels change."""

    def __init__(self, n_in: int, n_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(n_in, n_out, 3, stride, 1, bias=False), nn.BatchNorm2d(n_out), nn.ReLU(),
            nn.Conv2d(n_out, n_out, 3, 1, 1, bias=False), nn.BatchNorm2d(n_out),
        )  # fmt: skip
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or n_in != n_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(n_in, n_out, 1, stride, bias=False), nn.BatchNorm2d(n_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


def resnet18(in_features: int = 3 * 32 * 32, num_classes: int = 10, channels: int = 3) -> nn.Sequential:
    side = math.isqrt(in_features // channels)
    if side * side * channels != in_features:
        raise ValueError(f"resnet18 needs square images of {channels} channels; got {in_features} features")
    layers: list[nn.Module] = [
        nn.Unflatten(1, (channels, side, side)),
        nn.Conv2d(channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
    ]  # fmt: skip
    n_in = 64
    for n_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(n_in, n_out, stride), BasicBlock(n_out, n_out, 1)]
        n_in = n_out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes))


MODELS: dict[str, Callable[[int, int], nn.Module]] = {
    "small-mlp": small_mlp,
    "deep-mlp": deep_mlp,
    "deep-mlp-128": partial(deep_mlp, width=128),
    "wide-mlp": wide_mlp,
    "cnn9": cnn9,
}
