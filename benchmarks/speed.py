"""Speed and memory of SIGUA's selection, reduction and step, side by side in one run.

``python -m benchmarks.speed [--sizes 128,1024,...] [--tables ...] [--host ...] [--models ...] [--quick]
[--out results/speed.json]``

1. Selection + reduction (forward: masks and the objective of Eq. 3) against n, for SmallLoss,
   BandSelected and NonNegativeCorrection: ours eager and ``torch.compile``d, against the literal
   pairwise count of Eq. 5 (up to 16k), the authors' approach (argsort on the host, index
   gather, per-group means), a ``torch.topk`` selection, and the floors on the same tensor: one
   single-k ``numpy.partition``, one ``torch.kthvalue``, one ``losses.sum()``. NonNegativeCorrection
   also with the per-class losses shared by the loss's ``BackwardCorrection`` ("ours shared"),
   against one ``log_softmax`` over the same ``[n, k]`` logits.
2. Step overhead: ``SIGUAOptimizer.step(losses)`` against ``loss.mean().backward();
   optimizer.step()`` on the Figure-1 deep MLP and the 9-layer CNN at batch 128, same data.
3. Peak extra memory of selection + reduction against n, each in a fresh process.
4. On a GPU (``--devices cuda``): tables 1-2 there (steps timed in blocks of 20, also with
   ``nonfinite="unchecked"`` and captured in CUDA graphs), kernel launches counted with the
   profiler, the host time of the loss by operator, and peak GPU memory.
5. SIGUA's own host time inside real steps (``--host mlp=300,cnn9=5``): the time of
   ``opt.step(losses)`` less the backward and the wrapped optimizer's step it runs, and the aten
   operators dispatched per step (``torch.profiler``), plain step against SIGUA's; and the floor,
   one ``mean()`` of the per-sample losses timed at the same place in a plain step.
6. Realistic models and the alternatives (``--models mlp=30,cnn9=3,resnet18=2,bert=2``): the
   plain step, SIGUA's, the authors' (their selection, then backward and step) and Co-teaching's
   two-network step on the Figure-1 MLP, the 9-layer CNN and a ResNet-18 at batch 128, and a
   BERT-base encoder from its config at 32 x 128 tokens (per-sequence and per-token losses;
   needs ``transformers``, the ``integrations`` extra, and is skipped without it).

Every timing is a median over repeats in which the contenders take turns (interleaved), after a
warm-up. Tables are printed; all numbers go to a JSON file.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import multiprocessing
import platform
import random
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.models import cnn9, deep_mlp, resnet18
from sigua_optim import SIGUAOptimizer, _guard, functional
from sigua_optim.conditions import BandSelected, NonNegativeCorrection, SmallLoss
from sigua_optim.losses import BackwardCorrection
from sigua_optim.noise import symmetric

SIZES = (128, 1024, 16_384, 262_144, 1_048_576, 4_194_304)
EPS, BAND, GAMMA, K = 0.5, 0.15, 0.01, 10
PAIRWISE_LIMIT = 16_384


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def samples(
    contenders: Mapping[str, Callable[[], Any]], repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each contender over ``repeats`` rounds in which they take turns, the
    order rotated by one each round and reversed every other cycle (so that each runs in every
    position, after every other, equally often), after ``warmup`` calls each.

    Each call is timed to the end of its GPU work (a device synchronisation when CUDA is there).
    """
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for round_ in range(repeats):
        shift = round_ % len(names)
        order = names[shift:] + names[:shift]
        for name in order if round_ // len(names) % 2 == 0 else order[::-1]:
            _synchronize()
            start = time.perf_counter()
            contenders[name]()
            _synchronize()
            times[name].append(time.perf_counter() - start)
    return times


