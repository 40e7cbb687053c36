"""The sweep report: seeds aggregate into mean, sd and a 95% CI; tuning picks on validation only."""

from __future__ import annotations

import csv
import json
import math

import pytest

from stacked_rnn import report, report_stats


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
    stats = report_stats.summarise([0.80, 0.82, 0.84])
    assert stats["n"] == 3 and stats["mean"] == pytest.approx(0.82)
    assert stats["sd"] == pytest.approx(0.02)  # sqrt((0.02^2 + 0 + 0.02^2) / 2)
    assert stats["ci95"] == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-6)  # t(0.975, df=2) = 4.302653
    two = report_stats.summarise([0.5, 0.7])  # sd = 0.1414, t(0.975, 1) = 12.7062
    assert two["ci95"] == pytest.approx(12.706205 * math.sqrt(0.02) / math.sqrt(2), rel=1e-6)
    assert report_stats.summarise([0.9]) == {"n": 1, "mean": 0.9, "sd": None, "ci95": None}


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
    assert "| layers=1 | gru | 1 | 64 | 0.001 | 1000 | 2 | 0.8000 ± " in text  # the chosen lr and params are shown
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


# ----------------------------------------------------------------------------------------------
# Comparisons between depths


def test_welch_difference_ci_and_p_match_scipy_and_the_hand_computed_degrees_of_freedom():
    from scipy import stats

    a, b = [0.80, 0.82, 0.84], [0.70, 0.74]
    got = report_stats.welch(a, b)
    se = math.sqrt(0.0004 / 3 + 0.0008 / 2)  # sample variances 0.0004 and 0.0008
    df = (0.0004 / 3 + 0.0008 / 2) ** 2 / ((0.0004 / 3) ** 2 / 2 + (0.0008 / 2) ** 2 / 1)  # Welch-Satterthwaite
    assert df == pytest.approx(1.684211, rel=1e-5)
    half = stats.t.ppf(0.975, df) * se
    assert got["diff"] == pytest.approx(0.10)
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((0.10 - half, 0.10 + half))
    scipy_test = stats.ttest_ind(a, b, equal_var=False)
    assert got["p"] == pytest.approx(scipy_test.pvalue)
    assert (got["ci_low"], got["ci_high"]) == pytest.approx(tuple(scipy_test.confidence_interval()))
    assert report_stats.welch([0.5, 0.5], [0.5, 0.5]) == {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p": 1.0}


def test_holm_multiplies_in_rank_order_stays_monotone_and_skips_untested():
    assert report_stats.holm([0.01, 0.04, 0.03, None, 0.005]) == pytest.approx([0.03, 0.06, 0.06, None, 0.02])
    # by hand: sorted 0.005 x4 = 0.02, 0.01 x3 = 0.03, 0.03 x2 = 0.06, 0.04 x1 = 0.04 -> raised to 0.06 (monotone)
    assert report_stats.holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1
    assert report_stats.holm([None, None]) == [None, None] and report_stats.holm([]) == []
    raw = [0.2, 0.001, 0.04, 0.03, 0.5]
    adjusted = report_stats.holm(raw)
    order = sorted(range(len(raw)), key=raw.__getitem__)
    assert all(adjusted[i] >= raw[i] for i in range(len(raw)))
    assert [adjusted[i] for i in order] == sorted(adjusted)


def test_p_better_counts_wins_and_half_ties_like_mann_whitney_u():
    from scipy import stats

    a, b = [1.0, 2.0, 3.0], [2.0, 2.0, 0.0]
    assert report_stats.p_better(a, b) == pytest.approx(6 / 9)  # 1 beats 0; 2 ties 2, 2 and beats 0; 3 beats all
    assert report_stats.p_better(a, b, sign=-1) == pytest.approx(3 / 9)  # lower is better (MSE)
    u = stats.mannwhitneyu(a, b, alternative="two-sided").statistic
    assert report_stats.p_better(a, b) == pytest.approx(u / 9)
    low, high = report_stats.p_better_ci(a, b)
    assert 0 <= low <= 6 / 9 <= high <= 1
    assert report_stats.p_better_ci([0.9, 0.91, 0.92], [0.5, 0.51, 0.52]) == (1.0, 1.0)  # always wins
    assert report_stats.mann_whitney([0.9, 0.91, 0.92, 0.93, 0.94], [0.5, 0.51, 0.52, 0.53, 0.54]) == pytest.approx(2 / 252)
    assert report_stats.mann_whitney([0.5, 0.5], [0.5, 0.5]) == 1.0


def depth_sweep(tmp_path, scores: dict, cells=("gru",)):
    """Fake jobs of a cell x depth x seed sweep; scores maps depth -> test accuracies (None: a failed job)."""
    for cell in cells:
        for layers, tests in scores.items():
            for seed, test in enumerate(tests):
                name = f"cell={cell},layers={layers},seed={seed}"
                if test is None:
                    fake_job(tmp_path, name, 0, 0, seed=seed, cell=cell, layers=layers, status="failed")
                else:
                    fake_job(tmp_path, name, test, test, seed=seed, cell=cell, layers=layers)


def test_report_compares_each_depth_with_the_shallowest_holm_over_every_comparison(tmp_path):
    depth_sweep(tmp_path, {1: [0.805, 0.81, 0.815, None], 2: [0.805, 0.81, 0.815], 3: [0.50, 0.51, 0.52], 4: [0.9]},
                cells=("gru", "lstm"))
    report.write_report(tmp_path, tensorboard=False)
    rows = read(tmp_path / "report_compare.csv")
    assert [(r["group"], r["config"], r["reference"]) for r in rows] == [
        (f"cell={cell}", f"cell={cell},layers={k}", f"cell={cell},layers=1") for cell in ("gru", "lstm") for k in (2, 3, 4)]
    by = {(r["cell"], r["layers"]): r for r in rows}
    three = by[("gru", "3")]
    assert (three["n"], three["reference_n"]) == ("3", "3")  # the failed seed is not a score
    expected = report_stats.welch([0.50, 0.51, 0.52], [0.805, 0.81, 0.815])
    assert float(three["diff"]) == pytest.approx(-0.30) and float(three["welch_p"]) == pytest.approx(expected["p"])
    raw = [float(by[(c, k)]["welch_p"]) for c in ("gru", "lstm") for k in ("2", "3")]
    assert [float(by[(c, k)]["welch_p_holm"]) for c in ("gru", "lstm") for k in ("2", "3")] == \
        pytest.approx(report_stats.holm(raw))  # 4 tests: the n = 1 depth 4 takes no part
    assert three["verdict"] == "3 layers worse" and float(three["p_better"]) == 0.0
    assert by[("gru", "2")]["verdict"] == "equivalent (within ±0.02)"  # CI inside +-2 points
    assert by[("gru", "4")]["verdict"] == "no test (n < 2)" and by[("gru", "4")]["welch_p"] == ""
    text = (tmp_path / "report.md").read_text()
    assert "## Depth against the reference depth (test acc over seeds)" in text
    assert "| cell=gru,layers=3 | cell=gru,layers=1 | 1000 vs 1000 | 3 vs 3 | -0.3000 [" in text
    assert "Holm-corrected over all 6 comparisons" in text
    assert (tmp_path / "accuracy_vs_depth.png").stat().st_size > 10_000


def test_reference_depth_is_settable_and_a_group_without_it_is_named(tmp_path, capsys):
    depth_sweep(tmp_path, {1: [0.80, 0.82], 2: [0.70, 0.72], 3: [0.75, 0.74]})
    depth_sweep(tmp_path, {1: [0.8, 0.8], 3: [0.8, 0.8]}, cells=("rnn",))
    report.write_report(tmp_path, tensorboard=False, reference="layers=2")
    rows = read(tmp_path / "report_compare.csv")
    assert [(r["config"], r["reference"]) for r in rows] == [("cell=gru,layers=1", "cell=gru,layers=2"),
                                                              ("cell=gru,layers=3", "cell=gru,layers=2")]
    assert "not compared: cell=rnn: no configuration at the reference depth 2" in (tmp_path / "report.md").read_text()
    # 1 vs 2: +0.10, Welch p 0.0194 -> Holm 0.0388 over the 2 comparisons; 3 vs 2: +0.035, p 0.129, CI wider than 2 pts
    assert [r["verdict"] for r in rows] == ["1 layer better", "not resolved"]
    assert float(rows[0]["welch_p_holm"]) == pytest.approx(2 * float(rows[0]["welch_p"]))
    assert report.main([str(tmp_path), "--reference", "layers=3"]) == 0
    assert {r["reference"] for r in read(tmp_path / "report_compare.csv")} == {"cell=gru,layers=3", "cell=rnn,layers=3"}
    assert report.main([str(tmp_path), "--reference", "deep"]) == 2
    assert "reference='deep' is not allowed: expected layers=K or K" in capsys.readouterr().err


def test_tuned_sweeps_compare_the_tuned_configurations_and_plot_convergence(tmp_path):
    for layers in (1, 2):
        for lr, val in (("0.001", 0.80), ("0.01", 0.70)):
            for seed in range(3):
                job = f"layers={layers},lr={lr},seed={seed}"
                fake_job(tmp_path, job, val + 0.01 * seed, 0.8 - 0.1 * (layers - 1) + 0.01 * seed, seed=seed,
                         layers=layers, lr=float(lr))
                results = json.loads((tmp_path / job / "results.json").read_text())
                curve = [0.6, 0.7, val + 0.01 * seed][: 2 + seed % 2]  # early stopping: some runs stop sooner
                results |= {"epochs": len(curve), "best_epoch": len(curve),
                            "history": [{"epoch": e, "val/acc": v} for e, v in enumerate(curve)]}
                (tmp_path / job / "results.json").write_text(json.dumps(results))
    report.write_report(tmp_path)
    [row] = read(tmp_path / "report_compare.csv")
    assert (row["config"], row["reference"]) == ("layers=2 (lr=0.001)", "layers=1 (lr=0.001)")
    assert float(row["diff"]) == pytest.approx(-0.1)
    tuned = read(tmp_path / "report_tuned.csv")
    assert tuned[0]["epochs_mean"] and float(tuned[0]["epochs_mean"]) == pytest.approx(7 / 3)
    assert (tmp_path / "convergence.png").stat().st_size > 10_000
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "report"))
    events.Reload()
    assert {"report/convergence", "report/accuracy_vs_depth"} <= set(events.Tags()["images"])


