"""The scaling lab: fitters against points drawn from known laws, the closed-form prediction against brute force,
the commands, and sweeps that resume after a kill."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from pretrainer import cli
from pretrainer.config import load_config
from pretrainer.model import build_model
from pretrainer.scaling import fit as fits
from pretrainer.scaling import sweep as sweeps
from pretrainer.scaling.flops import count_params
from tests.conftest import tiny_overrides

# ---------------------------------------------------------------------------------------------------- fits

CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}  # Hoffmann et al.'s published fit


def chinchilla_points(n=250, noise=0.002, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    N = np.exp(rng.uniform(np.log(7e7), np.log(1.6e10), n))
    D = np.exp(rng.uniform(np.log(5e9), np.log(5e11), n))
    loss = fits.chinchilla_loss(CHINCHILLA, N, D) * np.exp(rng.normal(0, noise, n))
    return {"N": N, "D": D, "C": 6 * N * D, "loss": loss}


def test_approach_3_recovers_a_known_law():
    found = fits.fit_chinchilla(chinchilla_points())  # 250 points, Hoffmann's 4500 starts
    for key in ("alpha", "beta", "E"):
        assert found[key] == pytest.approx(CHINCHILLA[key], rel=0.03), key
    assert found["a"] == pytest.approx(0.28 / 0.62, abs=0.02)
    assert found["starts"] == 4500 and found["points"] == 250


def test_the_sum_of_huber_losses_fits_where_the_mean_stops_early():
    points = chinchilla_points(n=100)
    start = torch.tensor([[0.0, 0.0, 0.0, 0.5, 0.5]], dtype=torch.float64)
    by_sum = fits.fit_chinchilla(points, starts=start)
    by_mean = fits.fit_chinchilla(points, starts=start, reduction="mean")
    # judged by the same yardstick, the sum: the mean's run stopped while still far off
    log = {k: torch.from_numpy(np.log(points[k]))[None] for k in ("N", "D", "loss")}
    objective = fits._chinchilla_objective(log["N"], log["D"], log["loss"], torch.ones_like(log["N"]), "sum")
    at = lambda f: objective(
        torch.tensor([[np.log(f["A"]), np.log(f["B"]), np.log(f["E"]), f["alpha"], f["beta"]]]), None
    )
    assert at(by_mean)[0] > 10 * at(by_sum)[0]
    assert by_sum["alpha"] == pytest.approx(0.34, rel=0.05) and abs(by_mean["alpha"] - 0.34) > 0.05


def test_bootstrap_intervals_cover_the_truth():
    found = fits.fit_chinchilla(chinchilla_points(n=120, noise=0.004), bootstrap=40)
    for key in ("alpha", "beta", "E"):
        low, high = found["intervals"][key]
        assert low < high and low < CHINCHILLA[key] * 1.05 and high > CHINCHILLA[key] * 0.95, key


def isoflop_points() -> dict:
    rows = []
    for c in np.geomspace(1e18, 1e21, 5):
        n_opt, _ = fits.chinchilla_optimum(CHINCHILLA, c)
        for n in n_opt * np.geomspace(0.1, 10, 9):
            rows.append((n, c / (6 * n), c))
    N, D, C = map(np.array, zip(*rows, strict=True))
    return {"N": N, "D": D, "C": C, "loss": fits.chinchilla_loss(CHINCHILLA, N, D)}


def test_approach_2_recovers_the_allocation_exponent():
    found = fits.fit_isoflop(isoflop_points())
    assert found["a"] == pytest.approx(0.28 / 0.62, abs=0.02)
    assert found["b"] == pytest.approx(1 - found["a"])
    assert len(found["budgets"]) == 5


def test_approach_1_takes_the_lower_envelope():
    points = isoflop_points()
    found = fits.fit_envelope(points)
    edge = found["frontier"]
    for i in edge:  # no run at most as costly does better
        cheaper = points["C"] <= points["C"][i]
        assert points["loss"][i] == points["loss"][cheaper].min()
    assert 0.3 < found["a"] < 0.6


def test_kaplan_recovers_power_laws():
    rng = np.random.default_rng(1)
    C = np.geomspace(1e15, 1e20, 30)
    pure = {"C": C, "N": C, "D": C, "loss": (2.3e8 / C) ** 0.05 * np.exp(rng.normal(0, 0.001, 30))}
    found = fits.fit_kaplan(pure, "C")
    assert found["alpha"] == pytest.approx(0.05, rel=0.02)
    assert found["X_c"] == pytest.approx(2.3e8, rel=0.3)
    shifted = dict(pure, loss=1.5 + (1e17 / C) ** 0.3)
    found = fits.fit_kaplan(shifted, "C", irreducible=True)
    assert found["E"] == pytest.approx(1.5, rel=0.01) and found["alpha"] == pytest.approx(0.3, rel=0.02)


def test_predict_closed_form_equals_brute_force():
    for compute in (1e19, 5.76e23):
        predicted = fits.predict({"law": "chinchilla", **CHINCHILLA}, compute)
        sizes = np.geomspace(1e6, 1e13, 200_001)
        losses = fits.chinchilla_loss(CHINCHILLA, sizes, compute / (6 * sizes))
        assert predicted["N_opt"] == pytest.approx(sizes[losses.argmin()], rel=1e-3)
        assert predicted["loss"] == pytest.approx(losses.min(), rel=1e-9)
        assert predicted["D_opt"] == pytest.approx(compute / (6 * predicted["N_opt"]))


# ------------------------------------------------------------------------------------------------- commands


def write_points(path, points, names=("N", "D", "loss")) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", *names])
        for i in range(len(points["loss"])):
            writer.writerow([f"m{i}", *(repr(float(points[k][i])) for k in ("N", "D", "loss"))])


def test_fit_and_predict_from_the_command_line(tmp_path, capsys):
    write_points(tmp_path / "theirs.csv", isoflop_points(), names=("params", "tokens", "final"))
    columns = ["--column", "N=params", "--column", "D=tokens", "--column", "loss=final"]
    assert cli.main(["scaling", "fit", str(tmp_path / "theirs.csv"), "--law", "isoflop", *columns]) == 0
    fit = json.loads((tmp_path / "fit-isoflop.json").read_text())
    assert fit["law"] == "isoflop" and fit["points"] == 45
    for picture in ("compute", "isoflop", "tokens"):
        assert (tmp_path / f"fit-isoflop-{picture}.png").stat().st_size > 10_000
    capsys.readouterr()
    assert cli.main(["scaling", "predict", str(tmp_path / "fit-isoflop.json"), "--compute", "1e21", "--json"]) == 0
    predicted = json.loads(capsys.readouterr().out)
    assert predicted["N_opt"] == pytest.approx(fits.chinchilla_optimum(CHINCHILLA, 1e21)[0], rel=0.15)
    assert predicted["tokens_per_parameter"] == pytest.approx(predicted["D_opt"] / predicted["N_opt"])


def test_count_from_the_command_line(capsys):
    assert cli.main(["scaling", "count", "configs/gpt-tiny.yaml", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    config = load_config("configs/gpt-tiny.yaml", ["model.vocab_size=4096"])
    assert report["total"] == sum(p.numel() for p in build_model(config.model).parameters())
    assert report["non_embedding"] == 4 * (12 * 128 * 128 + 13 * 128) + 2 * 128


def sweep_config(corpus, tmp_path, **extra):
    overrides = tiny_overrides(corpus, tmp_path / "data", **{"sweep.shapes": "[1x16,2x32]", "sweep.head_dim": 16,
                               "sweep.tokens": "[512]", "train.save_every": 2, **extra})  # fmt: skip
    return load_config(None, overrides)


def test_a_killed_sweep_resumes_without_rerunning_finished_runs(corpus, tmp_path, monkeypatch):
    config = sweep_config(corpus, tmp_path)
    runs, _ = sweeps.plan(config)
    assert [(r.n_layer, r.d_model, r.steps) for r in runs] == [(1, 16, 4), (2, 32, 4)]
    out = tmp_path / "sweep"
    trained = []
    real = sweeps._train_one

    def killed_during_the_second(config, run_dir):
        trained.append(run_dir.name)
        if len(trained) == 2:  # the second run gets as far as its first checkpoint, then the sweep is killed
            config.train.max_steps = 2
            real(config, run_dir)
            raise KeyboardInterrupt
        return real(config, run_dir)

    monkeypatch.setattr(sweeps, "_train_one", killed_during_the_second)
    with pytest.raises(KeyboardInterrupt):
        sweeps.sweep(config, out, say=lambda line: None)
    assert sweeps.finished(out) == {runs[0].name}
    monkeypatch.setattr(
        sweeps, "_train_one", lambda config, run_dir: trained.append(run_dir.name) or real(config, run_dir)
    )
    sweeps.sweep(config, out, say=lambda line: None)
    assert trained == [runs[0].name, runs[1].name, runs[1].name]  # the first run is not trained again
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == [r.name for r in runs]
    second = [json.loads(line) for line in (out / "runs" / runs[1].name / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in second if "loss" in r] == [1, 2, 3, 4]  # resumed from step 2, not started over
    assert float(rows[1]["C"]) == pytest.approx(6 * runs[1].non_embedding * 512)


def test_isoflop_plan_gives_each_size_its_share(corpus, tmp_path):
    config = sweep_config(corpus, tmp_path, **{"sweep.tokens": "[]", "sweep.compute": "[1e8]", "sweep.min_steps": 3})
    runs, notes = sweeps.plan(config)
    small = count_params(sweeps.run_config(config, 1, 16).model).non_embedding
    assert runs[0].steps == round(1e8 / (6 * small) / 128) and all(r.kind == "isoflop" for r in runs)
    assert all(r.compute == pytest.approx(1e8, rel=0.1) for r in runs) and len(runs) + len(notes) == 2


def test_sweep_on_two_devices_at_once(corpus, tmp_path):
    config = sweep_config(corpus, tmp_path)
    sweeps.sweep(config, tmp_path / "sweep", devices=["cpu", "cpu"], say=lambda line: None)
    assert sweeps.finished(tmp_path / "sweep") == {r.name for r in sweeps.plan(config)[0]}
