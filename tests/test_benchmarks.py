"""Tests of the benchmarks: IDX loading, data splits, models, noise parsing and the runner."""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmarks import report, run
from benchmarks.data import (
    IMAGES_MAGIC,
    LABELS_MAGIC,
    DataError,
    load_digits_split,
    load_idx,
    load_mnist_split,
    read_idx,
)
from benchmarks.models import MODELS, cnn9, deep_mlp
from sigua_optim import SIGUAOptimizer
from sigua_optim.noise import pair, symmetric

MNIST_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist-t10k"


def _idx_bytes(magic: int, data: np.ndarray) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in data.shape)
    return header + data.astype(np.uint8).tobytes()


def _write_mnist(directory: Path, n: int = 12, compress: bool = True, prefix: str = "t10k") -> np.ndarray:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 28, 28))
    labels = np.arange(n) % 10
    for name, magic, data in [
        (f"{prefix}-images-idx3-ubyte", IMAGES_MAGIC, images),
        (f"{prefix}-labels-idx1-ubyte", LABELS_MAGIC, labels),
    ]:
        raw = _idx_bytes(magic, data)
        if compress:
            (directory / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (directory / name).write_bytes(raw)
    return images


@pytest.mark.parametrize("compress", [True, False])
def test_load_idx_reads_what_was_written(tmp_path: Path, compress: bool) -> None:
    images = _write_mnist(tmp_path, compress=compress)
    x, y = load_idx(tmp_path)
    assert x.shape == (12, 784) and x.dtype == np.float32
    np.testing.assert_allclose(x, images.reshape(12, -1) / 255.0, rtol=1e-6)
    assert y.tolist() == [i % 10 for i in range(12)]


def test_truncated_file_is_rejected(tmp_path: Path) -> None:
    _write_mnist(tmp_path, compress=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match="truncated"):
        load_idx(tmp_path)


def test_truncated_gzip_is_rejected(tmp_path: Path) -> None:
    _write_mnist(tmp_path)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:10])
    with pytest.raises(DataError, match="cannot read"):
        load_idx(tmp_path)


def test_wrong_magic_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "labels").write_bytes(_idx_bytes(IMAGES_MAGIC, np.zeros((1, 2, 2))))
    with pytest.raises(DataError, match="magic 0x00000803, expected 0x00000801"):
        read_idx(tmp_path / "labels", LABELS_MAGIC)
    with pytest.raises(DataError, match=r"no t10k-images-idx3-ubyte\.gz"):
        load_idx(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_idx(tmp_path / "nowhere")


def test_label_count_mismatch(tmp_path: Path) -> None:
    _write_mnist(tmp_path)
    labels = _idx_bytes(LABELS_MAGIC, np.zeros(5))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    with pytest.raises(DataError, match="12 t10k images but 5 labels"):
        load_idx(tmp_path)


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason="../shared/data/mnist-t10k not present")
def test_real_mnist_t10k() -> None:
    x, y = load_idx(MNIST_DIR)
    assert x.shape == (10_000, 784) and sorted(set(y.tolist())) == list(range(10))
    split = load_mnist_split(MNIST_DIR, seed=0)
    assert (len(split.y_train), len(split.y_test)) == (8000, 2000)
    share = torch.bincount(split.y_test) / 2000
    torch.testing.assert_close(share, torch.from_numpy(np.bincount(y) / 10_000).float(), atol=1e-3, rtol=0)


def test_digits_split_is_seeded_stratified_and_scaled() -> None:
    a, b, c = load_digits_split(0), load_digits_split(0), load_digits_split(1)
    assert torch.equal(a.x_train, b.x_train) and not torch.equal(a.x_train, c.x_train)
    assert a.x_train.shape[1] == 64 and len(a.y_train) + len(a.y_test) == 1797
    assert float(a.x_train.min()) == 0.0 and float(a.x_train.max()) == 1.0
    assert a.num_classes == 10 and int(torch.bincount(a.y_test).min()) >= 35


