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


def by_figure(records: Sequence[Record]) -> dict[str, list[Record]]:
    """Records grouped by figure: ``fig1`` apart, every other experiment (set1, set2) together."""
    groups: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        groups["fig1" if r["experiment"] == "fig1" else "sets"].append(r)
    return dict(groups)


NAMES = {"standard": "Standard", "self-teach": "Self-Teach", "sigua-sl": "SIGUA_SL", "bc": "BC",
         "nnbc": "nnBC", "sigua-bc": "SIGUA_BC"}  # fmt: skip
PAIRS = (("sigua-sl", "self-teach"), ("self-teach", "standard"), ("sigua-bc", "nnbc"), ("nnbc", "bc"))
COLLAPSE_WHY = {
    "bc": "Adam's beta2 = 0.1 and the corrected loss, unbounded below, blow the logits up",
    "nnbc": "the per-sample criterion drops the confidently fitted clean samples",
    "sigua-bc": "with gamma = 1 the per-sample criterion turns the objective into mean |corrected loss|",
}


def _last(records: Sequence[Record], metric: str, last: int = 10) -> dict[tuple[str, str], np.ndarray]:
    """(noise, method) -> per-seed mean of ``metric`` over the last ``last`` epochs, in %."""
    return {key: 100 * np.nanmean(runs[:, -last:], axis=1) for key, runs in _curves(records, metric).items()}


def noise_estimates(records: Sequence[Record]) -> list[str]:
    """One line per noise and estimate: offline (``--noise-rate estimate`` / ``--transition
    estimate``: eps_hat, |eps_hat - eps|, the mean |T_hat - T|) and online (``--noise-rate auto``:
    the last epoch's eps_hat and its error), mean (std) over the seeds."""
    lines = []
    for kind, key in (("offline", "eps_hat"), ("online (noise_rate='auto', last epoch)", "eps_online")):
        last = {(r["noise"], r["seed"]): r for r in records if key in r}  # a run's last record
        runs = {
            (n, s): {**r, "eps_hat": r[key], "eps_err": abs(r[key] - r["eps"])} for (n, s), r in last.items()
        }
        for noise in _ordered(n for n, _ in runs):
            seeds = [r for (n, _), r in runs.items() if n == noise]
            parts = [
                f"{label} {np.mean(values):.3f} ({np.std(values):.3f})"
                for label, name in (
                    ("eps_hat", "eps_hat"),
                    ("|eps_hat - eps|", "eps_err"),
                    ("T MAE", "T_mae"),
                )
                if (values := [r[name] for r in seeds if name in r])
            ]
            lines.append(f"- {noise}: noise estimated {kind} over {len(seeds)} seed(s): {', '.join(parts)}")
    return lines


def interpret(records: Sequence[Record]) -> list[str]:
    """A few lines saying what the records show: who won and by how much, memorisation, collapses."""
    if records[0]["experiment"] == "fig1":
        return _interpret_fig1(records)
    test, flipped = _last(records, "test_acc"), _last(records, "train_acc_flipped")
    k = max(int(r["classes"]) for r in records)
    lines = []
    for noise in _ordered(r["noise"] for r in records):
        methods = [m for (n, m) in test if n == noise]
        for a, b in PAIRS:
            if a in methods and b in methods:
                diff = test[(noise, a)] - test[(noise, b)]
                wins = int((diff > 0).sum())
                lines.append(
                    f"{noise}: {NAMES[a]} - {NAMES[b]} = {diff.mean():+.2f} points (per-seed "
                    f"differences: std {diff.std():.2f}, {NAMES[a]} ahead on {wins} of {len(diff)} seeds)"
                )
        memorised = ", ".join(f"{NAMES[m]} {flipped[(noise, m)].mean():.1f}%" for m in methods)
        lines.append(f"{noise}: flipped labels still fitted at the end (memorisation): {memorised}")
        for m in methods:
            if test[(noise, m)].mean() < 200 / k:  # below twice chance
                lines.append(
                    f"{noise}: {NAMES[m]} collapsed ({test[(noise, m)].mean():.1f}% test): "
                    f"{COLLAPSE_WHY.get(m, 'see the records')}; docs/results.md section 3 explains it."
                )
    return ["**What the table shows**", *(f"- {line}" for line in lines)]


def _interpret_fig1(records: Sequence[Record]) -> list[str]:
    shift = min(r["epoch"] for r in records if r["bad_fraction"]) - 1  # KnownClean marks bad after it
    test, flipped = _curves(records, "test_acc"), _curves(records, "train_acc_flipped")
    lines = []
    for (noise, method), runs in test.items():
        t, f = 100 * runs, 100 * flipped[(noise, method)]
        lines.append(
            f"{noise}, {method}: at the shift (epoch {shift}) test {t[:, shift - 1].mean():.1f}%, "
            f"flipped labels fitted {f[:, shift - 1].mean():.1f}%; at the end test "
            f"{t[:, -1].mean():.1f}% (std {t[:, -1].std():.1f}), flipped labels fitted {f[:, -1].mean():.1f}%"
        )
        stopgrad = (noise, "gamma=0")
        if method != "gamma=0" and stopgrad in test:
            forgot = 100 * (flipped[stopgrad][:, -1] - flipped[(noise, method)][:, -1])
            gain = 100 * (runs[:, -1] - test[stopgrad][:, -1])
            lines.append(
                f"{noise}, {method} against StopGrad (gamma=0): {forgot.mean():+.1f} points fewer flipped "
                f"labels fitted, {gain.mean():+.1f} points test accuracy (per-seed std {gain.std():.1f})"
            )
    return ["**What the curves show**", *(f"- {line}" for line in lines)]