def test_a_running_or_crashed_job_counts_under_its_tasks_metric_read_through_the_configs_interpolation(tmp_path):
    """A job without results.json has only its unresolved .hydra/config.yaml: `metric: ${oc.select:data.metric,acc}`
    must resolve to the task's metric (bpc here), so that a half-finished sweep still reports as one task."""
    finished = tmp_path / "cell=lstm,layers=1,seed=0"
    finished.mkdir()
    (finished / "results.json").write_text(json.dumps({
        "status": "ok", "metric": "bpc", "metric_mode": "min", "best_val_bpc": 2.40, "test_bpc": 2.60,
        "num_params": 1000, "seconds_per_epoch": 2.0, "config": {"seed": 0, "model": {"cell": "lstm", "layers": 1}}}))
    running = tmp_path / "cell=lstm,layers=2,seed=0" / ".hydra"
    running.mkdir(parents=True)
    (running / "config.yaml").write_text("metric: ${oc.select:data.metric,acc}\noutput_dir: ${hydra:runtime.output_dir}\n"
                                         "data:\n  metric: bpc\n  metric_mode: min\n"
                                         "model:\n  cell: lstm\n  layers: 2\n  units: 38\n")
    rows = report.write_report(tmp_path, tensorboard=False)
    assert [r["status"][:6] for r in rows] == ["ok", "failed"] and rows[1]["metric"] == "bpc"
    assert rows[1]["metric_mode"] == "min" and "still running" in rows[1]["status"]


def test_every_job_table_keeps_four_decimals_of_a_score_above_one(tmp_path):
    """A bpc of 2.4129 must not print as 2.4 (the rounding meant for seconds), or seeds 0.05 apart look equal."""
    for seed, (val, test) in enumerate([(2.41291, 2.57592), (2.40237, 2.56748)]):
        fake_job(tmp_path, f"cell=gru,layers=1,seed={seed}", val, test, seed=seed, metric="bpc")
    report.write_report(tmp_path, tensorboard=False)
    every_job = (tmp_path / "report.md").read_text().split("## Every job")[1]
    assert "| 2.4129 | 2.5759 |" in every_job and "| 2.4024 | 2.5675 |" in every_job
    assert "| 2.0 |" in every_job  # seconds per epoch keep their one decimal
