"""Sweeps: multirun folders, parallel jobs, failures, device placement, TensorBoard hparams, the report."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import compose_config, tiny_overrides
from stacked_rnn import SWEPT_KEYS_ENV, report, short_job_name, swept_keys
from stacked_rnn.train import assign_device


def sweep(tmp_path, archive, *args):
    """Run a multirun on the tiny archive; returns (process, sweep folder)."""
    sweep_dir = tmp_path / "sweep"
    overrides = [o for o in tiny_overrides(archive, tmp_path / "cache", tmp_path / "unused", cli=True)
                 if not o.startswith("hydra.run.dir=")]
    cmd = [sys.executable, "-m", "stacked_rnn.train", "-m", *overrides, "trainer.max_epochs=1", "data.limit=40",
           f"hydra.sweep.dir={sweep_dir}", *args]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    return done, sweep_dir


def test_assign_device_round_robin():
    assert [assign_device(i, 2) for i in range(5)] == [[0], [1], [0], [1], [0]]
    assert assign_device(3, 4) == [3] and assign_device(7, 1) == [0]
    assert assign_device(0, 0) is None


def test_short_job_names(monkeypatch):
    monkeypatch.delenv(SWEPT_KEYS_ENV, raising=False)
    assert short_job_name("model.cell=gru,model.layers=3,model.units=128") == "cell=gru,layers=3,units=128"
    assert short_job_name("") == "default"
    argv = ["-m", "model.cell=gru,lstm", "model.layers=range(1,5)", "data.limit=500", "trainer.devices=[0,1]"]
    monkeypatch.setenv(SWEPT_KEYS_ENV, ",".join(swept_keys(argv)))
    assert short_job_name("data.limit=500,model.cell=gru,model.layers=3") == "cell=gru,layers=3"
    assert short_job_name("data.limit=500,model.units=64", {"model.units": "64,128"}) == "units=64"


def test_parallel_2x2_sweep_with_a_failing_job_writes_the_report(tiny_archive, tmp_path):
    done, sweep_dir = sweep(tmp_path, tiny_archive, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                            "model.cell=gru,lstm", "model.layers=1,2", "data.num_workers=1")  # loader workers too
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = sorted(p.name for p in sweep_dir.iterdir() if (p / "results.json").exists())
    assert len(jobs) == 4
    assert jobs == ["cell=gru,layers=1", "cell=gru,layers=2", "cell=lstm,layers=1", "cell=lstm,layers=2"]
    rows = list(csv.DictReader(open(sweep_dir / "report.csv")))
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    assert {(r["cell"], r["layers"]) for r in rows} == {("gru", "1"), ("gru", "2"), ("lstm", "1"), ("lstm", "2")}
    for png in ("accuracy_vs_depth.png", "time_vs_depth.png"):
        assert (sweep_dir / png).stat().st_size > 10_000
    assert "| cell | layers |" in (sweep_dir / "report.md").read_text().replace("job | ", "")
    assert list((sweep_dir / "report").glob("events.out.tfevents.*")), "report figures are logged to TensorBoard"

    # every job logged the same hparams and hp/ metrics, as its own TensorBoard run
    for job in jobs:
        events = EventAccumulator(str(sweep_dir / job))
        events.Reload()
        assert {"hp/best_val_acc", "hp/test_acc", "hp/train_seconds"} <= set(events.Tags()["scalars"])
        hparams_plugin = events.PluginTagToContent("hparams")
        assert hparams_plugin, f"{job} has no hparams summary"


def test_failing_job_does_not_stop_the_others(tiny_archive, tmp_path):
    done, sweep_dir = sweep(tmp_path, tiny_archive, "model.cell=gru,bogus", "logger=csv")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (sweep_dir / "cell=gru" / "csv" / "metrics.csv").exists()
    assert not list((sweep_dir / "cell=gru").glob("events.out.tfevents.*"))
    assert (sweep_dir / "report.md").exists(), "the report reads results.json, whichever logger ran"
    good = json.loads((sweep_dir / "cell=gru" / "results.json").read_text())
    bad = json.loads((sweep_dir / "cell=bogus" / "results.json").read_text())
    assert good["status"] == "ok" and good["test_acc"] is not None
    assert bad["status"] == "failed" and "model.cell='bogus'" in bad["reason"]
    rows = {r["cell"]: r for r in csv.DictReader(open(sweep_dir / "report.csv"))}
    assert rows["bogus"]["status"].startswith("failed: ConfigError: model.cell='bogus'")
    assert rows["gru"]["status"] == "ok"


def test_report_marks_a_crashed_job(tmp_path):
    crashed = tmp_path / "cell=rnn,layers=4" / ".hydra"
    crashed.mkdir(parents=True)
    (crashed / "config.yaml").write_text("model:\n  cell: rnn\n  layers: 4\n  units: 64\n")
    finished = tmp_path / "cell=gru,layers=1"
    finished.mkdir()
    (finished / "results.json").write_text(json.dumps({
        "status": "ok", "test_acc": 0.8, "best_val_acc": 0.81, "num_params": 1000, "seconds_per_epoch": 2.0,
        "config": {"model": {"cell": "gru", "layers": 1, "units": 64}}}))
    rows = report.write_report(tmp_path, tensorboard=False)
    assert [r["status"][:6] for r in rows] == ["ok", "failed"]
    assert "killed" in rows[1]["status"]
    assert (tmp_path / "accuracy_vs_depth.png").exists()
    assert report.main([str(tmp_path / "nowhere")]) == 2


def test_slurm_and_local_launchers_compose():
    cfg = compose_config(["output_dir=/tmp/x", "hydra/launcher=slurm", "hydra.launcher.partition=gpu"])
    assert cfg is not None  # the hydra node is not returned by compose; compose with return_hydra_config
    from hydra import compose, initialize_config_module

    with initialize_config_module("stacked_rnn.conf", version_base="1.3"):
        hydra_cfg = compose("train", overrides=["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4",
                                                 "hydra.launcher.tasks_per_node=4"], return_hydra_config=True)
    launcher = hydra_cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.tasks_per_node == hydra_cfg.trainer.devices == 4
    assert hydra_cfg.trainer.strategy == "ddp"


def test_submitit_local_launcher_runs_a_job(tiny_archive, tmp_path):
    done, sweep_dir = sweep(tmp_path, tiny_archive, "hydra/launcher=local", "model.layers=1")
    assert done.returncode == 0, done.stderr[-3000:]
    [result] = sweep_dir.glob("*/results.json")
    assert json.loads(result.read_text())["status"] == "ok"


@pytest.mark.slow
def test_ddp_on_cpu_matches_a_single_process(tiny_archive, tmp_path):
    """Two gloo processes train one job; its accuracy matches a single process on the same task.
    data.batch_size is per process, so DDP uses half of it to keep the same effective batch and steps."""
    accuracies = {}
    for name, extra in {"single": [], "ddp": ["trainer=ddp", "trainer.devices=2", "data.batch_size=4"]}.items():
        run_dir = tmp_path / name
        cmd = [sys.executable, "-m", "stacked_rnn.train",
               *tiny_overrides(tiny_archive, tmp_path / "cache", run_dir, "trainer.max_epochs=6", "model.lr=1e-2",
                               cli=True), *extra]
        done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        accuracies[name] = json.loads((run_dir / "results.json").read_text())["test_acc"]
        assert {p.name for p in tmp_path.iterdir()} <= {"cache", "single", "ddp"}, "no stray Hydra folders"
        writers = {re.search(r"\.(\d+)\.\d+$", f.name).group(1) for f in run_dir.glob("events.out.tfevents.*")}
        assert len(writers) == 1, "TensorBoard events come from rank 0 only"
    assert accuracies["single"] > 0.8
    assert abs(accuracies["ddp"] - accuracies["single"]) < 0.1, accuracies


def test_depth_study_preset_sweeps_cells_depths_learning_rates_and_5_seeds_with_early_stopping():
    from hydra import compose, initialize_config_module

    cpu = ["data.limit=6000", "data.val_size=1000", "data.max_len=200", "data.vocab_size=10000", "model.units=32",
           "model.embed_dim=32"]  # the CPU-sized version in docs/depth_study.md
    with initialize_config_module("stacked_rnn.conf", version_base="1.3"):
        cfg = compose("train", overrides=["experiment=depth_study", *cpu], return_hydra_config=True)
    grid = {k: str(v).split(",") for k, v in cfg.hydra.sweeper.params.items()}
    assert grid == {"model.cell": ["rnn", "lstm", "gru"], "model.layers": ["1", "2", "3", "4"],
                    "model.lr": ["1e-3", "3e-3"], "seed": ["0", "1", "2", "3", "4"]}
    assert cfg.hydra.callbacks.sweep_report.tune == ["model.lr"] and cfg.hydra.callbacks.sweep_report.reference is None
    assert cfg.data.val_split == "movie" and cfg.data.limit == 6000 and cfg.model.units == 32
    assert cfg.trainer.max_epochs == 10 and cfg.callbacks.early_stopping.patience == 3
    assert cfg.callbacks.early_stopping.monitor == "val/acc" and cfg.callbacks.model_checkpoint.monitor == "val/acc"


@pytest.mark.parametrize("preset", ["depth_study", "depth_sweep", "adding_sweep"])
def test_sweep_presets_run_under_slurm_or_joblib(preset):
    """A preset's parallel job count lives in its launcher config: hydra/launcher=slurm replaces it whole
    (it once failed with "Key 'n_jobs' not in 'SlurmQueueConf'"), and without it the preset runs 2 joblib jobs."""
    from hydra import compose, initialize_config_module

    with initialize_config_module("stacked_rnn.conf", version_base="1.3"):
        slurm = compose("train", overrides=[f"experiment={preset}", "hydra/launcher=slurm",
                                            "hydra.launcher.partition=gpu"], return_hydra_config=True)
        local = compose("train", overrides=[f"experiment={preset}"], return_hydra_config=True)
    assert slurm.hydra.launcher._target_.endswith("SlurmLauncher") and "n_jobs" not in slurm.hydra.launcher
    assert slurm.hydra.launcher.partition == "gpu"
    assert local.hydra.launcher._target_.endswith("JoblibLauncher") and local.hydra.launcher.n_jobs == 2
