"""Draw the concepts page's figure: the good / bad / ignored bands of SIGUA_SL over a sorted batch.

The masks are the library's own: ``BandSelected(noise_rate=0.5, band=0.15)`` after its warm-up,
on 40 per-sample losses of a mixture (most small, a few large, as with noisy labels).

    python docs/figures.py                     # writes docs/img/bands.png
    python docs/figures.py --out /tmp/x.png
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from sigua_optim.conditions import BandSelected

OUT = Path(__file__).resolve().parent / "img" / "bands.png"
COLOURS = {"good": "#2e7d32", "bad": "#c62828", "ignored": "#9e9e9e"}


def batch(n: int = 40, seed: int = 0) -> torch.Tensor:
    """Per-sample losses of a noisy batch: 60% small (clean, learned), 40% spread out (flipped)."""
    generator = torch.Generator().manual_seed(seed)
    clean = torch.rand(int(0.6 * n), generator=generator) * 0.4
    flipped = 0.3 + torch.rand(n - clean.numel(), generator=generator) * 3.0
    return torch.cat([clean, flipped])


def draw(out: Path = OUT, noise_rate: float = 0.5, band: float = 0.15, gamma: float = 0.01) -> Path:
    """Select with BandSelected at rho = 1 - noise_rate and draw the sorted losses by band."""
    losses = batch().sort().values
    n = losses.numel()
    condition = BandSelected(noise_rate=noise_rate, band=band, warmup_epochs=0)
    good, bad = condition(losses)
    pairs = zip(good.tolist(), bad.tolist(), strict=True)
    kind = ["good" if g else "bad" if b else "ignored" for g, b in pairs]
    rho = condition.rate
    fig, ax = plt.subplots(figsize=(9, 3.6), dpi=110)
    labels = {
        "good": f"good: weight $+1/n_b$ (Eq. 5, {int(good.sum())} samples)",
        "bad": f"bad: weight $-\\gamma/n_b$, $\\gamma$ = {gamma} (Eq. 6, {int(bad.sum())} samples)",
        "ignored": f"ignored: weight 0 ({n - int(good.sum()) - int(bad.sum())} samples)",
    }
    for name in ("good", "bad", "ignored"):
        ranks = [i for i, k in enumerate(kind) if k == name]
        ax.bar(ranks, losses[ranks].tolist(), color=COLOURS[name], width=0.85, label=labels[name])
    for bound, text in ((n * rho, r"$n_b\rho$"), (n * rho + n * band, r"$n_b(\rho + \delta)$")):
        ax.axvline(math.floor(bound) + 0.5, color="black", linestyle="--", linewidth=1)
        ax.annotate(f"{text} = {bound:g}", (math.floor(bound) + 0.7, float(losses.max()) * 0.92))
    ax.set_xlabel("rank of the loss in the mini-batch (0 = smallest)")
    ax.set_ylabel(r"per-sample loss $\ell_i$")
    ax.set_title(f"SIGUA_SL, a batch of $n_b$ = {n}: $\\rho = 1 - \\epsilon$ = {rho:g}, $\\delta$ = {band:g}")
    ax.legend(loc="upper left", frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"the PNG to write (default: {OUT})")
    print(draw(parser.parse_args(argv).out))


if __name__ == "__main__":
    main()
