"""Tables and plots from the runner's JSON-lines records."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

Record = dict[str, Any]

METRIC_TITLES = {
    "test_acc": "test accuracy (%)",
    "train_acc_flipped": "train accuracy on flipped labels (%) (memorisation)",
}


def read_records(path: Path) -> list[Record]:
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]


def _ordered(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _curves(records: Sequence[Record], metric: str) -> dict[tuple[str, str], np.ndarray]:
    """(noise, method) -> array [seeds, epochs] of ``metric``, epochs in order."""
    runs: dict[tuple[str, str, int], list[tuple[int, float]]] = defaultdict(list)
    for r in records:
        value = r[metric]
        runs[(r["noise"], r["method"], r["seed"])].append((r["epoch"], np.nan if value is None else value))
    grouped: dict[tuple[str, str], list[list[float]]] = defaultdict(list)
    for (noise, method, _), points in runs.items():
        grouped[(noise, method)].append([v for _, v in sorted(points)])
    return {key: np.array(rows, dtype=float) for key, rows in grouped.items()}


def table(records: Sequence[Record], metric: str = "test_acc", last: int = 10) -> str:
    """Markdown: methods x noises, mean (std) over seeds of the last-``last``-epoch mean, in %."""
    curves = _curves(records, metric)
    noises = _ordered(r["noise"] for r in records)
    methods = _ordered(r["method"] for r in records)
    lines = [
        f"| {METRIC_TITLES[metric]}, mean of last {last} epochs | " + " | ".join(noises) + " |",
        "| --- |" + " --- |" * len(noises),
    ]
    for method in methods:
        cells = []
        for noise in noises:
            per_seed = 100 * np.nanmean(curves[(noise, method)][:, -last:], axis=1)
            cells.append(f"{per_seed.mean():.2f} ({per_seed.std():.2f})")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    seeds = len({r["seed"] for r in records})
    lines.append(f"\n{seeds} seed(s); std over seeds (numpy's, ddof=0).")
    return "\n".join(lines)


def plot(records: Sequence[Record], path: Path, title: str) -> None:
    """Test accuracy (top) and flipped-label train accuracy (bottom): one column per noise,
    one curve per method, mean +/- std over seeds as a band."""
    noises = _ordered(r["noise"] for r in records)
    methods = _ordered(r["method"] for r in records)
    metrics = list(METRIC_TITLES)
    fig, axes = plt.subplots(
        len(metrics), len(noises), figsize=(4.2 * len(noises), 3.2 * len(metrics)), squeeze=False
    )
    for row, metric in enumerate(metrics):
        curves = _curves(records, metric)
        for col, noise in enumerate(noises):
            ax = axes[row][col]
            for method in methods:
                runs = 100 * curves[(noise, method)]
                mean, std = np.nanmean(runs, axis=0), np.nanstd(runs, axis=0)
                epochs = np.arange(1, len(mean) + 1)
                (line,) = ax.plot(epochs, mean, label=method, linewidth=1.2)
                ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.2)
            ax.set_title(noise if row == 0 else "")
            ax.set_xlabel("epoch")
            ax.set_ylabel(METRIC_TITLES[metric].split(" (")[0] + " (%)")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
