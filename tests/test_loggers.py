"""Loggers (logger=tensorboard|csv|mlflow|many, or a list): what each one writes, every feature working without
TensorBoard, MLflow runs read back with MLflow's own client, and one clear line when MLflow is missing."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import yaml
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from conftest import compose_config, tiny_overrides
from stacked_rnn import train
from stacked_rnn.train import HPARAM_KEYS, ConfigError


def run_tiny(tiny_archive, tmp_path, *extra):
    cfg = compose_config(tiny_overrides(tiny_archive, tmp_path / "cache", tmp_path / "run", *extra))
    return train.run(cfg), tmp_path / "run"


def final_metrics(results: dict) -> dict:
    return {"hp/best_val_acc": results["best_val_acc"], "hp/test_acc": results["test_acc"],
            "hp/train_seconds": results["train_seconds"]}


def test_csv_logger_writes_metrics_per_epoch_and_hparams_and_no_tensorboard(tiny_archive, tmp_path):
    results, run_dir = run_tiny(tiny_archive, tmp_path, "logger=csv", "probe_after_fit=true")
    rows = list(csv.DictReader(open(run_dir / "csv" / "metrics.csv")))
    val_acc = [round(float(r["val/acc"]), 5) for r in rows if r["val/acc"]]
    assert len(val_acc) == results["epochs"] == 2
    assert val_acc == [h["val/acc"] for h in results["history"]]
    assert any(r["grad/weight_hh_l1"] for r in rows), "gradient flow logs its norms to every logger"
    hparams = yaml.safe_load((run_dir / "csv" / "hparams.yaml").read_text())
    assert hparams == {k: results["config"]["model"][k] for k in HPARAM_KEYS} | {
        "params": results["num_params"], "stack_params": results["stack_params"]}
    final = [r for r in rows if r["hp/test_acc"]]
    assert len(final) == 1 and {k: float(final[0][k]) for k in final_metrics(results)} == final_metrics(results)
    assert not list(run_dir.rglob("events.out.tfevents.*")), "logger=csv writes no TensorBoard events (probe neither)"
    for written in ("grad_flow.png", "probe.png", "results.json"):
        assert (run_dir / written).exists(), written


def test_logger_many_logs_to_tensorboard_csv_and_mlflow(tiny_archive, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)  # the default store: sqlite:///outputs/mlflow.db under the working directory
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    results, run_dir = run_tiny(tiny_archive, tmp_path, "logger=many", "trainer.max_epochs=1")
    assert list(run_dir.glob("events.out.tfevents.*")) and (run_dir / "csv" / "metrics.csv").exists()
    store = tmp_path / "outputs" / "mlflow.db"
    assert results["config"]["logger"]["mlflow"]["tracking_uri"] == f"sqlite:///{store}"
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()
    client = mlflow.MlflowClient(f"sqlite:///{store}")
    runs = client.search_runs([client.get_experiment_by_name("stacked_rnn").experiment_id])
    assert [r.info.run_name for r in runs] == ["run"] and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["params"] == str(results["num_params"])
    assert runs[0].data.metrics["hp/test_acc"] == results["test_acc"]


def test_a_list_of_loggers_and_no_logger(tmp_path):
    cfg = compose_config(["logger=[csv,tensorboard]", f"output_dir={tmp_path}"])
    assert [type(lg) for lg in train.build_loggers(cfg, tmp_path)] == [CSVLogger, TensorBoardLogger]
    with pytest.raises(ConfigError, match=r"no logger is configured: expected logger=tensorboard, csv, mlflow, many"):
        train.build_loggers(compose_config(["~logger", f"output_dir={tmp_path}"]), tmp_path)


def test_logger_mlflow_without_mlflow_is_one_line_and_exit_2(tiny_archive, tmp_path):
    hide_mlflow = ("import runpy, sys; sys.modules['mlflow'] = None; "  # `import mlflow` raises ImportError
                   "runpy.run_module('stacked_rnn.train', run_name='__main__', alter_sys=True)")
    overrides = tiny_overrides(tiny_archive, tmp_path / "cache", tmp_path / "run", cli=True)
    done = subprocess.run([sys.executable, "-c", hide_mlflow, *overrides, "logger=mlflow"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == ('error: logger.mlflow needs MLflow, which is not installed: '
                                                    'pip install -e ".[mlflow]"')
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_mlflow_sweep_runs_read_back_with_mlflows_client(tiny_archive, tmp_path):
    """A 2-job parallel sweep with logger=mlflow, then MLflow's own client: one experiment for the sweep, one run per
    job named after its folder, with the job's results.json values as params and metrics, and its files."""
    mlflow = pytest.importorskip("mlflow")
    sweep_dir = tmp_path / "sweep"
    overrides = [o for o in tiny_overrides(tiny_archive, tmp_path / "cache", tmp_path / "unused", cli=True)
                 if not o.startswith("hydra.run.dir=")]
    env = {k: v for k, v in __import__("os").environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run([sys.executable, "-m", "stacked_rnn.train", "-m", *overrides, "data.limit=40",
                           "logger=mlflow", "model.layers=1,2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                           f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("*/results.json")}
    assert sorted(jobs) == ["layers=1", "layers=2"] and all(j["status"] == "ok" for j in jobs.values())
    assert (sweep_dir / "report.md").exists()

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")  # the default store, under the cwd
    runs = mlflow.search_runs(experiment_names=["sweep"], output_format="list")  # the sweep folder, from the cwd
    assert sorted(r.info.run_name for r in runs) == sorted(jobs)
    client = mlflow.MlflowClient()
    for run in runs:
        results = jobs[run.info.run_name]
        assert run.info.status == "FINISHED"
        assert run.data.tags["sweep_dir"] == str(sweep_dir.resolve())
        assert run.data.params == {k: str(results["config"]["model"][k]) for k in HPARAM_KEYS} | {
            "params": str(results["num_params"]), "stack_params": str(results["stack_params"])}
        assert {k: run.data.metrics[k] for k in final_metrics(results)} == final_metrics(results)
        val_acc = client.get_metric_history(run.info.run_id, "val/acc")  # Lightning's per-epoch metric
        assert [round(m.value, 5) for m in val_acc] == [h["val/acc"] for h in results["history"]]
        files = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"results.json", "grad_flow.png", "hydra"} <= files
        saved = client.download_artifacts(run.info.run_id, "results.json", str(tmp_path / run.info.run_id))
        assert json.loads(open(saved).read()) == results
    assert not (tmp_path / "mlruns").exists(), "artifacts stay in outputs/ (outputs/mlartifacts)"


@pytest.mark.slow
def test_a_resumed_run_continues_its_mlflow_run(tiny_archive, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_tiny(tiny_archive, tmp_path, "logger=mlflow", "trainer.max_epochs=1")
    results, _ = run_tiny(tiny_archive, tmp_path, "logger=mlflow", "trainer.max_epochs=2", "ckpt_path=last")
    client = mlflow.MlflowClient(results["config"]["logger"]["mlflow"]["tracking_uri"])
    runs = client.search_runs([client.get_experiment_by_name("stacked_rnn").experiment_id])
    assert len(runs) == 1 and results["config"]["logger"]["mlflow"]["run_id"] == runs[0].info.run_id
    assert len(client.get_metric_history(runs[0].info.run_id, "val/acc")) == 2  # epoch 1, then epoch 2 after resuming
    assert runs[0].data.metrics["hp/test_acc"] == results["test_acc"]
