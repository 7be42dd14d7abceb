"""Tables and plots from the runner's JSON-lines records.

``python -m benchmarks.report RECORDS [RECORDS ...] --out DIR`` rebuilds the runner's
``table.md`` and plots from records (``results.jsonl`` or a committed ``.jsonl.gz``) without
training: runs still in progress are left out.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
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
SELECTION_TITLES = {
    "good_precision": "clean share of the good (descended) set (%)",
    "bad_precision": "flipped share of the bad (ascended) set (%)",
}


def read_records(path: Path) -> list[Record]:
    """The records of a ``.jsonl`` file, or of a gzip'd ``.jsonl.gz`` one."""
    with gzip.open(path, "rt") if path.suffix == ".gz" else path.open() as f:
        return [json.loads(line) for line in f if line.strip()]


def complete_runs(records: Sequence[Record]) -> list[Record]:
    """The records of the runs that reached their experiment's last epoch (the most recorded)."""
    key = ("experiment", "dataset", "model", "noise", "seed", "method")
    epochs: dict[tuple[Any, ...], int] = defaultdict(int)
    for r in records:
        epochs[tuple(r[k] for k in key)] += 1
    last: dict[str, int] = defaultdict(int)
    for k, count in epochs.items():
        last[k[0]] = max(last[k[0]], count)
    return [r for r in records if epochs[tuple(r[k] for k in key)] == last[r["experiment"]]]


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
    """Markdown: methods x noises, mean (std) over seeds of the last-``last``-epoch mean, in %.

    A cell with fewer seeds than the most of any cell says how many in brackets; one with nothing
    to measure (not run, or a method with no bad set) reads n/a."""
    curves = _curves(records, metric)
    noises = _ordered(r["noise"] for r in records)
    methods = _ordered(r["method"] for r in records)
    seeds = max(len(runs) for runs in curves.values())
    title = {**METRIC_TITLES, **SELECTION_TITLES}[metric]
    lines = [
        f"| {title}, mean of last {last} epochs | " + " | ".join(noises) + " |",
        "| --- |" + " --- |" * len(noises),
    ]
    for method in methods:
        cells = []
        for noise in noises:
            runs = curves.get((noise, method), np.full((1, 1), np.nan))
            if np.isnan(runs).all():  # not run, or nothing to measure (no bad set)
                cells.append("n/a")
                continue
            per_seed = 100 * np.nanmean(runs[:, -last:], axis=1)
            fewer = f" [{len(per_seed)}]" if len(per_seed) < seeds else ""
            cells.append(f"{per_seed.mean():.2f} ({per_seed.std():.2f}){fewer}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines.append(f"\n{seeds} seed(s) (fewer in brackets); std over seeds (numpy's, ddof=0).")
    return "\n".join(lines)


def cost_table(records: Sequence[Record]) -> str:
    """Markdown: each method's training seconds per epoch (all its networks), and their ratio to
    Standard's on the same noise and seed, mean over the runs that recorded ``seconds``."""
    seconds: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for r in records:
        if "seconds" in r:
            seconds[(r["noise"], r["method"], r["seed"])].append(r["seconds"])
    lines = ["| method | s / epoch | relative to Standard |", "| --- | --- | --- |"]
    for method in _ordered(m for _, m, _ in seconds):
        mine = {(n, s): float(np.mean(v)) for (n, m, s), v in seconds.items() if m == method}
        base = {(n, s): np.mean(v) for (n, m, s), v in seconds.items() if m == "standard"}
        ratios = [t / base[run] for run, t in mine.items() if run in base]
        ratio = f"{np.mean(ratios):.2f}" if ratios else "n/a"
        lines.append(f"| {method} | {np.mean(list(mine.values())):.2f} | {ratio} |")
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
    """Records grouped by figure: ``fig1`` and ``sweep`` apart, set1 and set2 together."""
    groups: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        groups[r["experiment"] if r["experiment"] in ("fig1", "sweep") else "sets"].append(r)
    return dict(groups)


NAMES = {"standard": "Standard", "self-teach": "Self-Teach", "sigua-sl": "SIGUA_SL", "bc": "BC",
         "nnbc": "nnBC", "sigua-bc": "SIGUA_BC", "co-teaching": "Co-teaching",
         "co-teaching-sigua": "Co-teaching + SIGUA"}  # fmt: skip
PAIRS = (
    ("sigua-sl", "self-teach"),
    ("self-teach", "standard"),
    ("co-teaching-sigua", "co-teaching"),
    ("sigua-sl", "co-teaching"),
    ("sigua-bc", "nnbc"),
    ("nnbc", "bc"),
)
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
        for noise in _ordered(n for n, _ in last):
            runs = [r for (n, _), r in last.items() if n == noise]
            columns = {
                "eps_hat": [r[key] for r in runs],
                "|eps_hat - eps|": [abs(r[key] - r["eps"]) for r in runs],
                "T MAE": [r["T_mae"] for r in runs if "T_mae" in r],
            }
            parts = [f"{label} {np.mean(v):.3f} ({np.std(v):.3f})" for label, v in columns.items() if v]
            lines.append(f"- {noise}: noise estimated {kind} over {len(runs)} seed(s): {', '.join(parts)}")
    return lines


def interpret(records: Sequence[Record]) -> list[str]:
    """A few lines saying what the records show: who won and by how much, memorisation, collapses."""
    if records[0]["experiment"] == "fig1":
        return _interpret_fig1(records)
    if records[0]["experiment"] == "sweep":
        return _interpret_sweep(records)
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
                    f"{COLLAPSE_WHY.get(m, 'see the records')}; docs/results.md explains it "
                    "('Does the loss-correction family work?')."
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
            fitted = 100 * (flipped[(noise, method)][:, -1] - flipped[stopgrad][:, -1])
            gain = 100 * (runs[:, -1] - test[stopgrad][:, -1])
            lines.append(
                f"{noise}, {method} against StopGrad (gamma=0): flipped labels fitted {fitted.mean():+.1f} "
                f"points, test accuracy {gain.mean():+.1f} points (per-seed std {gain.std():.1f})"
            )
    return ["**What the curves show**", *(f"- {line}" for line in lines)]


# -- the sweep: SIGUA_SL over band ratio x gamma x T_k ----------------------------------------------
Point = tuple[float, float, float]  # (band ratio r = delta / eps, gamma, T_k)


@dataclass(frozen=True)
class Sweep:
    """One noise's sweep: per-seed last-10-epoch test accuracy (%) of SIGUA_SL at each grid point
    and of Self-Teach at each T_k, seeds in the same order."""

    bands: list[float]
    gammas: list[float]
    warmups: list[float]
    sigua: dict[Point, np.ndarray]
    self_teach: dict[float, np.ndarray]

    def mean(self, point: Point) -> float:
        return float(self.sigua[point].mean())

    def gain(self, point: Point) -> np.ndarray:
        """Per seed: SIGUA_SL at ``point`` minus Self-Teach at the same T_k."""
        gain: np.ndarray = self.sigua[point] - self.self_teach[point[2]]
        return gain

    def neighbours(self, point: Point) -> list[Point]:
        """The grid points one step away from ``point`` along one axis."""
        axes = (self.bands, self.gammas, self.warmups)
        found = []
        for axis, values in enumerate(axes):
            i = values.index(point[axis])
            for j in (i - 1, i + 1):
                if 0 <= j < len(values):
                    found.append((*point[:axis], values[j], *point[axis + 1 :]))
        return found  # type: ignore[return-value]

    def best(self) -> Point:
        return max(self.sigua, key=self.mean)


def sweeps(records: Sequence[Record]) -> dict[str, Sweep]:
    """noise -> its :class:`Sweep`, from the records of ``python -m benchmarks.run sweep``."""
    last = _last(records, "test_acc")
    points = {(r["noise"], r["method"]): (r["band_ratio"], r["gamma"], r["warmup"]) for r in records}
    found = {}
    for noise in _ordered(r["noise"] for r in records):
        mine = {p: last[key] for key, p in points.items() if key[0] == noise}
        sigua = {p: acc for p, acc in mine.items() if p[1] is not None}
        found[noise] = Sweep(
            sorted({p[0] for p in sigua}),
            sorted({p[1] for p in sigua}),
            sorted({p[2] for p in mine}),
            sigua,
            {p[2]: acc for p, acc in mine.items() if p[1] is None},
        )
    return found


def _name(point: Point) -> str:
    r, gamma, warmup = point
    return f"delta = {r:g} eps, gamma = {gamma:g}, T_k = {warmup:g}"


def sweep_table(records: Sequence[Record]) -> str:
    """Markdown, one table per noise: rows T_k x band ratio (and Self-Teach at each T_k), columns
    gamma; mean (std) over seeds of the last-10-epoch test accuracy, in %."""
    parts = []
    for noise, s in sweeps(records).items():
        lines = [
            f"| {noise}: test acc. (%), last 10 epochs | "
            + " | ".join(f"gamma = {g:g}" for g in s.gammas)
            + " |",
            "| --- |" + " --- |" * len(s.gammas),
        ]
        for warmup in s.warmups:
            st = s.self_teach[warmup]
            lines.append(
                f"| T_k = {warmup:g}, Self-Teach | {st.mean():.2f} ({st.std():.2f}) |"
                + " |" * (len(s.gammas) - 1)
            )
            for r in s.bands:
                cells = [s.sigua[(r, g, warmup)] for g in s.gammas]
                lines.append(
                    f"| T_k = {warmup:g}, delta = {r:g} eps | "
                    + " | ".join(f"{c.mean():.2f} ({c.std():.2f})" for c in cells)
                    + " |"
                )
        parts.append("\n".join(lines))
    seeds = len({r["seed"] for r in records})
    return "\n\n".join(parts) + f"\n\n{seeds} seed(s); std over seeds (numpy's, ddof=0)."


def _neighbourhood(s: Sweep, point: Point) -> str:
    """How the grid cells one step from ``point`` compare with it."""
    changes = [s.mean(p) - s.mean(point) for p in s.neighbours(point)]
    return (
        f"its {len(changes)} neighbouring cells differ from it by {min(changes):+.2f} to "
        f"{max(changes):+.2f} points (mean {np.mean(changes):+.2f})"
    )


def _smoothed(grids: Iterable[Sweep], point: Point) -> float:
    """The mean over ``grids`` of the mean accuracy of ``point`` and its neighbouring cells."""
    return float(np.mean([np.mean([s.mean(p) for p in (point, *s.neighbours(point))]) for s in grids]))


def _interpret_sweep(records: Sequence[Record]) -> list[str]:
    grids = sweeps(records)
    lines = []
    for noise, s in grids.items():
        best, worst = s.best(), min(s.sigua, key=s.mean)
        gain = s.gain(best)
        above = sum(s.gain(p).mean() > 0 for p in s.sigua)
        top = max(s.self_teach, key=lambda w: s.self_teach[w].mean())
        lines += [
            f"{noise}: best SIGUA_SL {_name(best)}: {s.mean(best):.2f}%, {gain.mean():+.2f} points over "
            f"Self-Teach at its T_k (ahead on {int((gain > 0).sum())} of {len(gain)} seeds); "
            f"{_neighbourhood(s, best)}",
            f"{noise}: the grid spans {s.mean(best) - s.mean(worst):.2f} points (worst: {_name(worst)}, "
            f"{s.mean(worst):.2f}%); {above} of {len(s.sigua)} points above Self-Teach at their T_k; "
            f"best Self-Teach: T_k = {top:g}, {s.self_teach[top].mean():.2f}%; median std over "
            f"seeds of a cell: {np.median([a.std() for a in s.sigua.values()]):.2f} points",
        ]
    common = set.intersection(*(set(s.sigua) for s in grids.values()))
    if common:
        rule = max(sorted(common), key=lambda p: _smoothed(grids.values(), p))
        per_noise = ", ".join(
            f"{n} {s.mean(rule):.2f}% ({s.mean(rule) - s.mean(s.best()):+.2f} from its best, "
            f"{s.gain(rule).mean():+.2f} over Self-Teach)"
            for n, s in grids.items()
        )
        lines.append(
            f"robust setting: {_name(rule)}, the best mean over the noises of the accuracy averaged "
            f"over a cell and its neighbouring cells (so not beside a collapse): {per_noise}"
        )
        lines += [f"{noise}: at the robust setting {_neighbourhood(s, rule)}" for noise, s in grids.items()]
    return ["**What the grid shows**", *(f"- {line}" for line in lines)]


def heatmaps(records: Sequence[Record], path: Path, title: str) -> None:
    """One row per noise, one panel per T_k: band ratio x gamma, coloured by the gain over
    Self-Teach at that T_k, annotated with the test accuracy and the gain (means over seeds).
    The colours span +-(the largest gain, at least 1 point): larger losses saturate."""
    grids = sweeps(records)
    cols = max(len(s.warmups) for s in grids.values())
    fig, axes = plt.subplots(
        len(grids),
        cols,
        figsize=(max(3.3 * cols + 1, 6.5), 3.0 * len(grids)),
        squeeze=False,
        layout="constrained",
    )
    for row, (noise, s) in enumerate(grids.items()):
        limit = max(1.0, *(s.gain(p).mean() for p in s.sigua))
        for col, warmup in enumerate(s.warmups):
            ax = axes[row][col]
            gain = np.array([[s.gain((r, g, warmup)).mean() for g in s.gammas] for r in s.bands])
            image = ax.imshow(gain, cmap="RdBu", vmin=-limit, vmax=limit, origin="lower", aspect="auto")
            for i, r in enumerate(s.bands):
                for j, g in enumerate(s.gammas):
                    color = "white" if abs(gain[i, j]) > 0.6 * limit else "black"
                    text = f"{s.mean((r, g, warmup)):.1f}\n{gain[i, j]:+.1f}"
                    ax.text(j, i, text, ha="center", va="center", fontsize=8, color=color)
            ax.set_xticks(range(len(s.gammas)), [f"{g:g}" for g in s.gammas])
            ax.set_yticks(range(len(s.bands)), [f"{r:g}" for r in s.bands])
            ax.set_xlabel(r"$\gamma$")
            ax.set_ylabel(r"$\delta / \epsilon$")
            ax.set_title(
                f"{noise}, $T_k$ = {warmup:g}\nSelf-Teach {s.self_teach[warmup].mean():.1f}%", fontsize=9
            )
        fig.colorbar(image, ax=list(axes[row]), label="gain over Self-Teach (points)", shrink=0.9)
    fig.suptitle(f"{title}\ncells: test acc. (%), gain over Self-Teach; last 10 epochs, mean over seeds")
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write(records: Sequence[Record], out: Path, dataset: str) -> tuple[str, list[Path]]:
    """Write ``table.md`` and one plot per figure under ``out``; return the text and the plots."""
    texts, plots = [], []
    for name, group in by_figure(records).items():
        plots.append(out / f"{name}.png")
        title = f"{name} on {dataset} ({group[0]['model']})"
        if name == "sweep":
            heatmaps(group, plots[-1], title)
            tables = [sweep_table(group)]
        else:
            plot(group, plots[-1], title)
            tables = [table(group, metric) for metric in {**METRIC_TITLES, **SELECTION_TITLES}]
            if any("seconds" in r for r in group):
                tables.append(cost_table(group))
        lines = [*interpret(group), *noise_estimates(group)]
        texts.append("\n\n".join([f"## {name}", *tables, "\n".join(lines)]))
    text = "\n\n".join(texts)
    (out / "table.md").write_text(text + "\n")
    return text, plots


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("records", nargs="+", type=Path, help="results.jsonl or .jsonl.gz files")
    parser.add_argument("--out", type=Path, required=True, help="folder for table.md and the plots")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.records if not p.is_file()]
    if missing:
        parser.error(f"no such records file: {', '.join(missing)}")
    records = complete_runs([r for path in args.records for r in read_records(path)])
    if not records:
        parser.error("no complete run in the records")
    args.out.mkdir(parents=True, exist_ok=True)
    text, _ = write(records, args.out, records[0]["dataset"])
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
