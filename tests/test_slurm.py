"""hydra/launcher=slurm against a real one-node Slurm cluster (tests/slurm_cluster.py): a sweep, a 2-task DDP
job and a preempted job that is requeued and resumes from last.ckpt. Slow: they skip, saying why, without root
or Slurm packages."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from omegaconf import OmegaConf

from conftest import compose_config, tiny_overrides
from slurm_cluster import slurm_cluster_fixture
from stacked_rnn import train as train_module
from stacked_rnn.callbacks import submitit_requeue_signal

TESTS = Path(__file__).parent
slurm_cluster = pytest.fixture(scope="session")(slurm_cluster_fixture)
SLURM = ["hydra/launcher=slurm", "hydra.launcher.partition=cpu", "hydra.launcher.gpus_per_node=0",
         "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=20"]
DDP_2_TASKS = ["hydra.launcher.tasks_per_node=2", "trainer=ddp", "trainer.devices=2", "data.batch_size=4"]  # data.batch_size is per rank


def train(tmp_path, archive, *args, multirun=True):
    """Run the real CLI (a multirun unless told otherwise) on the tiny archive; returns the finished process.
    Slurm holds a requeued job for about two minutes (its BeginTime); to keep the test short it is started at once."""
    overrides = [o for o in tiny_overrides(archive, tmp_path / "cache", tmp_path / "single", cli=True)
                 if multirun is False or not o.startswith("hydra.run.dir=")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "stacked_rnn.train", *(["-m"] if multirun else []), *overrides, *args]
    with open(tmp_path / "stdout.txt", "w+") as out, open(tmp_path / "stderr.txt", "w+") as err:
        process = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out, stderr=err, text=True)
        deadline = time.monotonic() + 600
        while process.poll() is None and time.monotonic() < deadline:
            held = subprocess.run(["squeue", "-h", "-t", "PD", "-o", "%i %r"], capture_output=True, text=True).stdout
            for job_id in (line.split()[0] for line in held.splitlines() if line.endswith("BeginTime")):
                subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True)
            time.sleep(2)
        if process.poll() is None:
            process.kill()
        process.wait()
        out.seek(0), err.seek(0)
        return subprocess.CompletedProcess(cmd, process.returncode, out.read(), err.read())


def results(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("*/results.json")}


SLURM_TASK_ENV = {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "1", "SLURM_PROCID": "0",
                  "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "7"}


@pytest.mark.parametrize("in_slurm", [True, False])
def test_ddp_in_a_multirun_spawns_only_outside_slurm(in_slurm, monkeypatch, tmp_path):
    """Under Slurm each task is a rank (plain ddp, submitit owns the requeue signal); a local multirun spawns."""
    for key, value in SLURM_TASK_ENV.items():
        monkeypatch.setenv(key, value) if in_slurm else monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm") if in_slurm else monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    monkeypatch.setattr(train_module, "is_multirun", lambda: True)
    cfg = compose_config(tiny_overrides(Path("unused.tar.gz"), tmp_path, tmp_path, "trainer=ddp", "trainer.devices=1"))
    trainer = train_module.build_trainer(cfg, tmp_path)
    assert trainer.strategy._start_method == ("popen" if in_slurm else "spawn")  # ddp vs ddp_spawn
    environment = trainer._accelerator_connector.cluster_environment
    assert (type(environment).__name__ == "SLURMEnvironment" and not environment.auto_requeue) is in_slurm


def test_requeue_signal_and_requeued_checkpoint(monkeypatch, tmp_path):
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    assert submitit_requeue_signal() is None
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    assert submitit_requeue_signal() == signal.SIGUSR2
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "USR1")
    assert submitit_requeue_signal() == signal.SIGUSR1

    cfg = OmegaConf.create({"output_dir": str(tmp_path), "ckpt_path": None})
    last = tmp_path / "checkpoints" / "last.ckpt"
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert train_module.requeued_checkpoint(cfg) is None, "no last.ckpt yet: start from scratch"
    last.parent.mkdir()
    last.touch()
    assert train_module.requeued_checkpoint(cfg) == last
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    assert train_module.requeued_checkpoint(cfg) is None, "a first run never resumes on its own"
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert train_module.requeued_checkpoint(OmegaConf.create({"output_dir": str(tmp_path), "ckpt_path": "x.ckpt"})) \
        is None, "an explicit ckpt_path wins"


@pytest.mark.slow
def test_slurm_sweep_runs_each_job_as_a_slurm_job(slurm_cluster, tiny_archive, tmp_path):
    sweep_dir = tmp_path / "sweep"
    done = train(tmp_path, tiny_archive, *SLURM, "trainer.max_epochs=1", "model.layers=1,2",
                 f"hydra.sweep.dir={sweep_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = results(sweep_dir)
    assert sorted(jobs) == ["layers=1", "layers=2"]
    assert all(r["status"] == "ok" and r["test_acc"] is not None for r in jobs.values()), jobs
    rows = list(csv.DictReader(open(sweep_dir / "report.csv")))
    assert sorted((r["layers"], r["status"]) for r in rows) == [("1", "ok"), ("2", "ok")]
    array_tasks = {p.parent.name for p in (sweep_dir / ".submitit").glob("*/*_result.pkl")}
    assert len(array_tasks) == 2, f"one Slurm (array) job per sweep job: {array_tasks}"


@pytest.mark.slow
def test_slurm_ddp_job_matches_a_single_process(slurm_cluster, tiny_archive, tmp_path):
    """Two Slurm tasks are the two ranks of one job (no spawn); rank 0 alone writes results and TensorBoard.
    data.batch_size is per rank, so DDP uses half of it; the data split across ranks differs from one process's
    batches, so the test accuracy is compared within 0.1 (as for local DDP in test_sweep.py)."""
    common = ["trainer.max_epochs=6", "model.lr=1e-2", "model.layers=2"]
    single = train(tmp_path, tiny_archive, *common, multirun=False)  # without Slurm
    assert single.returncode == 0, single.stderr[-3000:]
    single_acc = json.loads((tmp_path / "single" / "results.json").read_text())["test_acc"]

    sweep_dir = tmp_path / "ddp"
    done = train(tmp_path, tiny_archive, *SLURM, *common, *DDP_2_TASKS, f"hydra.sweep.dir={sweep_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    [(job, result)] = results(sweep_dir).items()
    assert result["status"] == "ok", result.get("traceback", result)
    assert single_acc > 0.8
    assert abs(result["test_acc"] - single_acc) < 0.1, (result["test_acc"], single_acc)

    [slurm_job] = {p.parent for p in (sweep_dir / ".submitit").glob("*/*_result.pkl")}  # N_0, one array task
    logs = {rank: (slurm_job / f"{slurm_job.name}_{rank}_log.out").read_text()
            + (slurm_job / f"{slurm_job.name}_{rank}_log.err").read_text() for rank in (0, 1)}
    for rank in (0, 1):
        assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in logs[rank], f"task {rank} is rank {rank} of 2"
        assert "spawn" not in logs[rank]
    assert "results:" in logs[0] and "results:" not in logs[1], "rank 0 alone writes results.json"
    writers = {re.search(r"\.(\d+)\.\d+$", f.name).group(1) for f in (sweep_dir / job).glob("events.out.tfevents.*")}
    assert len(writers) == 1, "TensorBoard events come from rank 0 only"


@pytest.mark.slow
@pytest.mark.parametrize("ddp", [False, True], ids=["1-task", "2-task-ddp"])
def test_preempted_slurm_job_is_requeued_and_resumes_from_last_ckpt(ddp, slurm_cluster, tiny_archive, tmp_path):
    """Job at_step=5 gets Slurm's pre-kill USR2 after step 5 of its first run and stops after the next batch; job
    at_step=-1 runs uninterrupted.
    The first must save last.ckpt, be requeued by submitit, resume at step 6 and end exactly like the second.
    With 2 DDP tasks, both ranks stop after the same batch (else the job would hang); the resumed DDP run is not
    exact (the interrupted epoch's data starts over), so its test accuracy is compared within 0.1."""
    sweep_dir = tmp_path / "sweep"
    done = train(tmp_path, tiny_archive, *SLURM, *(DDP_2_TASKS if ddp else []), "trainer.max_epochs=3", "model.lr=1e-2", "callbacks.save_for_resume.every_n_train_steps=0",
                 "+callbacks.preempt._target_=slurm_cluster.PreemptOnce", "+callbacks.preempt.at_step=5,-1",
                 f"hydra.sweep.dir={sweep_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = results(sweep_dir)
    preempted = next(name for name in jobs if "at_step=5" in name)
    whole = next(name for name in jobs if "at_step=-1" in name)
    attempts = [json.loads(line) for line in (sweep_dir / preempted / "attempts.jsonl").read_text().splitlines()]
    assert attempts[:3] == [
        {"event": "start", "restart": 0, "epoch": 0, "step": 0},
        {"event": "stopped by SIGTERMException", "restart": 0, "epoch": 0, "step": 6},
        {"event": "start", "restart": 1, "epoch": 0, "step": 6},  # resumed from last.ckpt, not from scratch
    ], attempts
    assert attempts[-1]["event"] == "end" and attempts[-1]["restart"] == 1
    assert "resuming from" in (sweep_dir / preempted / "train.log").read_text()
    for name in (preempted, whole):
        assert jobs[name]["status"] == "ok", jobs[name].get("traceback", jobs[name])
    if not ddp:  # one process resumes exactly (ExactResume)
        for key in ("test_acc", "best_val_acc", "epochs", "history"):
            assert jobs[preempted][key] == jobs[whole][key], key
    else:  # DDP restarts the interrupted epoch's batch order (data.skip_batches serves one process only)
        assert jobs[preempted]["epochs"] == jobs[whole]["epochs"] == 3 and jobs[whole]["test_acc"] > 0.8
        assert abs(jobs[preempted]["test_acc"] - jobs[whole]["test_acc"]) < 0.1
