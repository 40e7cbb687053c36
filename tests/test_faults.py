"""Training faults: NaN loss, Ctrl-C, SIGTERM and kill -9 with resume, and checkpoints that are unsafe or do not fit."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import CodePayload, compose_config, signal_overrides, tiny_overrides
from stacked_rnn import train
from stacked_rnn.model import StackedRNNClassifier

TESTS = Path(__file__).parent


def fast_overrides(tiny_archive, tmp_path, run="run", *extra):
    """The tiny run on 48 training reviews: 6 steps per epoch."""
    return tiny_overrides(tiny_archive, tmp_path / "cache", tmp_path / run, "data.limit=48", *extra)


def tiny_cfg(tiny_archive, tmp_path, run="run", *extra):
    return compose_config(fast_overrides(tiny_archive, tmp_path, run, *extra))


def cli_train(*overrides, cwd):
    """python -m stacked_rnn.train with tests/ importable (for conftest.SendSignal)."""
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "stacked_rnn.train", *overrides], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tiny_archive, tmp_path, monkeypatch):
    real_step = StackedRNNClassifier.training_step

    def nan_from_step_8(self, batch, batch_idx):  # epoch 1, batch 2: not a multiple of the check interval
        loss = real_step(self, batch, batch_idx)
        return loss * float("nan") if self.trainer.global_step >= 8 else loss

    monkeypatch.setattr(StackedRNNClassifier, "training_step", nan_from_step_8)
    with pytest.raises(FloatingPointError, match=r"training loss became nan by step 12 \(epoch 1\); try a lower "
                       r"model.lr .*The last good checkpoints are kept: .*last.ckpt"):
        train.run(tiny_cfg(tiny_archive, tmp_path, "run", "trainer.max_epochs=3"))
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 6  # the end of epoch 0, before the NaN
    assert all(torch.isfinite(w).all() for w in last["state_dict"].values())


DROPOUTS = ("trainer.max_epochs=2", "model.dropout=0.3", "model.embed_dropout=0.2", "model.head_dropout=0.2")


@pytest.fixture(scope="module")
def uninterrupted(tiny_archive, tmp_path_factory):
    return train.run(tiny_cfg(tiny_archive, tmp_path_factory.mktemp("full"), "run", *DROPOUTS))


@pytest.mark.parametrize("signum, at, stopped_at", [
    (signal.SIGTERM, {"at_epoch_end": 0}, "epoch 1, step 6"),  # a scheduler's SIGTERM between epochs
    (signal.SIGINT, {"at_step": 3}, "epoch 0, step 3"),  # Ctrl-C mid-epoch
])
def test_interrupted_then_resumed_equals_uninterrupted(tiny_archive, tmp_path, uninterrupted, signum, at, stopped_at):
    """Same per-epoch val loss/acc, best val acc and test acc as the run that never stopped, exactly."""
    with pytest.raises(train.Interrupted, match=rf"{signum.name} at {stopped_at}: saved .*last.ckpt\. Resume with:\n"
                                                r"  python -m stacked_rnn.train .* ckpt_path=last") as stop:
        train.run(tiny_cfg(tiny_archive, tmp_path, "cut", *DROPOUTS, *signal_overrides(signum, **at)))
    assert stop.value.signum == signum
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers are put back

    resumed = train.run(tiny_cfg(tiny_archive, tmp_path, "cut", *DROPOUTS, "ckpt_path=last"))
    assert resumed["epochs"] == uninterrupted["epochs"] == 2 and len(uninterrupted["history"]) == 2
    assert resumed["history"] == uninterrupted["history"]  # epochs before the stop come from the checkpoint
    assert resumed["best_val_acc"] == uninterrupted["best_val_acc"]
    assert resumed["test_acc"] == uninterrupted["test_acc"]
    # timing covers the steps each process ran: 12 in all, the resumed run from its checkpoint's step on
    assert uninterrupted["resumed_from_step"] == 0
    assert uninterrupted["seconds_per_epoch"] == pytest.approx(uninterrupted["train_seconds"] / 2, abs=0.01)
    step = {"epoch 1, step 6": 6, "epoch 0, step 3": 3}[stopped_at]
    assert resumed["resumed_from_step"] == step
    assert resumed["seconds_per_epoch"] == pytest.approx(resumed["train_seconds"] / (2 * (12 - step) / 12), abs=0.01)


def test_second_ctrl_c_stops_at_once_without_saving(tiny_archive, tmp_path):
    with pytest.raises(train.Interrupted, match=r"^SIGINT at epoch 0, step 3: stopped before any checkpoint was saved; "
                                                r"start the run again$"):
        train.run(tiny_cfg(tiny_archive, tmp_path, "run", *signal_overrides(signal.SIGINT, at_step=3, times=2)))
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()  # no save from a half-finished step
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("folder", ["run", "cell=gru,layers=4,lr=0.01,seed=1", "it's [a] b", "C:\\"])
def test_the_resume_command_names_a_multirun_job_folder_as_hydra_reads_it(folder):
    """A multirun job folder holds '=' and ',': unquoted, Hydra rejects the printed hydra.run.dir."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    output_dir = f"/outputs/sweep/{folder}"
    command = shlex.split(train.resume_command(OmegaConf.create({"output_dir": output_dir})))
    assert command[-1] == "ckpt_path=last" and command[-2].startswith("hydra.run.dir=")
    assert OverridesParser.create().parse_override(command[-2]).value() == output_dir


