"""stacked_rnn.tune: equal trial budgets per depth (resume adds none, a raised budget adds exactly the difference),
pruned and failed trials counted, trials of a killed process recovered, bad values refused before any work, and the
final runs on fresh seeds with their report. Tiny generated reviews, tiny models, in-process (n_jobs=1)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import optuna
import pytest
from hydra import compose, initialize_config_module
from optuna.trial import TrialState

from stacked_rnn import train, tune
from stacked_rnn.train import ConfigError

TINY = ["data=synthetic_reviews", "data.levels=1", "data.train_size=32", "data.val_size=32", "data.test_size=32",
        "data.batch_size=16", "data.eval_batch_size=32", "model.embed_dim=8", "model.param_budget=600",
        "trainer.max_epochs=1", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false", "trainer.log_every_n_steps=1", "callbacks.gradient_flow=null", "logger=csv",
        "tune.depths=[1,2]", "tune.trials=3", "tune.final_seeds=0", "tune.pruner=none"]


def compose_tune(*overrides: str):
    with initialize_config_module("stacked_rnn.conf", version_base="1.3"):
        return compose("tune", overrides=[*TINY, *overrides])


def states(run_dir, cell="gru", depth=1) -> list[str]:
    study = optuna.load_study(study_name=tune.study_name(cell, depth), storage=f"sqlite:///{run_dir / 'optuna.db'}")
    return [t.state.name for t in sorted(study.trials, key=lambda t: t.number)]


def test_each_depth_gets_the_budget_a_rerun_adds_none_a_raised_budget_adds_the_difference(tmp_path):
    run_dir = tmp_path / "run"
    tune.run_tune(compose_tune(), run_dir)
    assert states(run_dir, depth=1) == states(run_dir, depth=2) == ["COMPLETE"] * 3
    folders = sorted(p.name for p in (run_dir / "trials" / "cell=gru,layers=2").iterdir())
    assert folders == ["trial_000", "trial_001", "trial_002"]
    results = json.loads((run_dir / "trials" / "cell=gru,layers=2" / "trial_001" / "results.json").read_text())
    assert results["status"] == "ok" and results["config"]["model"]["layers"] == 2 and results["config"]["seed"] == 0
    assert results["test_acc"] is None, "search trials never touch the test set (tune.test_trials=false)"

    tune.run_tune(compose_tune(), run_dir)  # the same budget again: nothing to run
    assert states(run_dir, depth=1) == states(run_dir, depth=2) == ["COMPLETE"] * 3

    tune.run_tune(compose_tune("tune.trials=4"), run_dir)
    assert states(run_dir, depth=1) == states(run_dir, depth=2) == ["COMPLETE"] * 4
    study = optuna.load_study(study_name="cell=gru,layers=1", storage=f"sqlite:///{run_dir / 'optuna.db'}")
    params = [t.params for t in study.trials]
    assert params[3] not in params[:3], "a resumed study draws new configurations, not its first ones again"

    with pytest.raises(ConfigError, match=r"tune\.trials=0"):  # a bad rerun changes nothing in the studies
        tune.run_tune(compose_tune("tune.trials=0"), run_dir)
    assert len(states(run_dir, depth=2)) == 4
    summary = (run_dir / "tune_summary.csv").read_text().splitlines()
    assert summary[0].startswith("cell,layers,units,trials,complete,pruned,failed,epochs,train_seconds,best_val_acc")
    assert [line.split(",")[:7] for line in summary[1:]] == [["gru", "1", "10", "4", "4", "0", "0"],
                                                              ["gru", "2", "6", "4", "4", "0", "0"]]
    assert all(float(line.split(",")[7]) == 4 for line in summary[1:]), "4 trials x 1 epoch per depth"


def test_a_pruned_trial_writes_its_record_and_counts_towards_the_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(tune, "make_pruner", lambda t: optuna.pruners.ThresholdPruner(lower=2.0))  # accuracy < 2
    run_dir = tmp_path / "run"
    tune.run_tune(compose_tune("tune.depths=[1]", "tune.trials=2", "tune.final_seeds=1"), run_dir)
    assert states(run_dir) == ["PRUNED", "PRUNED"]
    record = json.loads((run_dir / "trials" / "cell=gru,layers=1" / "trial_000" / "results.json").read_text())
    assert record["status"] == "pruned" and "pruned at epoch 0" in record["reason"]
    assert record["epochs"] == 1 and len(record["val_acc_per_epoch"]) == 1 and record["params"]["model.lr"] > 0
    assert not (run_dir / "final").exists(), "a pruned trial's partial score never chooses the final configuration"
    assert "gru,1,10,2,0,2,0,2," in (run_dir / "tune_summary.csv").read_text().replace("\r", "")


def test_a_trial_that_raises_is_recorded_failed_and_the_study_goes_on(tmp_path, monkeypatch):
    real_run, calls = train.run, []

    def failing_first(cfg, **kwargs):
        calls.append(cfg.output_dir)
        if len(calls) == 1:
            raise RuntimeError("boom: out of memory")
        return real_run(cfg, **kwargs)

    monkeypatch.setattr(train, "run", failing_first)
    run_dir = tmp_path / "run"
    tune.run_tune(compose_tune("tune.depths=[1]", "tune.trials=2"), run_dir)
    assert states(run_dir) == ["FAIL", "COMPLETE"]
    record = json.loads((run_dir / "trials" / "cell=gru,layers=1" / "trial_000" / "results.json").read_text())
    assert record["status"] == "failed" and "boom: out of memory" in record["reason"]


def test_trials_left_running_by_a_killed_process_are_marked_failed_and_counted(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    killed = optuna.create_study(study_name="cell=gru,layers=1", storage=f"sqlite:///{run_dir / 'optuna.db'}",
                                 direction="maximize")
    killed.ask()  # a trial that started and never finished: its process was killed
    tune.run_tune(compose_tune("tune.depths=[1]", "tune.trials=2"), run_dir)
    assert states(run_dir) == ["FAIL", "COMPLETE"], "recovered as FAIL, counted: one trial left to run"


@pytest.mark.parametrize("override, named", [
    ("tune.trials=0", "tune.trials=0"),
    ("tune.depths=[0,1]", "tune.depths=[0, 1]"),
    ("tune.depths=[1.5]", "tune.depths=[1.5]"),
    ("tune.depths=[]", "tune.depths=[]"),
    ("tune.cells=[gru,bogus]", "tune.cells="),
    ("tune.sampler=grid", "tune.sampler='grid'"),
    ("tune.pruner=hyperband", "tune.pruner='hyperband'"),
    ("tune.n_jobs=0", "tune.n_jobs=0"),
    ("tune.space.model.lr.low=0", "tune.space.model.lr="),
    ("+tune.space.model.bogus.choices=[1,2]", "tune.space.model.bogus: the config has no key"),
    ("+tune.space.model.layers.choices=[1,2]", "tune.space.model.layers is not allowed"),
    ("tune.space.model.dropout.high=1.0", "tune.space.model.dropout: model.dropout=1.0"),
    ("seed=1000 tune.final_seeds=1", "tune.final_seed_start=1000"),
    ("model.param_budget=5", "model.param_budget"),
])
def test_bad_values_are_refused_before_any_work_naming_the_key(tmp_path, override, named):
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError) as err:
        tune.run_tune(compose_tune(*override.split()), run_dir)
    assert named in str(err.value)
    assert not (run_dir / "optuna.db").exists() and not (run_dir / "trials").exists()


def test_an_unwritable_storage_is_refused_before_any_work(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"tune\.storage=.*a_file/optuna\.db.*cannot write"):
        tune.run_tune(compose_tune(f"tune.storage={blocker}/optuna.db"), run_dir)
    assert not (run_dir / "trials").exists()


def test_final_runs_use_fresh_seeds_and_get_the_sweep_report(tmp_path):
    run_dir = tmp_path / "run"
    tune.run_tune(compose_tune("tune.trials=2", "tune.final_seeds=2", "logger=tensorboard"), run_dir)
    final = run_dir / "final"
    jobs = sorted(p.name for p in final.iterdir() if (p / "results.json").exists())
    assert jobs == [f"cell=gru,layers={d},seed={s}" for d in (1, 2) for s in (1000, 1001)]
    search_seeds = {json.loads(p.read_text())["config"]["seed"] for p in run_dir.glob("trials/*/*/results.json")}
    for job in jobs:
        results = json.loads((final / job / "results.json").read_text())
        assert results["status"] == "ok" and results["test_acc"] is not None
        assert results["config"]["seed"] not in search_seeds and results["config"]["data"]["order_seed"] >= 1000
        study = optuna.load_study(study_name=job.rsplit(",", 1)[0], storage=f"sqlite:///{run_dir / 'optuna.db'}")
        assert results["config"]["model"]["lr"] == study.best_trial.params["model.lr"], "the best trial's settings"
    report = (final / "report.md").read_text()
    assert "Tuned with 2 trials per depth" in report and (final / "report_compare.csv").exists()
    for written in ("tune_summary.md", "tune_summary.csv", "best_vs_trials.png", "history_gru.png"):
        assert (run_dir / written).stat().st_size > 200, written
    assert list((final / job).glob("events.out.tfevents.*")), "each final run is a normal run, with TensorBoard"
    mtime = (final / jobs[0] / "results.json").stat().st_mtime
    tune.run_tune(compose_tune("tune.trials=2", "tune.final_seeds=2", "logger=tensorboard"), run_dir)
    assert (final / jobs[0] / "results.json").stat().st_mtime == mtime, "a rerun does not train finished finals again"


def test_the_command_line_exits_2_naming_the_key_and_writes_no_study(tmp_path):
    done = subprocess.run([sys.executable, "-m", "stacked_rnn.tune", *TINY, "tune.depths=[1,0]",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "error: tune.depths=[1, 0] is not allowed" in done.stderr
    assert not (tmp_path / "run" / "optuna.db").exists()


def test_missing_optuna_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now raises ImportError
    monkeypatch.delitem(sys.modules, "stacked_rnn.tune")
    with pytest.raises(ImportError, match=r'pip install -e "\.\[tune\]"'):
        importlib.import_module("stacked_rnn.tune")
