"""The sweep report: seeds aggregate into mean, sd and a 95% CI; tuning picks on validation only."""

from __future__ import annotations

import csv
import json
import math

import pytest

from stacked_rnn import report


def fake_job(sweep, name: str, val: float, test: float, seed: int = 0, cell: str = "gru", layers: int = 1,
             lr: float = 1e-3, status: str = "ok", metric: str = "acc") -> None:
    job = sweep / name
    job.mkdir(parents=True)
    results = {"status": status, "metric": metric, f"best_val_{metric}": val, f"test_{metric}": test,
               "num_params": 1000, "seconds_per_epoch": 2.0,
               "config": {"seed": seed, "model": {"cell": cell, "layers": layers, "units": 64, "lr": lr}}}
    if status != "ok":
        results = {"status": status, "reason": "boom", "config": results["config"]}
    (job / "results.json").write_text(json.dumps(results))


def read(path):
    return list(csv.DictReader(open(path)))


def test_summarise_matches_hand_computed_mean_sd_and_t_interval():
    stats = report.summarise([0.80, 0.82, 0.84])
    assert stats["n"] == 3 and stats["mean"] == pytest.approx(0.82)
    assert stats["sd"] == pytest.approx(0.02)  # sqrt((0.02^2 + 0 + 0.02^2) / 2)
    assert stats["ci95"] == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-6)  # t(0.975, df=2) = 4.302653
    two = report.summarise([0.5, 0.7])  # sd = 0.1414, t(0.975, 1) = 12.7062
    assert two["ci95"] == pytest.approx(12.706205 * math.sqrt(0.02) / math.sqrt(2), rel=1e-6)
    assert report.summarise([0.9]) == {"n": 1, "mean": 0.9, "sd": None, "ci95": None}


def test_seeds_of_one_configuration_aggregate_and_failed_seeds_are_counted_apart(tmp_path):
    for seed, (val, test) in enumerate([(0.80, 0.70), (0.82, 0.72), (0.84, 0.74)]):
        fake_job(tmp_path, f"layers=1,seed={seed}", val, test, seed=seed)
    fake_job(tmp_path, "layers=1,seed=3", 0, 0, seed=3, status="failed")
    for seed, (val, test) in enumerate([(0.60, 0.61), (0.64, 0.65)]):
        fake_job(tmp_path, f"layers=2,seed={seed}", val, test, seed=seed, layers=2)
    report.write_report(tmp_path, tensorboard=False)

    jobs = read(tmp_path / "report.csv")
    assert len(jobs) == 6 and [j["seed"] for j in jobs] == ["0", "1", "2", "3", "0", "1"]
    configs = {r["config"]: r for r in read(tmp_path / "report_by_config.csv")}
    assert set(configs) == {"layers=1", "layers=2"}
    one = configs["layers=1"]
    assert (one["n"], one["failed"]) == ("3", "1")
    assert float(one["best_val_acc_mean"]) == pytest.approx(0.82) and float(one["best_val_acc_sd"]) == pytest.approx(0.02)
    assert float(one["test_acc_mean"]) == pytest.approx(0.72)
    assert float(one["test_acc_ci95"]) == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-5)
    assert float(configs["layers=2"]["test_acc_sd"]) == pytest.approx(math.sqrt(0.0008))
    text = (tmp_path / "report.md").read_text()
    assert "## By configuration (over seeds)" in text and "0.7200 ± 0.0497 (sd 0.0200)" in text
    assert not (tmp_path / "report_tuned.csv").exists()  # lr was not swept


def test_tuning_picks_the_best_mean_validation_lr_never_the_best_test_lr(tmp_path):
    # depth 1: lr 1e-3 wins validation (mean 0.80 vs 0.78) although lr 1e-2 has the better test mean (0.90)
    table = {("1", "0.001"): [(0.81, 0.70), (0.79, 0.72)], ("1", "0.01"): [(0.77, 0.90), (0.79, 0.90)],
             ("2", "0.001"): [(0.60, 0.95), (0.62, 0.95)], ("2", "0.01"): [(0.70, 0.66), (0.72, 0.64)]}
    for (layers, lr), seeds in table.items():
        for seed, (val, test) in enumerate(seeds):
            fake_job(tmp_path, f"layers={layers},lr={lr},seed={seed}", val, test, seed=seed, layers=int(layers),
                     lr=float(lr))
    report.write_report(tmp_path, tensorboard=False)
    best = {r["config"]: r for r in read(tmp_path / "report_tuned.csv")}
    assert set(best) == {"layers=1", "layers=2"}
    assert best["layers=1"]["lr"] == "0.001" and float(best["layers=1"]["test_acc_mean"]) == pytest.approx(0.71)
    assert best["layers=2"]["lr"] == "0.01" and float(best["layers=2"]["test_acc_mean"]) == pytest.approx(0.65)
    assert best["layers=1"]["candidates"] == "2" and best["layers=1"]["n"] == "2"
    text = (tmp_path / "report.md").read_text()
    assert "## Tuned: best mean validation acc over model.lr (test never chooses)" in text
    assert "| layers=1 | gru | 1 | 64 | 0.001 | 2 | 0.8000 ± " in text  # the chosen lr is shown
    # no tuning asked for: no tuned table
    report.write_report(tmp_path, tensorboard=False, tune_keys=())
    assert "## Tuned" not in (tmp_path / "report.md").read_text()


def test_tuning_an_mse_sweep_picks_the_lowest_mean_validation_mse(tmp_path):
    for lr, val, test in (("0.01", 0.02, 0.15), ("0.001", 0.10, 0.01)):
        fake_job(tmp_path, f"lr={lr},seed=0", val, test, lr=float(lr), metric="mse")
    report.write_report(tmp_path, tensorboard=False)
    [best] = read(tmp_path / "report_tuned.csv")
    assert best["lr"] == "0.01" and float(best["test_mse_mean"]) == pytest.approx(0.15)


def test_a_sweep_without_repeated_seeds_reports_as_before(tmp_path):
    for layers, acc in ((1, 0.8), (2, 0.85)):
        fake_job(tmp_path, f"cell=gru,layers={layers}", acc, acc - 0.01, layers=layers)
    report.write_report(tmp_path, tensorboard=False)
    text = (tmp_path / "report.md").read_text()
    assert "## By configuration" not in text and "## Tuned" not in text
    assert text.splitlines()[4].startswith("| job | cell | layers | units | seed |")
    configs = read(tmp_path / "report_by_config.csv")
    assert [c["n"] for c in configs] == ["1", "1"] and all(c["test_acc_sd"] == "" for c in configs)
    assert (tmp_path / "accuracy_vs_depth.png").stat().st_size > 10_000


def test_report_cli_answers_help_and_names_a_missing_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        report.main(["--help"])
    assert done.value.code == 0 and "--tune" in capsys.readouterr().out
    assert report.main([str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
