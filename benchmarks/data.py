"""Datasets for the benchmarks: scikit-learn's bundled digits, MNIST and Fashion-MNIST from IDX files.

Nothing is downloaded. MNIST is read from a directory the user names (``--data-dir`` or the
``SIGUA_MNIST_DIR`` environment variable) holding the original IDX files, gzip'd or raw.
Fashion-MNIST (Xiao et al., 2017: 60,000 + 10,000 28x28 grey images of clothing, 10 classes) is
read from ``--data-dir``, else ``SIGUA_FASHION_MNIST_DIR``, else the folder of Debian's
``dataset-fashion-mnist`` package (:data:`FASHION_MNIST_PACKAGE_DIR`).
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

IMAGES_MAGIC = 0x00000803  # uint8 data, 3 dimensions (count, rows, columns)
LABELS_MAGIC = 0x00000801  # uint8 data, 1 dimension (count)
MNIST_ENV = "SIGUA_MNIST_DIR"
FASHION_MNIST_ENV = "SIGUA_FASHION_MNIST_DIR"
FASHION_MNIST_PACKAGE_DIR = Path("/usr/share/datasets/fashion-mnist")  # dpkg -L dataset-fashion-mnist
FASHION_MNIST_INSTALL = "apt-get update && apt-get install -y dataset-fashion-mnist"


class DataError(ValueError):
    """A data file or directory is missing, truncated or not what it claims to be."""


@dataclass(frozen=True)
class Split:
    """A train/test split: flattened float32 features in [0, 1] and int64 labels."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def num_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def num_classes(self) -> int:
        return int(torch.cat([self.y_train, self.y_test]).max()) + 1


def _stratified(x: np.ndarray, y: np.ndarray, n_train: int, n_test: int, seed: int) -> Split:
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, train_size=n_train, test_size=n_test, stratify=y, random_state=seed
    )
    return Split(
        torch.from_numpy(np.ascontiguousarray(x_tr, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(y_tr, dtype=np.int64)),
        torch.from_numpy(np.ascontiguousarray(x_te, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(y_te, dtype=np.int64)),
    )


def load_digits_split(seed: int, test_fraction: float = 0.2) -> Split:
    """scikit-learn's 1,797 8x8 digits, scaled to [0, 1], stratified seeded train/test split."""
    x, y = load_digits(return_X_y=True)
    n_test = round(len(y) * test_fraction)
    return _stratified(x / 16.0, y, len(y) - n_test, n_test, seed)


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read one IDX file (``.gz`` or raw) whose header must start with ``magic``.

    Checks the magic number, that every dimension is positive and that the payload holds exactly
    ``prod(dims)`` bytes; raises :class:`DataError` otherwise. Returns a uint8 array.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:  # gzip raises these on a truncated or foreign .gz
        raise DataError(f"cannot read {path}: {exc}") from exc
    ndim = magic & 0xFF
    header = 4 * (1 + ndim)
    if len(raw) < header:
        raise DataError(f"{path} is truncated: {len(raw)} bytes, shorter than its header")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(
            f"{path} is not an IDX file of this kind: magic {found:#010x}, expected {magic:#010x}"
        )
    dims = [int.from_bytes(raw[4 * (i + 1) : 4 * (i + 2)], "big") for i in range(ndim)]
    expected = int(np.prod(dims))
    if min(dims) <= 0 or len(raw) - header != expected:
        raise DataError(
            f"{path} is truncated or corrupt: header says {'x'.join(map(str, dims))} "
            f"({expected} bytes) but {len(raw) - header} data bytes follow"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


_MNIST_HINT = f"pass --data-dir DIR or set {MNIST_ENV} to the folder with the MNIST IDX files"


def _find(directory: Path, name: str, hint: str) -> Path:
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.is_file():
            return candidate
    raise DataError(f"{directory} has no {name}.gz (or {name}); {hint}")


def load_idx(
    directory: Path | str, prefix: str = "t10k", hint: str = _MNIST_HINT
) -> tuple[np.ndarray, np.ndarray]:
    """Read ``{prefix}-images-idx3-ubyte[.gz]`` and ``{prefix}-labels-idx1-ubyte[.gz]``.

    Returns ``(images, labels)``: float32 ``[n, rows * cols]`` scaled to [0, 1] and int64 ``[n]``
    in 0..9. Raises :class:`DataError` on a missing, truncated or mismatched pair; its message
    ends with ``hint``, how to point at the right folder.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"directory {directory} does not exist; {hint}")
    images = read_idx(_find(directory, f"{prefix}-images-idx3-ubyte", hint), IMAGES_MAGIC)
    labels = read_idx(_find(directory, f"{prefix}-labels-idx1-ubyte", hint), LABELS_MAGIC)
    if len(images) != len(labels):
        raise DataError(f"{directory}: {len(images)} {prefix} images but {len(labels)} labels")
    if labels.max() > 9:
        raise DataError(f"{directory}: {prefix} labels go up to {labels.max()}, expected 0..9")
    return images.reshape(len(images), -1).astype(np.float32) / 255.0, labels.astype(np.int64)


def mnist_dir(flag: str | None) -> Path:
    """The MNIST directory: the ``--data-dir`` flag, else ``$SIGUA_MNIST_DIR``."""
    value = flag or os.environ.get(MNIST_ENV)
    if not value:
        raise DataError(
            f"--dataset mnist needs --data-dir DIR (or {MNIST_ENV}=DIR), the folder "
            "with t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz"
        )
    return Path(value)


def load_mnist_split(directory: Path | str, seed: int, n_train: int = 8000, n_test: int = 2000) -> Split:
    """MNIST from IDX files in ``directory``.

    With the full MNIST (``train-*`` files present): the 60,000 training and 10,000 test images.
    With only the ``t10k-*`` files: a stratified split of the 10,000 test images, seeded,
    ``n_train`` / ``n_test`` (8,000 / 2,000).
    """
    directory = Path(directory)
    x, y = load_idx(directory, "t10k")
    if any((directory / f"train-images-idx3-ubyte{s}").is_file() for s in (".gz", "")):
        x_tr, y_tr = load_idx(directory, "train")
        return Split(*(torch.from_numpy(a) for a in (x_tr, y_tr, x, y)))
    return _stratified(x, y, n_train, n_test, seed)


def fashion_mnist_dir(flag: str | None) -> Path:
    """The Fashion-MNIST folder: ``--data-dir``, else ``$SIGUA_FASHION_MNIST_DIR``, else the package's."""
    return Path(flag or os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_PACKAGE_DIR)


def load_fashion_mnist_split(directory: Path | str) -> Split:
    """Fashion-MNIST's 60,000 training and 10,000 test images from the IDX files in ``directory``.

    A missing folder or file raises :class:`DataError` with the one-line install command.
    """
    hint = (
        f"install Fashion-MNIST with `{FASHION_MNIST_INSTALL}`, or pass --data-dir DIR "
        f"(or set {FASHION_MNIST_ENV}) to a folder with its train-* and t10k-* IDX files"
    )
    x_tr, y_tr = load_idx(directory, "train", hint)
    x_te, y_te = load_idx(directory, "t10k", hint)
    return Split(*(torch.from_numpy(a) for a in (x_tr, y_tr, x_te, y_te)))