@pytest.mark.slow  # a CLI process (~10 s); the in-process tests above cover the same code
def test_ctrl_c_saves_a_checkpoint_and_the_printed_command_resumes(tiny_archive, tmp_path):
    run_dir = tmp_path / "run"
    overrides = fast_overrides(tiny_archive, tmp_path, "run", "trainer.max_epochs=2")
    done = cli_train(*overrides, *signal_overrides(signal.SIGINT, at_step=5), cwd=tmp_path)
    assert done.returncode == 130, done.stderr[-3000:]
    assert "Ctrl-C: stopping after this batch and saving a checkpoint" in done.stderr
    saved = f"interrupted by SIGINT at epoch 0, step 5: saved {run_dir}/checkpoints/last.ckpt. Resume with:"
    assert saved in done.stderr
    assert "Traceback" not in done.stderr
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5

    command = shlex.split(done.stderr.split("Resume with:\n")[1].splitlines()[0])
    assert command[:3] == ["python", "-m", "stacked_rnn.train"] and command[-1] == "ckpt_path=last"
    results = train.run(compose_config(command[3:]))  # the printed overrides, in-process (faster than a CLI)
    assert results["epochs"] == 2 and len(results["history"]) == 2


@pytest.mark.slow  # a CLI process (~10 s); the in-process tests above cover the same code
def test_kill_9_resumes_from_the_last_periodic_checkpoint(tiny_archive, tmp_path):
    run_dir = tmp_path / "run"
    overrides = fast_overrides(tiny_archive, tmp_path, "run", "trainer.max_epochs=2",
                               "callbacks.save_for_resume.every_n_train_steps=2")
    done = cli_train(*overrides, *signal_overrides(signal.SIGKILL, at_step=9), cwd=tmp_path)
    assert done.returncode == -signal.SIGKILL
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 8  # the periodic save before the kill, mid epoch 1

    results = train.run(compose_config([*overrides, "ckpt_path=last"]))
    assert results["epochs"] == 2
    assert [h["epoch"] for h in results["history"]] == [0, 1]
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] > 8


def test_resume_without_a_checkpoint_is_a_clear_error(tiny_archive, tmp_path):
    with pytest.raises(train.ConfigError, match=r"ckpt_path='last': there is no checkpoint at .*run/checkpoints/"
                                                r"last.ckpt\. To resume a run, pass its folder"):
        train.run(tiny_cfg(tiny_archive, tmp_path, "run", "ckpt_path=last"))


def test_checkpoints_that_would_run_code_or_do_not_fit_are_refused(tiny_archive, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "loops": {}, "hyper_parameters": {}, "x": CodePayload(marker)}, evil)
    with pytest.raises(train.ConfigError, match=r"evil.ckpt cannot be loaded safely \(weights_only=True\)"):
        train.run(tiny_cfg(tiny_archive, tmp_path, "run", f"ckpt_path={evil}"))
    assert not marker.exists()

    train.run(tiny_cfg(tiny_archive, tmp_path, "a", "trainer.max_epochs=1", "test_after_fit=false"))
    other = tiny_cfg(tiny_archive, tmp_path, "b", "model.layers=3", f"ckpt_path={tmp_path}/a/checkpoints/last.ckpt")
    with pytest.raises(train.ConfigError, match=r"was trained with other settings \(model.layers 2 -> 3\)"):
        train.run(other)
