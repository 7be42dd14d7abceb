"""Speed and memory of SIGUA's selection, reduction and step, side by side in one run.

``python -m benchmarks.speed [--sizes 128,1024,...] [--quick] [--out results/speed.json]``

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
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.models import cnn9, deep_mlp
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
    contenders: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1
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


def interleaved(contenders: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
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
        F.cross_entropy(model(x), y).backward()
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
    check = _guard.nonfinite_grads
    _guard.nonfinite_grads = lambda grads: None
    try:
        steps()
    finally:
        _guard.nonfinite_grads = check


def _mean_loss(logits: torch.Tensor, y: torch.Tensor) -> None:
    F.cross_entropy(logits, y).backward()


def _sigua_loss(opt: SIGUAOptimizer, logits: torch.Tensor, y: torch.Tensor) -> None:
    opt.objective(F.cross_entropy(logits, y, reduction="none")).backward()


def _captured(step: Callable[[], Any]) -> Callable[[], Any]:
    """The replay of ``step`` captured in a CUDA graph, after three eager warm-up calls."""
    side = torch.cuda.Stream()
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
    launched = [e for e in profile.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return len(launched), profile


def cuda_extras() -> dict[str, Any]:
    """Kernel launches and peak extra GPU memory of a BandSelected selection + reduction; the
    host time by operator of the objective's forward and backward in a batch of 128."""
    condition = BandSelected(EPS, BAND, warmup_epochs=0)
    extras: dict[str, Any] = {}
    for n in (128, 1_048_576):
        losses = torch.rand(n, device="cuda").requires_grad_(True)
        extras[f"kernels_forward_n{n}"], _ = _kernels(partial(ours(condition), losses))
        extras[f"kernels_forward_backward_n{n}"], _ = _kernels(lambda: ours(condition)(losses).backward())  # noqa: B023
        extras[f"kernels_mean_forward_backward_n{n}"], _ = _kernels(lambda: losses.mean().backward())  # noqa: B023
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], default=list(SIZES))
    parser.add_argument("--quick", action="store_true", help="small sizes, no compile, no CNN: a smoke run")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd contender")
    parser.add_argument(
        "--devices",
        type=lambda s: s.split(","),
        default=["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"],
        help="comma-separated (default: cpu, and cuda when a GPU is present)",
    )
    parser.add_argument("--out", type=Path, default=Path("results/speed.json"))
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: repeatable on a shared machine)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = [128, 1024] if args.quick else args.sizes
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
    print(f"torch {torch.__version__}, numpy {np.__version__}, {machine}")
    devices = args.devices
    if "cuda" in devices:
        print(f"GPU: {torch.cuda.get_device_name()}")
    repeats = {"deep MLP (Fig. 1)": 5 if args.quick else 1000, "9-layer CNN": 0 if args.quick else 7}
    selection, overhead = [], []
    for device in devices:
        print(f"\n1. selection + reduction on {device}, median ms")
        selection += selection_table(sizes, not (args.quick or args.no_compile), device)
        print(f"\n2. step overhead on {device} at batch 128, median ms per step")
        overhead += step_overhead(repeats if device == "cpu" else {k: 100 for k in repeats}, device)
    record: dict[str, Any] = {"machine": machine, "torch": torch.__version__}
    record |= {"selection": selection, "step": overhead}
    if "cpu" in devices:
        print("\n3. peak extra memory of selection + reduction on the CPU (fresh process each)")
        record["memory"] = peak_memory(sizes)
    if "cuda" in devices:
        print("\n4. CUDA")
        record["cuda"] = cuda_extras()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