def interleaved(contenders: Mapping[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds per call of each contender (see :func:`samples`)."""
    return {name: statistics.median(ts) for name, ts in samples(contenders, repeats).items()}


def paired_ratio(times: list[float], base: list[float]) -> tuple[float, float, float]:
    """The median of the per-round ratios ``times / base`` and its 90% bootstrap interval.

    A ratio of two calls made back to back cancels the slow drifts of a shared machine that a
    ratio of two medians keeps.
    """
    ratios = [t / b for t, b in zip(times, base, strict=True)]
    rng, resamples = random.Random(0), 200
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(resamples))
    tail = resamples // 20  # 5% on each side
    return statistics.median(ratios), medians[tail], medians[-1 - tail]


def repeats_for(n: int) -> int:
    return max(7, min(200, 2_000_000 // max(n, 1)))


# -- 1. selection + reduction -------------------------------------------------------------------
def ours(condition: Any) -> Callable[..., torch.Tensor]:
    def run(losses: torch.Tensor, **inputs: Any) -> torch.Tensor:
        good, bad = condition(losses.detach(), **inputs)
        return functional.sigua_objective(losses, good, bad, GAMMA)

    return run


def pairwise(losses: torch.Tensor, band: float) -> torch.Tensor:
    """Eq. 5-6 as written: an n x n comparison matrix."""
    n = losses.shape[0]
    counts = (losses[:, None] > losses[None, :]).sum(dim=1)
    good = counts <= n * (1 - EPS)
    bad = ~good & (counts <= n * (1 - EPS) + n * band)
    return functional.sigua_objective(losses, good, bad, GAMMA)


def authors(losses: torch.Tensor, band: float) -> torch.Tensor:
    """The authors' approach: argsort on the host, gather, group means."""
    n = losses.shape[0]
    order = torch.from_numpy(np.argsort(losses.detach().cpu().numpy(), kind="quicksort"))
    n_good = int(n * (1 - EPS))
    n_bad = int(n * band)
    objective = losses[order[:n_good]].mean()
    if n_bad:
        objective = objective - GAMMA * losses[order[n_good : n_good + n_bad]].mean()
    return objective


def topk(losses: torch.Tensor, band: float) -> torch.Tensor:
    """Thresholds from one ``torch.topk`` of the smallest losses."""
    n = losses.shape[0]
    m_good, m_bad = math.floor(n * (1 - EPS)), math.floor(n * (1 - EPS) + n * band)
    smallest = torch.topk(losses.detach(), min(m_bad + 1, n), largest=False, sorted=True).values
    good = losses.detach() <= smallest[min(m_good, n - 1)]
    bad = ~good & (losses.detach() <= smallest[-1])
    return functional.sigua_objective(losses, good, bad, GAMMA)


def selection_table(sizes: list[int], compile_too: bool, device: str) -> list[dict[str, Any]]:
    rows = []
    transition = symmetric(K, EPS)
    for n in sizes:
        generator = torch.Generator().manual_seed(n)
        losses = torch.rand(n, generator=generator).to(device).requires_grad_(True)
        logits = torch.randn(n, K, generator=generator).to(device)
        targets = torch.randint(0, K, (n,), generator=generator).to(device)
        k = math.floor(n * (1 - EPS)) + 1
        for name, condition, band in (
            ("SmallLoss", SmallLoss(EPS, warmup_epochs=0), 0.0),
            ("BandSelected", BandSelected(EPS, BAND, warmup_epochs=0), BAND),
            ("NonNegativeCorrection", NonNegativeCorrection(transition), 0.0),
        ):
            inputs = {"logits": logits, "targets": targets} if name == "NonNegativeCorrection" else {}
            fn = ours(condition)
            contenders: dict[str, Callable[[], Any]] = {"ours": partial(fn, losses, **inputs)}
            if compile_too:
                torch._dynamo.reset()  # a fresh cache per condition and size: no recompile limit
                compiled = torch.compile(fn, fullgraph=True, dynamic=False)
                contenders["ours compiled"] = partial(compiled, losses, **inputs)
            if name == "NonNegativeCorrection":
                # SIGUA_BC as trained: the loss's BackwardCorrection has computed l_vec for these
                # logits, which the condition reuses; and one log_softmax over them, the floor.
                correction = BackwardCorrection(transition)
                correction(logits, targets)
                contenders["ours shared"] = partial(ours(NonNegativeCorrection(correction)), losses, **inputs)
                contenders["floor log_softmax"] = partial(F.log_softmax, logits, dim=1)
            else:
                if n <= PAIRWISE_LIMIT // 4:
                    contenders["pairwise Eq. 5"] = partial(pairwise, losses, band)
                contenders["authors"] = partial(authors, losses, band)
                contenders["topk"] = partial(topk, losses, band)
            if device == "cpu":
                contenders["floor np.partition"] = partial(np.partition, losses.detach().numpy(), k - 1)
            else:
                contenders["floor sort"] = partial(torch.sort, losses.detach())
            contenders["floor kthvalue"] = partial(torch.kthvalue, losses.detach(), k)
            contenders["floor sum"] = losses.detach().sum
            times = interleaved(contenders, repeats_for(n))
            if PAIRWISE_LIMIT // 4 < n <= PAIRWISE_LIMIT and name != "NonNegativeCorrection":
                # Seconds a call at this size: a few repeats of its own, in the same run.
                times |= interleaved({"pairwise Eq. 5": partial(pairwise, losses, band)}, 3)
            rows.append(
                {"device": device, "condition": name, "n": n, "ms": {c: t * 1e3 for c, t in times.items()}}
            )
            print_selection_row(rows[-1])
    return rows


def print_selection_row(row: dict[str, Any]) -> None:
    ms = row["ms"]
    floor = "floor np.partition" if "floor np.partition" in ms else "floor kthvalue"
    cells = ", ".join(f"{name} {value:.3f}" for name, value in ms.items())
    ratios = f"ours/{floor.removeprefix('floor ')} {ms['ours'] / ms[floor]:.2f}x"
    if "authors" in ms:
        ratios += f", authors/ours {ms['authors'] / ms['ours']:.2f}x"
    if "floor log_softmax" in ms:
        ratios += f", ours/log_softmax {ms['ours'] / ms['floor log_softmax']:.2f}x"
        ratios += f", ours shared/log_softmax {ms['ours shared'] / ms['floor log_softmax']:.2f}x"
    print(f"{row['condition']:>22} n={row['n']:>8}: {cells} ms | {ratios}")


# -- 2. step overhead ----------------------------------------------------------------------------
def _plain_steps(
    model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, count: int
) -> None:
    for _ in range(count):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()  # type: ignore[no-untyped-call]
        opt.step()


def _sigua_steps(
    model: torch.nn.Module, opt: SIGUAOptimizer, x: torch.Tensor, y: torch.Tensor, count: int
) -> None:
    for _ in range(count):
        opt.zero_grad()
        opt.step(F.cross_entropy(model(x), y, reduction="none"))


def _without_grad_check(steps: Callable[[], Any]) -> None:
    """``steps`` with the guard's gradient check switched off: the guard judges the losses only
    (it still reads its one flag back), to isolate what checking the gradients costs."""
    check = _guard.grad_norms
    _guard.grad_norms = lambda grads: []
    try:
        steps()
    finally:
        _guard.grad_norms = check


def _mean_loss(logits: torch.Tensor, y: torch.Tensor) -> None:
    F.cross_entropy(logits, y).backward()  # type: ignore[no-untyped-call]


def _sigua_loss(opt: SIGUAOptimizer, logits: torch.Tensor, y: torch.Tensor) -> None:
    opt.objective(F.cross_entropy(logits, y, reduction="none")).backward()  # type: ignore[no-untyped-call]


def _captured(step: Callable[[], Any]) -> Callable[[], Any]:
    """The replay of ``step`` captured in a CUDA graph, after three eager warm-up calls."""
    side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def _repeated(fn: Callable[[], Any], count: int) -> None:
    for _ in range(count):
        fn()


def step_overhead(repeats: dict[str, int], device: str) -> list[dict[str, Any]]:
    """Plain and SIGUA steps take turns on ONE model and optimizer (same memory, same caches),
    and, to isolate what SIGUA adds, the loss alone (forward and backward from fixed logits).

    On CUDA each timing covers a block of 20 steps (the device synchronised around the block
    only, as in a training loop). SIGUA runs with the default non-finite guard (one host read
    per step, losses and gradients), with the guard judging the losses only (its gradient check
    switched off), and with ``nonfinite="unchecked"`` (no guard, no read); on CUDA both steps run
    again captured in CUDA graphs (each on its own copy of the model), where no host work is
    left to measure.
    """
    rows = []
    count = 20 if device == "cuda" else 1
    for name, build in (("deep MLP (Fig. 1)", deep_mlp), ("9-layer CNN", cnn9)):
        if not repeats.get(name):
            continue
        torch.manual_seed(0)
        model = build().to(device)
        generator = torch.Generator().manual_seed(1)
        x = torch.rand(128, 784, generator=generator).to(device)
        y = torch.randint(0, 10, (128,), generator=generator).to(device)

        def make(net: torch.nn.Module, nonfinite: str = "raise") -> tuple[torch.optim.SGD, SIGUAOptimizer]:
            plain = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
            condition = BandSelected(EPS, BAND, warmup_epochs=0)
            return plain, SIGUAOptimizer(plain, condition, GAMMA, nonfinite=nonfinite)  # type: ignore[arg-type]

        plain, sigua = make(model)
        steps = {
            "plain": partial(_plain_steps, model, plain, x, y, count),
            "SIGUA": partial(_sigua_steps, model, sigua, x, y, count),
        }
        unchecked = make(model, "unchecked")[1]
        steps["SIGUA unchecked"] = partial(_sigua_steps, model, unchecked, x, y, count)
        steps["SIGUA losses-only guard"] = partial(_without_grad_check, steps["SIGUA"])
        versus = {
            "SIGUA": "plain",
            "SIGUA unchecked": "plain",
            "SIGUA losses-only guard": "plain",
        }

        if device == "cuda":
            copies = [copy.deepcopy(model) for _ in range(2)]
            plain_graph = make(copies[0])[0]
            sigua_graph = make(copies[1], "unchecked")[1]
            replays = (
                _captured(partial(_plain_steps, copies[0], plain_graph, x, y, 1)),
                _captured(partial(_sigua_steps, copies[1], sigua_graph, x, y, 1)),
            )
            steps["plain graph"] = partial(_repeated, replays[0], count)
            steps["SIGUA graph"] = partial(_repeated, replays[1], count)
            versus |= {"SIGUA unchecked": "plain", "SIGUA graph": "plain graph"}
        times = samples(steps, repeats[name], warmup=max(3, repeats[name] // 100))
        ratios = {k: paired_ratio(times[k], times[base]) for k, base in versus.items()}
        guard_ratios = {
            "SIGUA / SIGUA unchecked": paired_ratio(times["SIGUA"], times["SIGUA unchecked"]),
            "SIGUA / SIGUA losses-only guard": paired_ratio(times["SIGUA"], times["SIGUA losses-only guard"]),
        }
        ms = {k: statistics.median(v) * 1e3 / count for k, v in times.items()}
        logits = torch.randn(128, 10, device=device, requires_grad=True)
        losses = {"mean": partial(_mean_loss, logits, y), "SIGUA": partial(_sigua_loss, sigua, logits, y)}
        loss_times = interleaved(losses, 500)
        ratio, low, high = ratios["SIGUA"]
        row = {
            "device": device,
            "model": name,
            "repeats": repeats[name],
            "steps_per_timing": count,
            "ms": ms,
            "ratio": ratio,
            "ratio_ci90": [low, high],
            "ratios": {f"{k} / {base}": list(ratios[k]) for k, base in versus.items()}
            | {k: list(v) for k, v in guard_ratios.items()},
            "extra_ms_in_step": ms["SIGUA"] - ms["plain"],
            "loss_us": {k: v * 1e6 for k, v in loss_times.items()},
        }
        others = "".join(
            f"; {k} {ms[k]:.3f} / {base} {ms[base]:.3f} ms = {ratios[k][0]:.4f}"
            for k, base in versus.items()
            if k != "SIGUA"
        ) + "".join(f"; {k} = {v[0]:.4f} (90% CI {v[1]:.4f}-{v[2]:.4f})" for k, v in guard_ratios.items())
        print(
            f"{name:>18} ({device}): plain {ms['plain']:.3f} ms, SIGUA {ms['SIGUA']:.3f} ms, "
            f"ratio {ratio:.4f} (90% CI {low:.4f}-{high:.4f}, {repeats[name]} pairs){others}; the loss "
            f"alone in a hot loop: mean {loss_times['mean'] * 1e6:.1f} us, "
            f"SIGUA {loss_times['SIGUA'] * 1e6:.1f} us"
        )
        rows.append(row)
    return rows


# -- 3. peak memory ------------------------------------------------------------------------------
def _resident_kib(key: str) -> int:
    """A line of /proc/self/status: VmRSS (resident now) or VmHWM (its peak), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/self/status")


def _peak_probe(name: str, n: int, queue: Any) -> None:
    torch.set_num_threads(1)
    losses = torch.rand(n).requires_grad_(True)
    condition = (
        BandSelected(EPS, BAND, warmup_epochs=0)
        if name == "BandSelected"
        else SmallLoss(EPS, warmup_epochs=0)
    )
    ours(condition)(torch.rand(64).requires_grad_(True))  # warm up every code path
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak to what is resident now
    before = _resident_kib("VmRSS")
    ours(condition)(losses)
    queue.put((_resident_kib("VmHWM") - before) * 1024)


def peak_memory(sizes: list[int]) -> list[dict[str, Any]]:
    rows = []
    context = multiprocessing.get_context("spawn")
    for name in ("SmallLoss", "BandSelected"):
        for n in sizes:
            queue = context.Queue()
            process = context.Process(target=_peak_probe, args=(name, n, queue))
            process.start()
            extra = queue.get()
            process.join()
            rows.append({"condition": name, "n": n, "extra_bytes": extra, "bytes_per_sample": extra / n})
            print(f"{name:>14} n={n:>8}: peak extra {extra / 2**20:7.2f} MiB = {extra / n:5.1f} bytes/sample")
    return rows


def _kernels(fn: Callable[[], Any]) -> tuple[int, Any]:
    """The CUDA kernels (and copies, fills) that one call of ``fn`` launches, and the profile."""
    fn()
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as profile:
        fn()
        torch.cuda.synchronize()
    launched = [e for e in profile.events() if e.device_type == torch.profiler.DeviceType.CUDA]
    return len(launched), profile


def cuda_extras() -> dict[str, Any]:
    """Kernel launches and peak extra GPU memory of a BandSelected selection + reduction; the
    host time by operator of the objective's forward and backward in a batch of 128."""
    condition = BandSelected(EPS, BAND, warmup_epochs=0)
    extras: dict[str, Any] = {}
    for n in (128, 1_048_576):
        losses = torch.rand(n, device="cuda").requires_grad_(True)
        extras[f"kernels_forward_n{n}"], _ = _kernels(partial(ours(condition), losses))
        extras[f"kernels_forward_backward_n{n}"], _ = _kernels(lambda: ours(condition)(losses).backward())  # type: ignore[no-untyped-call]  # noqa: B023
        extras[f"kernels_mean_forward_backward_n{n}"], _ = _kernels(lambda: losses.mean().backward())  # type: ignore[no-untyped-call]  # noqa: B023
        print(
            f"kernel launches at n = {n}: BandSelected selection + reduction "
            f"{extras[f'kernels_forward_n{n}']}, with its backward "
            f"{extras[f'kernels_forward_backward_n{n}']} (a mean with its backward: "
            f"{extras[f'kernels_mean_forward_backward_n{n}']})"
        )
    logits = torch.randn(128, K, device="cuda", requires_grad=True)
    targets = torch.randint(0, K, (128,), device="cuda")
    opt = SIGUAOptimizer(torch.optim.SGD([logits], lr=0.1), condition, GAMMA)
    _, profile = _kernels(partial(_sigua_loss, opt, logits, targets))
    print(profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    for n in SIZES:
        values = torch.rand(n, device="cuda").requires_grad_(True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        ours(condition)(values)
        extra = torch.cuda.max_memory_allocated() - base
        extras[f"peak_extra_bytes_n{n}"] = extra
        print(f"GPU peak extra memory at n={n:>8}: {extra / 2**20:7.2f} MiB = {extra / n:5.1f} bytes/sample")
    return extras


# -- the models of tables 5 and 6 ---------------------------------------------------------------
PerSample = Callable[[torch.nn.Module], tuple[torch.Tensor, dict[str, Any]]]


class Case(NamedTuple):
    """A model on one batch: the scalar a plain step back-propagates, and SIGUA's per-sample
    losses with their named inputs, by variant ("" for a classifier; per sequence, per token)."""

    model: torch.nn.Module
    plain_loss: Callable[[torch.nn.Module], torch.Tensor]
    per_sample: dict[str, PerSample]


def _classifier(build: Callable[[], torch.nn.Module], features: int, device: str) -> Case:
    """A classifier on 128 random inputs of ``features`` values, 10 classes."""
    torch.manual_seed(0)
    model = build().to(device)
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(128, features, generator=generator).to(device)
    y = torch.randint(0, 10, (128,), generator=generator).to(device)
    return Case(
        model,
        lambda m: F.cross_entropy(m(x), y),
        {"": lambda m: (F.cross_entropy(m(x), y, reduction="none"), {})},
    )


def _bert(device: str) -> Case:
    """BERT-base (``BertConfig()``: 12 layers, hidden 768, 12 heads, 30,522 tokens; 110M
    parameters) with its masked-LM head predicting every real token of 32 sequences of 128
    tokens, the last 0-64 of each padding. Plain: the mean token loss. SIGUA per sequence:
    ``functional.sequence_losses`` (32 losses); per token: the ``[32, 128]`` token losses with
    ``valid=`` (4,096 losses, the padding masked out)."""
    from transformers import BertConfig, BertForMaskedLM  # the "integrations" extra

    torch.manual_seed(0)
    config = BertConfig()
    model: torch.nn.Module = BertForMaskedLM(config)
    model.to(device)
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, config.vocab_size, (32, 128), generator=generator).to(device)
    valid = (torch.arange(128) < torch.randint(64, 129, (32, 1), generator=generator)).to(device)
    labels = ids.masked_fill(~valid, -100).flatten()  # cross_entropy's ignore_index: padding's loss is 0

    def logits(m: torch.nn.Module) -> torch.Tensor:
        return m(input_ids=ids, attention_mask=valid.long()).logits.flatten(0, 1)  # type: ignore[no-any-return]

    def token_losses(m: torch.nn.Module) -> torch.Tensor:
        return F.cross_entropy(logits(m), labels, reduction="none").view(32, 128)

    return Case(
        model,
        lambda m: F.cross_entropy(logits(m), labels),
        {
            "per sequence": lambda m: (functional.sequence_losses(token_losses(m), valid), {}),
            "per token": lambda m: (token_losses(m), {"valid": valid}),
        },
    )


CASES: dict[str, tuple[str, Callable[[str], Case]]] = {
    "mlp": ("deep MLP (Fig. 1)", partial(_classifier, deep_mlp, 784)),
    "cnn9": ("9-layer CNN", partial(_classifier, cnn9, 784)),
    "resnet18": ("ResNet-18 32x32", partial(_classifier, resnet18, 3 * 32 * 32)),
    "bert": ("BERT-base 32x128", _bert),
}


def _cases(rounds: dict[str, int], device: str) -> Iterator[tuple[str, Case, int, torch.optim.SGD]]:
    """Each model of ``rounds`` (a key of ``CASES``) with its name, case, round count and a plain
    SGD (momentum 0.9) over its parameters; one whose library is missing is said and skipped."""
    for key, count in rounds.items():
        name, make = CASES[key]
        try:
            case = make(device)
        except ImportError as error:
            print(
                f"{name:>18}: skipped ({error}; pip install 'sigua-optim[integrations]' brings transformers)"
            )
            continue
        yield name, case, count, torch.optim.SGD(case.model.parameters(), lr=0.01, momentum=0.9)


def _plain_step(case: Case, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad()
    case.plain_loss(case.model).backward()  # type: ignore[no-untyped-call]
    opt.step()


class InStep:
    """SIGUA's own host time inside real steps, one sample per ``opt.step(losses)``.

    ``own``: the time of the call less the backward and the wrapped optimizer's step that it
    runs, i.e. validation, selection, Eq. 3, the record of the result and the non-finite guard.
    ``grad_pass``: the part of it in the guard's pass over the gradients
    (``_guard.grad_norms``, a read of every gradient). Timed by wrapping
    ``torch.autograd.backward``, the wrapped optimizer's ``step`` and that pass for the duration
    of the call only (a ``perf_counter`` pair each, well under a microsecond).
    """

    def __init__(self, opt: SIGUAOptimizer, case: Case, variant: str = "") -> None:
        self.opt, self.case, self.losses = opt, case, case.per_sample[variant]
        self.own: list[float] = []
        self.grad_pass: list[float] = []

    def __call__(self) -> None:
        """One SIGUA step on the case's batch, timed."""
        self.opt.zero_grad()
        losses, inputs = self.losses(self.case.model)
        spent = {"backward": 0.0, "step": 0.0, "grad_pass": 0.0}

        def timed(key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
            def call(*args: Any, **kwargs: Any) -> Any:
                start = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    spent[key] += time.perf_counter() - start

            return call

        backward, grads_check, wrapped = torch.autograd.backward, _guard.grad_norms, self.opt.optimizer
        torch.autograd.backward = timed("backward", backward)
        _guard.grad_norms = timed("grad_pass", grads_check)
        wrapped.step = timed("step", wrapped.step)  # type: ignore[method-assign]
        try:
            start = time.perf_counter()
            self.opt.step(losses, **inputs)
            total = time.perf_counter() - start
        finally:
            torch.autograd.backward, _guard.grad_norms = backward, grads_check
            del wrapped.step  # the instance attribute: the class's step again
        self.own.append(total - spent["backward"] - spent["step"])
        self.grad_pass.append(spent["grad_pass"])

    def clear(self) -> None:
        self.own.clear()
        self.grad_pass.clear()


class MeanInStep:
    """The floor of SIGUA's own time: a plain step whose loss is the per-sample losses' ``mean()``.

    ``own``: the time of that ``mean()`` call, taken where SIGUA's selection and Eq. 3 run (after
    the forward, before the backward): what the least a per-sample method could do there costs.
    """

    def __init__(self, opt: torch.optim.Optimizer, case: Case, variant: str = "") -> None:
        self.opt, self.case, self.losses = opt, case, case.per_sample[variant]
        self.own: list[float] = []

    def __call__(self) -> None:
        """One plain step from the per-sample losses, the mean timed."""
        self.opt.zero_grad()
        losses, _ = self.losses(self.case.model)
        start = time.perf_counter()
        mean = losses.mean()
        self.own.append(time.perf_counter() - start)
        mean.backward()  # type: ignore[no-untyped-call]
        self.opt.step()


def _sigua(opt: torch.optim.Optimizer, nonfinite: str = "raise") -> SIGUAOptimizer:
    condition = BandSelected(EPS, BAND, warmup_epochs=0)
    return SIGUAOptimizer(opt, condition, GAMMA, nonfinite=nonfinite)  # type: ignore[arg-type]


# -- 5. host time inside a step, and dispatches ---------------------------------------------------
def dispatches(step: Callable[[], Any]) -> dict[str, int]:
    """The aten operators one call of ``step`` dispatches (torch.profiler on the CPU, after one
    warm-up call): ``top``, those called from Python or from the autograd engine (not from inside
    another aten operator); ``all``, with the nested ones."""
    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        step()
    aten = [e for e in profile.events() if e.name.startswith("aten::")]
    top = [e for e in aten if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
    return {"top": len(top), "all": len(aten)}


def host_time(rounds: dict[str, int], device: str = "cpu") -> list[dict[str, Any]]:
    """SIGUA's host time inside real steps (:class:`InStep`) and the dispatches per step.

    A plain step, a SIGUA step (BandSelected, default guard), one with
    ``nonfinite="unchecked"`` and the floor (:class:`MeanInStep`) take turns for ``rounds``
    rounds on one model and SGD optimizer (momentum 0.9) at batch 128, after :func:`dispatches`
    has run each twice (the warm-up).
    """
    rows = []
    for name, case, count, plain in _cases(rounds, device):
        variant = next(iter(case.per_sample))  # BERT: per sequence
        clocks = {policy: InStep(_sigua(plain, policy), case, variant) for policy in ("raise", "unchecked")}
        floor = MeanInStep(plain, case, variant)
        steps: dict[str, Callable[[], Any]] = {
            "plain": partial(_plain_step, case, plain),
            "SIGUA": clocks["raise"],
            "SIGUA unchecked": clocks["unchecked"],
            "mean": floor,
        }
        counts = {k: dispatches(step) for k, step in steps.items()}
        for clock in clocks.values():
            clock.clear()
        floor.own.clear()
        times = samples(steps, count, warmup=0)
        checked = clocks["raise"]
        own, grad_pass = statistics.median(checked.own), statistics.median(checked.grad_pass)
        rest = statistics.median(o - g for o, g in zip(checked.own, checked.grad_pass, strict=True))
        unchecked, mean = statistics.median(clocks["unchecked"].own), statistics.median(floor.own)
        ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        ratios = {k: paired_ratio(times[k], times["plain"]) for k in ("SIGUA", "SIGUA unchecked", "mean")}
        rows.append(
            {
                "device": device,
                "model": name,
                "rounds": count,
                "dispatches": counts,
                "own_us": own * 1e6,
                "grad_pass_us": grad_pass * 1e6,
                "own_without_grad_pass_us": rest * 1e6,
                "own_unchecked_us": unchecked * 1e6,
                "mean_us": mean * 1e6,
                "ms": ms,
                "ratios": ratios,
            }
        )
        print(
            f"{name:>18} ({device}): aten dispatches per step (top-level / all) plain "
            f"{counts['plain']['top']} / "
            f"{counts['plain']['all']}, SIGUA {counts['SIGUA']['top']} / {counts['SIGUA']['all']}, "
            f"unchecked {counts['SIGUA unchecked']['top']} / {counts['SIGUA unchecked']['all']}; SIGUA's "
            f"own host time in a step {own * 1e6:.0f} us = gradient pass {grad_pass * 1e6:.0f} us + "
            f"the rest {rest * 1e6:.0f} us; unchecked {unchecked * 1e6:.0f} us; the floor, one mean() of "
            f"the per-sample losses in the same place, {mean * 1e6:.0f} us. Steps: plain "
            f"{ms['plain']:.2f} ms, SIGUA {ms['SIGUA']:.2f} ms (x{ratios['SIGUA'][0]:.4f}), unchecked "
            f"{ms['SIGUA unchecked']:.2f} ms (x{ratios['SIGUA unchecked'][0]:.4f}), per-sample mean "
            f"{ms['mean']:.2f} ms (x{ratios['mean'][0]:.4f}); {count} rounds"
        )
    return rows


# -- 6. realistic models, and what users would run instead ---------------------------------------
def coteaching_step(
    losses: tuple[torch.Tensor, torch.Tensor],
    optimizers: tuple[torch.optim.Optimizer, torch.optim.Optimizer],
    forget_rate: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of Co-teaching (Han et al., NeurIPS 2018) as its authors' code takes it: each
    network keeps the ``int((1 - forget_rate) * n)`` samples of smallest loss under its own
    losses, and its peer descends on the mean loss of those; two backwards, two optimizer steps.

    ``losses``: the per-sample losses of the two networks on one batch. Returns the indices
    each network kept (for its peer).
    """
    keep = int((1 - forget_rate) * losses[0].shape[0])
    kept = (torch.argsort(losses[0].detach())[:keep], torch.argsort(losses[1].detach())[:keep])
    for opt in optimizers:
        opt.zero_grad()
    losses[0][kept[1]].mean().backward()  # type: ignore[no-untyped-call]
    losses[1][kept[0]].mean().backward()  # type: ignore[no-untyped-call]
    for opt in optimizers:
        opt.step()
    return kept


def model_table(rounds: dict[str, int], device: str = "cpu") -> list[dict[str, Any]]:
    """Plain step and SIGUA's (BandSelected, default guard) on one model and batch, SGD with
    momentum 0.9; on the classifiers also the authors' step (their selection, :func:`authors`,
    then backward and step) and Co-teaching's (:func:`coteaching_step`, forget rate EPS, on two
    copies of the model). Interleaved, paired ratios to the plain step; plain, SIGUA and the
    authors' step share one model and optimizer. SIGUA's own host time inside its steps by
    :class:`InStep`. One warm-up round, except for BERT (one plain step: a step takes a minute).
    """
    rows = []
    for name, case, count, plain in _cases(rounds, device):
        sigua = _sigua(plain)
        clocks = {f"SIGUA {v}".rstrip(): InStep(sigua, case, v) for v in case.per_sample}
        steps: dict[str, Callable[[], Any]] = {"plain": partial(_plain_step, case, plain), **clocks}
        if list(case.per_sample) == [""]:
            losses_of = case.per_sample[""]

            def authors_step() -> None:
                plain.zero_grad()  # noqa: B023
                authors(losses_of(case.model)[0], BAND).backward()  # type: ignore[no-untyped-call]  # noqa: B023
                plain.step()  # noqa: B023

            twins = [copy.deepcopy(case.model) for _ in range(2)]
            twin_opts = tuple(torch.optim.SGD(t.parameters(), lr=0.01, momentum=0.9) for t in twins)

            def coteaching() -> None:
                losses = (losses_of(twins[0])[0], losses_of(twins[1])[0])  # noqa: B023
                coteaching_step(losses, twin_opts, EPS)  # type: ignore[arg-type]  # noqa: B023

            steps |= {"authors": authors_step, "Co-teaching": coteaching}
        warmup = 1
        if name == CASES["bert"][0]:  # a BERT step takes a minute: one plain step warms up
            _plain_step(case, plain)
            warmup = 0
        for clock in clocks.values():
            clock.clear()
        times = samples(steps, count, warmup=warmup)
        ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        ratios = {k: paired_ratio(times[k], times["plain"]) for k in steps if k != "plain"}
        own_ms = {k: statistics.median(clock.own[warmup:]) * 1e3 for k, clock in clocks.items()}
        pass_ms = {k: statistics.median(clock.grad_pass[warmup:]) * 1e3 for k, clock in clocks.items()}
        rows.append(
            {
                "device": device,
                "model": name,
                "rounds": count,
                "ms": ms,
                "ratios": ratios,
                "sigua_own_ms": own_ms,
                "sigua_grad_pass_ms": pass_ms,
            }
        )
        cells = ", ".join(
            f"{k} {ms[k]:,.1f} ms (x{r[0]:.4f}, 90% CI {r[1]:.4f}-{r[2]:.4f})" for k, r in ratios.items()
        )
        owns = ", ".join(
            f"{k} {v:.3f} ms ({v / ms['plain']:.3%} of a plain step; gradient pass {pass_ms[k]:.3f} ms)"
            for k, v in own_ms.items()
        )
        print(
            f"{name:>18} ({device}): plain {ms['plain']:,.1f} ms, {cells}; SIGUA's own time in its "
            f"steps: {owns}; {count} rounds"
        )
    return rows


def rounds_spec(text: str) -> dict[str, int]:
    """``"mlp=300,cnn9=3"`` -> ``{"mlp": 300, "cnn9": 3}``: models of :data:`CASES` and their rounds."""
    rounds = {}
    for item in filter(None, text.split(",")):
        key, _, count = item.partition("=")
        if key not in CASES or not count.isdigit():
            raise argparse.ArgumentTypeError(
                f"{item!r}: expected MODEL=ROUNDS, MODEL one of {', '.join(CASES)}"
            )
        rounds[key] = int(count)
    return rounds


TABLES = ("selection", "step", "memory", "cuda", "host", "models")


def _tables(text: str) -> list[str]:
    """``"host,models"`` -> the tables to run; an unknown name is an error, not skipped silently."""
    tables = [t for t in text.split(",") if t]
    if unknown := [t for t in tables if t not in TABLES]:
        raise argparse.ArgumentTypeError(
            f"unknown table(s) {', '.join(unknown)}: choose from {', '.join(TABLES)}"
        )
    return tables


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], default=list(SIZES))
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, few steps, no compile, no CNN: a smoke run"
    )
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd contender")
    parser.add_argument(
        "--devices",
        type=lambda s: s.split(","),
        default=["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"],
        help="comma-separated (default: cpu, and cuda when a GPU is present)",
    )
    parser.add_argument(
        "--tables",
        type=_tables,
        default=list(TABLES),
        help=f"comma-separated, of {', '.join(TABLES)} (default: all; 'models' runs what --models names)",
    )
    parser.add_argument(
        "--host",
        type=rounds_spec,
        default=None,
        help="table 5, SIGUA's host time in a step: MODEL=ROUNDS,... (default mlp=300; --quick mlp=5)",
    )
    parser.add_argument(
        "--models",
        type=rounds_spec,
        default=None,
        help="table 6, realistic models and the alternatives: MODEL=ROUNDS,... of mlp, cnn9, resnet18, "
        "bert (default none; --quick mlp=2). A ResNet-18 step takes ~13 s and a BERT-base one ~70 s "
        "on one CPU thread: resnet18=2,bert=2 takes ~12 min",
    )
    parser.add_argument("--out", type=Path, default=Path("results/speed.json"))
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: repeatable on a shared machine)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = [128, 1024] if args.quick else args.sizes
    host = args.host if args.host is not None else {"mlp": 5 if args.quick else 300}
    models = args.models if args.models is not None else ({"mlp": 2} if args.quick else {})
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
    print(f"torch {torch.__version__}, numpy {np.__version__}, {machine}")
    devices, tables = args.devices, args.tables
    if "cuda" in devices:
        print(f"GPU: {torch.cuda.get_device_name()}")
    repeats = {"deep MLP (Fig. 1)": 5 if args.quick else 1000, "9-layer CNN": 0 if args.quick else 7}
    record: dict[str, Any] = {"machine": machine, "torch": torch.__version__}
    for key in ("selection", "step", "host", "models"):
        record[key] = []
    for device in devices:
        if "selection" in tables:
            print(f"\n1. selection + reduction on {device}, median ms")
            record["selection"] += selection_table(sizes, not (args.quick or args.no_compile), device)
        if "step" in tables:
            print(f"\n2. step overhead on {device} at batch 128, median ms per step")
            record["step"] += step_overhead(repeats if device == "cpu" else {k: 100 for k in repeats}, device)
    if "cpu" in devices and "memory" in tables:
        print("\n3. peak extra memory of selection + reduction on the CPU (fresh process each)")
        record["memory"] = peak_memory(sizes)
    if "cuda" in devices and "cuda" in tables:
        print("\n4. CUDA")
        record["cuda"] = cuda_extras()
    for device in devices:
        if "host" in tables and host:
            print(f"\n5. SIGUA's host time inside a step on {device}, batch 128")
            record["host"] += host_time(host, device)
        if "models" in tables and models:
            print(f"\n6. realistic models and the alternatives on {device}, median ms per step")
            record["models"] += model_table(models, device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
