"""The training entry point: learning happens, results.json, checkpoints, CLI overrides, predict."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import compose_config, tiny_overrides
from stacked_rnn import predict, train
from stacked_rnn.model import CELLS


def run_tiny(tiny_archive, tmp_path, *extra):
    cfg = compose_config(tiny_overrides(tiny_archive, tmp_path / "cache", tmp_path / "run", *extra))
    return train.run(cfg), tmp_path / "run"


def cli(*args, cwd, stdin=None):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, input=stdin, timeout=300)


def test_learns_the_tiny_task_and_writes_results(tiny_archive, tmp_path):
    results, run_dir = run_tiny(tiny_archive, tmp_path, "trainer.max_epochs=6", "model.lr=1e-2")
    assert results["test_acc"] > 0.8  # chance is 0.5: the sentiment words were learned
    history = [h["val/loss"] for h in results["history"]]
    assert history[-1] < history[0]
    saved = json.loads((run_dir / "results.json").read_text())
    for key in ("test_acc", "best_val_acc", "num_params", "train_seconds", "epochs", "config"):
        assert key in saved
    assert saved["epochs"] == 6 and saved["config"]["model"]["cell"] == "gru"
    assert saved["num_params"] == sum(p.numel() for p in torch.load(saved["best_checkpoint"], weights_only=True)
                                      ["state_dict"].values())
    assert list(run_dir.glob("events.out.tfevents.*")), "TensorBoard events belong in the run folder"


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers", [1, 2, 3])
def test_every_cell_and_depth_trains(tiny_archive, tmp_path, cell, layers):
    results, _ = run_tiny(tiny_archive, tmp_path, f"model.cell={cell}", f"model.layers={layers}",
                          "trainer.max_epochs=1", "data.limit=40")
    assert 0.0 <= results["test_acc"] <= 1.0 and results["epochs"] == 1


def test_checkpoint_is_plain_and_loads_weights_only(tiny_archive, tmp_path):
    results, _ = run_tiny(tiny_archive, tmp_path, "trainer.max_epochs=1", "model.cell=lstm", "model.pool=mean")
    checkpoint = torch.load(results["best_checkpoint"], weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    assert type(hparams) is dict and hparams["cell"] == "lstm" and hparams["pool"] == "mean"
    assert all(isinstance(v, (int, float, str, bool)) for v in hparams.values())
    state = checkpoint["IMDBDataModule"]
    assert state["vocab"][:2] == ["<pad>", "<unk>"] and state["max_len"] == 32


def test_bad_config_value_is_named(tiny_archive, tmp_path):
    cfg = compose_config(tiny_overrides(tiny_archive, tmp_path, tmp_path / "run", "model.cell=transformer"))
    with pytest.raises(train.ConfigError, match=r"model.cell='transformer' is not allowed: expected one of \('rnn'"):
        train.run(cfg)


def test_cli_overrides_and_predict(tiny_archive, tmp_path):
    run_dir = tmp_path / "cli-run"
    done = cli("-m", "stacked_rnn.train", *tiny_overrides(tiny_archive, tmp_path / "cache", run_dir,
               "model.cell=lstm", "model.layers=3", "trainer.max_epochs=5", "model.lr=5e-3", cli=True), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "test acc" in done.stdout and "tensorboard --logdir" in done.stdout
    assert (run_dir / ".hydra" / "overrides.yaml").exists() and not (tmp_path / "outputs").exists()
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["config"]["model"]["cell"] == "lstm" and saved["config"]["model"]["layers"] == 3

    texts = "great superb loved word1 word2\nawful dull hated word3 word4\n\n"
    scored = cli("-m", "stacked_rnn.predict", f"ckpt={run_dir}", cwd=tmp_path, stdin=texts)
    assert scored.returncode == 0, scored.stderr
    probs = [float(line.split("\t")[0]) for line in scored.stdout.splitlines()]
    assert len(probs) == 3 and probs[0] > 0.5 > probs[1]  # the empty line still gets a probability

    one = cli("-m", "stacked_rnn.predict", f"ckpt={saved['best_checkpoint']}", "text=wonderful brilliant", cwd=tmp_path)
    assert one.returncode == 0 and float(one.stdout.split("\t")[0]) > 0.5


def test_cli_rejects_bad_values_without_a_traceback(tmp_path):
    done = cli("-m", "stacked_rnn.train", "model.layers=0", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert done.returncode == 2
    assert "model.layers=0 is not allowed: expected an integer >= 1" in done.stderr
    assert "Traceback" not in done.stderr


def test_predict_errors_are_clear(tmp_path):
    assert predict.main([f"ckpt={tmp_path}/missing.ckpt", "text=hi"]) == 2
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    assert predict.main([f"ckpt={tmp_path}/junk.ckpt", "text=hi"]) == 2
    assert predict.main(["text=hi"]) == 2
    assert predict.main(["ckpt=x", "colour=blue"]) == 2


def test_precision_is_bf16_only_on_cuda():
    cfg = compose_config(["output_dir=/tmp/x", "trainer.accelerator=cpu"])
    assert not train.uses_cuda(cfg)
    cfg = compose_config(["output_dir=/tmp/x", "trainer=gpu"])
    assert train.uses_cuda(cfg) and cfg.trainer.precision == "bf16-mixed"