def test_models_shapes_sizes_and_eval_dropout() -> None:
    x = torch.rand(4, 784)
    for make in MODELS.values():
        assert make(784, 7)(x).shape == (4, 7)
    assert sum(p.numel() for p in deep_mlp().parameters()) == 1_404_510
    cnn = cnn9().eval()
    assert torch.equal(cnn(x), cnn(x))  # dropout off in eval mode
    with pytest.raises(ValueError, match="side >= 28"):
        cnn9(64, 10)


def test_parse_noise(tmp_path: Path) -> None:
    assert torch.equal(run.parse_noise("sym-50", 10).T, symmetric(10, 0.5))
    assert torch.equal(run.parse_noise("pair-45", 10).T, pair(10, 0.45))
    path = tmp_path / "my-noise.txt"
    np.savetxt(path, pair(3, 0.3).numpy())
    noise = run.parse_noise(str(path), 3)
    assert noise.name == "my-noise" and noise.rate == pytest.approx(0.3)
    with pytest.raises(ValueError, match="3 x 3, the data has 10 classes"):
        run.parse_noise(str(path), 10)


def _records(out: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_smoke_run_writes_records_table_and_plot(tmp_path: Path) -> None:
    assert run.main(["--smoke", "--out", str(tmp_path)]) == 0
    records = _records(tmp_path)
    fig1 = [r for r in records if r["experiment"] == "fig1"]
    sets = [r for r in records if r["experiment"] != "fig1"]
    assert len(fig1) == 2 * 4 and {r["method"] for r in fig1} == {"gamma=0", "gamma=0.01"}
    assert len(sets) == 8 * 4  # eight methods, four epochs, one seed
    assert {r["method"] for r in sets} == set(run.SET1 + run.SET2)
    assert all(0.0 <= float(r["test_acc"]) <= 1.0 for r in records)  # type: ignore[arg-type]
    assert all(float(r["logit_norm"]) > 0 for r in records)  # type: ignore[arg-type]
    bc = [r for r in sets if r["method"] == "bc"]
    assert all(0.0 <= float(r["negative_fraction"]) <= 1.0 for r in bc)  # type: ignore[arg-type]
    table = (tmp_path / "table.md").read_text()
    assert all(f"| {m} |" in table for m in run.SET1 + run.SET2)
    assert "SIGUA_SL - Self-Teach" in table and "flipped labels fitted" in table
    for name in ("fig1", "sets"):
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["set1"]["epochs"] == 4 and config["set2"]["criterion"] == "class"


def test_paper_recipe_is_one_flag_away() -> None:
    parser = run.build_parser()
    ours = {p.experiment: p for p in run.experiments(parser, [])}
    paper = {p.experiment: p for p in run.experiments(parser, ["--paper-recipe"])}
    assert list(ours) == ["fig1", "set1", "set2"]
    settings = [(p["set2"].beta2, p["set2"].criterion, p["fig1"].gammas) for p in (ours, paper)]
    assert settings == [(0.999, "class", [0.0, 0.01]), (0.1, "sample", [0.0, 0.001])]
    assert paper["fig1"].epochs == ours["fig1"].epochs == 110 and ours["fig1"].shift == 60
    assert ours["set1"].epochs == paper["set1"].epochs == 200 and ours["set2"].epochs == 30
    only_bc = run.experiments(parser, ["sets", "--methods", "bc,nnbc"])
    assert [(p.experiment, p.methods) for p in only_bc] == [("set2", ["bc", "nnbc"])]


def _run_records(method: str, noise: str, test: list[float]) -> list[dict[str, object]]:
    return [
        {"experiment": "set2", "method": method, "noise": noise, "seed": seed, "epoch": e + 1,
         "classes": 10, "test_acc": acc + 0.01 * seed, "train_acc_flipped": 0.2}
        for seed in range(2)
        for e, acc in enumerate(test)
    ]  # fmt: skip


def test_interpretation_names_the_winner_and_the_collapses() -> None:
    records = (
        _run_records("bc", "sym-50", [0.8, 0.85])
        + _run_records("nnbc", "sym-50", [0.1, 0.1])
        + _run_records("sigua-bc", "sym-50", [0.9, 0.9])
    )
    lines = "\n".join(report.interpret(records))
    assert "SIGUA_BC - nnBC = +80.00 points" in lines and "ahead on 2 of 2 seeds" in lines
    assert "nnBC - BC = -72.50 points" in lines
    assert "nnBC collapsed" in lines and "docs/results.md" in lines
    assert "BC collapsed" not in lines.replace("nnBC collapsed", "")


def test_fig1_branches_share_the_pre_shift_and_use_the_oracle(tmp_path: Path) -> None:
    argv = ["fig1", "--smoke", "--epochs", "4", "--batch-size", "256", "--out", str(tmp_path)]
    assert run.main(argv) == 0
    records = _records(tmp_path)
    by_method: dict[object, list[dict[str, object]]] = {}
    for r in records:
        by_method.setdefault(r["method"], []).append(r)
    stopgrad, sigua = by_method["gamma=0"], by_method["gamma=0.01"]
    assert [r["test_acc"] for r in stopgrad[:2]] == [r["test_acc"] for r in sigua[:2]]
    for r in stopgrad[2:] + sigua[2:]:
        assert r["good_precision"] == 1.0 and r["bad_precision"] == 1.0
        assert r["good_recall"] == 1.0 and r["bad_recall"] == 1.0
    assert stopgrad[0]["bad_fraction"] == 0.0


def test_sweep_runs_the_grid_with_self_teach_per_warmup(tmp_path: Path) -> None:
    """sweep: Self-Teach and SIGUA_SL at each band ratio and gamma, per T_k; delta = r * eps; the
    records carry the point, and the heat-maps, table and interpretation are written."""
    argv = ["sweep", "--smoke", "--epochs", "2", "--bands", "0.2,0.6", "--gammas", "0.01", "--warmups", "1"]
    assert run.main([*argv, "--out", str(tmp_path)]) == 0
    records = _records(tmp_path)
    points = {(r["method"], r["band_ratio"], r["gamma"], r["warmup"]) for r in records}
    assert points == {
        ("self-teach Tk=1", 0.0, None, 1.0),
        ("sigua-sl Tk=1 r=0.2 gamma=0.01", 0.2, 0.01, 1.0),
        ("sigua-sl Tk=1 r=0.6 gamma=0.01", 0.6, 0.01, 1.0),
    }
    assert len(records) == 3 * 2 and {r["experiment"] for r in records} == {"sweep"}
    bad = {r["method"]: r["bad_fraction"] for r in records if r["epoch"] == 2}  # after T_k: the band
    assert bad["self-teach Tk=1"] == 0.0
    assert bad["sigua-sl Tk=1 r=0.2 gamma=0.01"] == pytest.approx(0.2 * 0.5, abs=0.02)
    assert bad["sigua-sl Tk=1 r=0.6 gamma=0.01"] == pytest.approx(0.6 * 0.5, abs=0.02)
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    table = (tmp_path / "table.md").read_text()
    assert "| T_k = 1, Self-Teach |" in table and "| T_k = 1, delta = 0.6 eps |" in table
    assert "the grid spans" in table and "neighbouring cells differ" in table


def test_sweep_neighbours_and_the_robust_setting() -> None:
    """The best cell borders a collapse (r = 0.3, gamma = 0.1): the robust setting avoids it."""

    def acc(r: float, g: float) -> float:
        return 0.1 if (r, g) == (0.3, 0.1) else 0.8 - abs(r - 0.3) - g

    records = [
        {"experiment": "sweep", "noise": noise, "seed": 0, "epoch": 1, "test_acc": a, "method": name,
         "band_ratio": r, "gamma": g, "warmup": 10.0}
        for noise in ("sym-50", "pair-45")
        for name, r, g, a in [("st", 0.0, None, 0.5)]
        + [(f"sl {r} {g}", r, g, acc(r, g)) for r in (0.1, 0.3, 0.7) for g in (0.01, 0.1)]
    ]  # fmt: skip
    grids = report.sweeps(records)
    sym = grids["sym-50"]
    assert sym.best() == (0.3, 0.01, 10.0) and sym.self_teach == {10.0: pytest.approx([50.0])}
    assert sorted(sym.neighbours((0.3, 0.01, 10.0))) == [
        (0.1, 0.01, 10.0),
        (0.3, 0.1, 10.0),
        (0.7, 0.01, 10.0),
    ]
    lines = "\n".join(report.interpret(records))
    # the mean of a cell and its neighbours: r = 0.1 (59, 79, 50) beats r = 0.3 (79, 59, 39, 10)
    assert "robust setting: delta = 0.1 eps, gamma = 0.01, T_k = 10" in lines
    assert "sym-50 59.00% (-20.00 from its best, +9.00 over Self-Teach)" in lines
    assert "sym-50: the grid spans 69.00 points" in lines


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["--noise", "sym50"], "sym-20, sym-50, pair-45"),
        (["--noise", "sym-100"], "[0, 100) percent"),
        (["--noise-rate", "1.5"], "pass a fraction"),
        (["--methods", "standard,coteach"], "unknown method 'coteach'"),
        (["--dataset", "mnist", "--data-dir", "/nonexistent/mnist"], "--data-dir"),
        (["fig1", "--methods", "standard"], "--gammas"),
        (["sweep", "--methods", "standard"], "drop --methods"),
        (["sweep", "--noise-rate", "auto"], "not auto"),
        (["sweep", "--bands", "0.5,1.5"], "delta = ratio * eps"),
        (["--dataset", "imagenet"], "invalid choice"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    argv: list[str], hint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run.main([*argv, "--smoke"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and hint in err and "Traceback" not in err


def test_truncated_data_dir_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_mnist(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-100]))
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--dataset", "mnist", "--data-dir", str(tmp_path), "--smoke"])
    assert exit_info.value.code == 2
    assert "truncated" in capsys.readouterr().err


def test_speed_samples_alternate_and_paired_ratio_reads_them() -> None:
    from benchmarks.speed import paired_ratio, samples

    calls: list[str] = []
    times = samples({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3, warmup=2)
    assert calls == ["a", "a", "b", "b", "a", "b", "b", "a", "b", "a"]  # warm-up, a-b, b-a, reversed a-b
    assert [len(v) for v in times.values()] == [3, 3]
    ratio, low, high = paired_ratio([2.0, 4.2, 6.0, 8.0], [1.0, 2.0, 3.0, 4.0])
    assert ratio == 2.0 and 2.0 <= high <= 2.1 and low == 2.0


def test_estimated_noise_is_given_to_the_methods_and_recorded(tmp_path: Path) -> None:
    """--noise-rate estimate / --transition estimate: the methods get the estimates, the records
    and the printed table carry their errors; --noise-rate auto gives the conditions 'auto'."""
    argv = ["sets", "--smoke", "--methods", "sigua-sl,sigua-bc", "--out", str(tmp_path)]
    assert run.main([*argv, "--noise-rate", "estimate", "--transition", "estimate"]) == 0
    records = report.read_records(tmp_path / "results.jsonl")
    eps = records[0]["eps_hat"]
    assert all(r["eps_hat"] == eps and r["eps_err"] == abs(eps - 0.5) and r["T_mae"] > 0 for r in records)
    assert 0.3 < eps < 0.7  # digits, sym-50: the estimate is near the truth, not the default
    assert "noise estimated offline" in (tmp_path / "table.md").read_text()

    def recipe(noise_rate: str, noise: run.Noise) -> SIGUAOptimizer:
        args = run.resolve(run.build_parser().parse_args(["set1", "--noise-rate", noise_rate]), "set1")
        return run.set_recipe(args, "sigua-sl", noise, torch.nn.Linear(64, 10)).opt

    noise = run.parse_noise("sym-50", 10)
    assert recipe("auto", noise).condition.noise_rate_setting == "auto"  # type: ignore[attr-defined]
    estimated = run.Noise("sym-50", noise.T, eps=0.42)
    assert recipe("estimate", estimated).condition.noise_rate == 0.42  # type: ignore[attr-defined]
    assert recipe("estimate", estimated).condition.band == run.BAND_FACTOR * 0.42  # type: ignore[attr-defined]
    assert recipe("true", noise).condition.band == run.PAPER_BANDS["sym-50"]  # type: ignore[attr-defined]
    assert recipe("true", noise).condition.noise_rate == 0.5  # type: ignore[attr-defined]


def test_online_estimate_is_recorded_each_epoch(tmp_path: Path) -> None:
    """--noise-rate auto: every record carries the eps_hat used in its epoch and the true eps;
    the printed table reports the last epoch's estimate and its error."""
    argv = ["set1", "--smoke", "--methods", "sigua-sl", "--noise-rate", "auto", "--out", str(tmp_path)]
    assert run.main([*argv, "--warmup", "2"]) == 0
    records = report.read_records(tmp_path / "results.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert records[0]["eps_online"] == 0.0  # no fit before the first epoch's losses
    assert (
        0.0 < records[1]["eps_online"] < 0.9 and records[2]["eps_online"] == records[3]["eps_online"]
    )  # frozen
    assert all(r["eps"] == 0.5 for r in records)
    error = abs(records[-1]["eps_online"] - 0.5)
    assert f"|eps_hat - eps| {error:.3f}" in (tmp_path / "table.md").read_text()


def test_classdep_noise_is_the_class_dependent_matrix() -> None:
    noise = run.parse_noise("classdep", 10)
    assert noise.name == "classdep" and torch.allclose(
        noise.T.sum(dim=1), torch.ones(10, dtype=torch.float64)
    )
    assert noise.T[0, 0] == 0.9 and noise.T[9, 9] == pytest.approx(1 - 0.46)


def test_coteaching_step_updates_each_network_on_its_peers_small_losses() -> None:
    """benchmarks.speed.coteaching_step: each network keeps its own smallest losses, and its peer
    takes one SGD step on the mean loss of those; repeated, it trains both networks."""
    from benchmarks.speed import coteaching_step

    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).long()
    nets = (torch.nn.Linear(4, 2), torch.nn.Linear(4, 2))
    opts = (torch.optim.SGD(nets[0].parameters(), lr=0.5), torch.optim.SGD(nets[1].parameters(), lr=0.5))
    losses = (
        F.cross_entropy(nets[0](x), y, reduction="none"),
        F.cross_entropy(nets[1](x), y, reduction="none"),
    )
    expected = []
    for own, peer in ((0, 1), (1, 0)):
        kept = torch.argsort(losses[peer].detach())[:48]  # int((1 - 0.25) * 64) smallest of the peer's
        twin = copy.deepcopy(nets[own])
        F.cross_entropy(twin(x[kept]), y[kept]).backward()
        expected.append([p - 0.5 * p.grad for p in twin.parameters()])
    kept = coteaching_step(losses, opts, 0.25)
    for own in (0, 1):
        assert set(kept[own].tolist()) == set(
            torch.topk(losses[own].detach(), 48, largest=False).indices.tolist()
        )
        for param, want in zip(nets[own].parameters(), expected[own], strict=True):
            assert torch.allclose(param, want, atol=1e-6)
    for _ in range(30):
        coteaching_step(tuple(F.cross_entropy(n(x), y, reduction="none") for n in nets), opts, 0.25)  # type: ignore[arg-type]
    with torch.no_grad():
        assert all(float(F.cross_entropy(n(x), y)) < 0.3 for n in nets)


def test_resnet18_shapes_and_size() -> None:
    from benchmarks.models import resnet18

    model = resnet18()
    assert sum(p.numel() for p in model.parameters()) == 11_173_962  # the CIFAR ResNet-18's count
    assert model(torch.rand(2, 3 * 32 * 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="square images"):
        resnet18(1000)


def test_fashion_mnist_runs_co_teaching_under_instance_dependent_noise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--dataset fashion-mnist reads train-* and t10k-* from --data-dir (or the environment)."""
    data = tmp_path / "fashion"
    data.mkdir()
    _write_mnist(data, n=200, prefix="train")
    _write_mnist(data, n=50)
    monkeypatch.setenv("SIGUA_FASHION_MNIST_DIR", str(data))
    argv = ["set1", "--dataset", "fashion-mnist", "--noise", "idn-40", "--smoke", "--batch-size", "32"]
    assert run.main([*argv, "--methods", "standard,co-teaching-sigua", "--out", str(tmp_path / "o")]) == 0
    records = _records(tmp_path / "o")
    assert {r["method"] for r in records} == {"standard", "co-teaching-sigua"}
    assert all(r["dataset"] == "fashion-mnist" and r["noise"] == "idn-40" for r in records)
    assert all(float(r["seconds"]) > 0 and 0.2 < float(r["eps"]) < 0.6 for r in records)  # type: ignore[arg-type]
    # Co-teaching + SIGUA ascends on the band above the peer's small-loss set
    ascended = [float(r["bad_fraction"]) for r in records if r["method"] == "co-teaching-sigua"]  # type: ignore[arg-type]
    assert max(ascended) > 0


def test_missing_fashion_mnist_names_the_install_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "none"), "--smoke"])
    assert exit_info.value.code == 2
    assert "apt-get install -y dataset-fashion-mnist" in capsys.readouterr().err


def test_instance_dependent_noise_gets_its_realised_transition_matrix() -> None:
    split = load_digits_split(0)
    spec = run.parse_noise("idn-40", 10)
    noisy, clean, noise = run.apply_noise(spec, split, seed=0)
    assert spec.instance == 0.4 and noise.instance == 0.4
    for i in range(10):  # T[i, j]: the fraction of class i labelled j
        labelled = noisy[split.y_train == i]
        share = torch.bincount(labelled, minlength=10).double() / len(labelled)
        torch.testing.assert_close(noise.T[i], share)
    assert noise.rate == pytest.approx(1 - float(clean.double().mean()), abs=0.02)


def test_a_rerun_skips_complete_runs_and_redoes_an_unfinished_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["set1", "--smoke", "--methods", "standard,self-teach", "--out", str(tmp_path)]
    assert run.main(argv) == 0
    first = (tmp_path / "results.jsonl").read_text().splitlines()
    (tmp_path / "results.jsonl").write_text("\n".join(first[:-1]) + "\n")  # self-teach lost its last epoch
    trained: list[int] = []
    real_train = run.train

    def counting_train(learners: Any, task: Any, epochs: range, emit: Any) -> None:
        trained.append(len(epochs))
        real_train(learners, task, epochs, emit)

    monkeypatch.setattr(run, "train", counting_train)
    assert run.main(argv) == 0
    assert trained == [4]  # self-teach only, from its start; standard was complete
    again = (tmp_path / "results.jsonl").read_text().splitlines()

    def untimed(lines: list[str]) -> list[dict[str, Any]]:
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]

    assert untimed(again) == untimed(first)  # the same records, each once, in the same order
    assert run.main(argv) == 0 and trained == [4]  # everything complete: nothing trains


def test_report_rebuilds_the_tables_from_gzipped_records_without_unfinished_runs(tmp_path: Path) -> None:
    argv = ["set1", "--smoke", "--methods", "standard,co-teaching", "--out", str(tmp_path / "run")]
    assert run.main(argv) == 0
    lines = (tmp_path / "run" / "results.jsonl").read_text().splitlines()
    unfinished = json.loads(lines[-1]) | {"method": "self-teach", "epoch": 1}  # one epoch of four
    packed = tmp_path / "records.jsonl.gz"
    packed.write_bytes(gzip.compress(("\n".join([*lines, json.dumps(unfinished)]) + "\n").encode()))
    assert report.main([str(packed), "--out", str(tmp_path / "rebuilt")]) == 0
    table = (tmp_path / "rebuilt" / "table.md").read_text()
    assert table == (tmp_path / "run" / "table.md").read_text()  # the same tables as the run's
    assert "| co-teaching |" in table and "| self-teach |" not in table
    assert "relative to Standard" in table and "Co-teaching + SIGUA" not in table
