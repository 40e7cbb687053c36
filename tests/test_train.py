"""The training entry point: learning happens, results.json, checkpoints, CLI overrides, predict."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch

from conftest import CodePayload, compose_config, tiny_overrides
from stacked_rnn import predict, train
from stacked_rnn.checkpoint import load
from stacked_rnn.tasks.imdb import IMDBDataModule
from stacked_rnn.model import CELLS, StackedRNNClassifier


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


def test_param_budget_chooses_the_units_and_results_record_them_with_the_epochs(tiny_archive, tmp_path):
    results, run_dir = run_tiny(tiny_archive, tmp_path, "model.param_budget=2e3", "model.layers=3", "model.embed_dim=8",
                                "trainer.max_epochs=6", "callbacks=early_stopping", "callbacks.early_stopping.patience=1")
    # by hand, gru x 3 with 8-d inputs: 3(8u + u^2 + 2u) + 2 x 3(2u^2 + 2u) + (u + 1) = 15u^2 + 43u + 1:
    # u = 10 gives 1,931, u = 11 gives 2,289, so 2,000 picks 10
    assert results["units"] == 10 and results["config"]["model"]["units"] == 10 and results["param_budget"] == 2000
    assert results["stack_params"] == 1931
    model, _ = load(Path(results["best_checkpoint"]))
    assert model.hparams.units == 10 and model.num_params - model.embedding.weight.numel() == 1931
    accs = [h["val/acc"] for h in results["history"]]
    assert results["epochs"] == len(accs) and results["best_epoch"] == accs.index(max(accs)) + 1
    assert f"best-epoch{results['best_epoch'] - 1:02d}-" in results["best_checkpoint"]  # Lightning counts from 0


def test_best_imdb_experiment_trains_with_adamw_and_early_stopping(tiny_archive, tmp_path):
    results, _ = run_tiny(tiny_archive, tmp_path, "experiment=best_imdb", "trainer.max_epochs=6", "model.lr=3e-2")
    config = results["config"]
    assert config["model"]["weight_decay"] == 0.01 and config["model"]["pool"] == "last"
    assert config["callbacks"]["early_stopping"]["monitor"] == "val/acc"
    assert config["data"]["vocab_size"] == 100  # command-line overrides still win over the experiment
    assert results["test_acc"] > 0.8


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
    assert all(v is None or isinstance(v, (int, float, str, bool)) for v in hparams.values())
    assert hparams["param_budget"] is None and hparams["units"] == 16
    state = checkpoint["IMDBDataModule"]
    assert state["vocab"][:2] == ["<pad>", "<unk>"] and state["max_len"] == 32


@pytest.mark.parametrize("override, message", [
    ("model.cell=transformer", "model.cell='transformer' is not allowed: expected one of ('rnn', 'lstm', 'gru', 'mingru', 'minlstm')"),
    ("model.layers=0", "model.layers=0 is not allowed: expected an integer >= 1"),
    ("model.layers=true", "model.layers=True is not allowed: expected an integer >= 1"),
    ("model.units=0", "model.units=0 is not allowed: expected an integer >= 1"),
    ("model.dropout=1.0", "model.dropout=1.0 is not allowed: expected a number in [0, 1)"),
    ("model.dropout=-0.1", "model.dropout=-0.1 is not allowed: expected a number in [0, 1)"),
    ("model.lr=-0.001", "model.lr=-0.001 is not allowed: expected a number > 0"),
    ("model.lr=fast", "model.lr='fast' is not allowed: expected a number > 0"),
    ("model.pool=attention", "model.pool='attention' is not allowed: expected one of ('last', 'mean', 'max')"),
    ("data.max_len=0", "data.max_len=0 is not allowed: expected an integer >= 1"),
    ("data.vocab_size=2", "data.vocab_size=2 is not allowed: expected an integer >= 3 (<pad>, <unk> and at least"),
    ("data.val_size=0", "data.val_size=0 is not allowed: expected a fraction in (0, 1) or a count >= 1"),
    ("data.val_size=1.5", "data.val_size=1.5 is not allowed: expected a fraction in (0, 1) or a count >= 1"),
    ("data.val_split=shuffle", "data.val_split='shuffle' is not allowed: expected one of ('movie', 'random')"),
    ("data.limit=1", "data.limit=1 is not allowed: expected null or an integer >= 2"),
    ("trainer.max_epochs=0", "trainer.max_epochs=0 is not allowed: expected an integer >= 1 (or -1 for no limit)"),
    ("+trainer.colour=blue", "cannot build the trainer from trainer.*: Error in call to target"),
    ("model.param_budget=50", "model.param_budget=50 is too small: gru x 2 layers with 128-d inputs needs 407 "
                              "parameters at units=1"),
    ("model.param_budget=lots", "model.param_budget='lots' is not allowed: expected null or a whole number of "
                                "parameters >= 1"),
    ("model.param_budget=1.5", "model.param_budget=1.5 is not allowed: expected null or a whole number"),
])
def test_bad_config_values_are_named_before_any_data_work(tmp_path, monkeypatch, override, message):
    monkeypatch.setattr(IMDBDataModule, "prepare_data", lambda self: pytest.fail("validation must come first"))
    cfg = compose_config([f"output_dir={tmp_path}", "data.archive=/nowhere/aclImdb.tar.gz", override])
    with pytest.raises(train.ConfigError) as err:
        train.run(cfg)
    assert str(err.value).startswith(message)


def test_dropout_with_one_layer_warns_once(tmp_path):
    cfg = compose_config([f"output_dir={tmp_path}", "model.layers=1", "model.dropout=0.3"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train.check_config(cfg)
        StackedRNNClassifier(50, layers=1, dropout=0.3)  # torch's own nn.RNN warning would make it twice
    assert [str(w.message) for w in caught] == [
        "model.dropout=0.3 has no effect with model.layers=1: PyTorch applies it only between stacked layers "
        "(use model.head_dropout or model.embed_dropout instead)"]


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

    one = cli("-m", "stacked_rnn.predict", f"ckpt={saved['best_checkpoint']}", "text=great superb loved wonderful",
              cwd=tmp_path)
    assert one.returncode == 0 and float(one.stdout.split("\t")[0]) > 0.5


@pytest.mark.parametrize("override, code, message", [
    ("model.layers=0", 2, "error: model.layers=0 is not allowed: expected an integer >= 1\n"),
    ("model.cels=gru", 1, "Could not override 'model.cels'.\nTo append to your config use +model.cels=gru\n"
                          "Key 'cels' is not in struct"),
    ("data.archive=/nowhere/aclImdb.tar.gz", 2, "error: data.archive=/nowhere/aclImdb.tar.gz does not exist. Provide "
     "IMDB yourself with data.archive=PATH/TO/aclImdb_v1.tar.gz (any .tar.gz in the aclImdb/ layout) or data.root=DIR"),
    ("model.param_budget=20000 model.units=64", 2, "error: model.param_budget=20000 and model.units=64 were both set: "
     "the budget chooses the units of each depth, so set one of them"),
])
def test_cli_mistakes_exit_nonzero_with_a_message_not_a_traceback(tmp_path, override, code, message):
    done = cli("-m", "stacked_rnn.train", *override.split(), f"hydra.run.dir={tmp_path}/run",
               f"data.cache_dir={tmp_path}", cwd=tmp_path)
    assert done.returncode == code
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_predict_handles_empty_long_and_non_ascii_text(tiny_archive, tmp_path, capsys):
    results, _ = run_tiny(tiny_archive, tmp_path, "trainer.max_epochs=1", "test_after_fit=false")
    model, data_state = load(Path(results["best_checkpoint"]))
    texts = ["", "great " * 200_000, "Très bien, génial — 素晴らしい 😀", "\x00\ufffd\u200b"]
    probs = predict.predict(model, data_state, texts)
    assert len(probs) == 4 and all(0.0 <= p <= 1.0 for p in probs)  # finite probabilities, no crash
    assert predict.main([f"ckpt={results['best_checkpoint']}", "text="]) == 0
    assert capsys.readouterr().out.count("\t") == 1  # one line for the empty text


def test_predict_errors_are_clear(tiny_archive, tmp_path, capsys):
    def error(*argv):
        assert predict.main(list(argv)) == 2
        return capsys.readouterr().err

    assert f"error: ckpt={tmp_path}/missing.ckpt does not exist (give a .ckpt file or a run folder)" in \
        error(f"ckpt={tmp_path}/missing.ckpt", "text=hi")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    assert f"error: cannot read checkpoint {tmp_path}/junk.ckpt:" in error(f"ckpt={tmp_path}/junk.ckpt", "text=hi")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.ckpt")
    assert "other.ckpt is not a stacked_rnn checkpoint" in error(f"ckpt={tmp_path}/other.ckpt", "text=hi")
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {}, "x": CodePayload(marker)}, tmp_path / "evil.ckpt")
    assert "cannot read checkpoint" in error(f"ckpt={tmp_path}/evil.ckpt", "text=hi") and not marker.exists()
    assert "ckpt= is required" in error("text=hi")
    assert "unknown argument 'colour=blue'" in error("ckpt=x", "colour=blue")

    results, _ = run_tiny(tiny_archive, tmp_path, "trainer.max_epochs=1", "test_after_fit=false")
    checkpoint = torch.load(results["best_checkpoint"], weights_only=True)
    checkpoint["hyper_parameters"]["layers"] = 3  # weights of a 2-layer model
    torch.save(checkpoint, tmp_path / "mismatch.ckpt")
    assert "does not fit this version of StackedRNNClassifier" in error(f"ckpt={tmp_path}/mismatch.ckpt", "text=hi")


def test_gpu_trainer_is_32_true_and_auto_resolves_to_32_true(tmp_path):
    """trainer=gpu trains in float32 (TF32 matmuls): under bf16 autocast cuDNN ran the RNN in float16 with no loss
    scaling, and 32-true was faster (measured on an H200, docs/performance.md#gpu)."""
    cfg = compose_config(["output_dir=/tmp/x", "trainer.accelerator=cpu"])
    assert not train.uses_cuda(cfg)
    cfg = compose_config(["output_dir=/tmp/x", "trainer=gpu"])
    assert train.uses_cuda(cfg) and cfg.trainer.precision == "32-true"
    cfg = compose_config([f"output_dir={tmp_path}", "trainer.accelerator=cpu", "logger=csv"])
    assert cfg.trainer.precision == "auto" and train.build_trainer(cfg, tmp_path).precision == "32-true"


def test_mixed_precision_with_clipping_trains_with_an_unfused_adam(tiny_archive, tmp_path):
    """Mixed precision with gradient clipping (trainer.precision=bf16-mixed, as trainer=gpu was before the H200
    check): Lightning's AMP plugin refuses to clip for a fused Adam (RuntimeError at the first step), so the model
    must pick foreach there. bf16-mixed runs on the CPU too, so that path is checked here; 32-true keeps fused."""
    results, _ = run_tiny(tiny_archive, tmp_path / "amp", "trainer.max_epochs=1", "trainer.precision=bf16-mixed")
    assert results["status"] == "ok" and 0 <= results["test_acc"] <= 1
    model = StackedRNNClassifier(50, layers=2, units=8, lr_schedule="constant")
    for precision, fused in (("bf16-mixed", False), ("32-true", True)):
        model.trainer = L.Trainer(precision=precision, gradient_clip_val=1.0, accelerator="cpu", logger=False)
        assert model.configure_optimizers().defaults["fused"] is fused, precision


def test_train_metrics_reach_tensorboard_every_n_steps_and_per_epoch(tiny_archive, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    results, run_dir = run_tiny(tiny_archive, tmp_path, "trainer.log_every_n_steps=3", "model.lr=1e-2")
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0}).Reload()
    steps_per_epoch = -(-100 // 8)  # 100 training reviews in batches of 8
    logged = [e.step for e in events.Scalars("train/loss")]
    assert logged and all((step + 1) % 3 == 0 for step in logged)  # Lightning's own logging cadence
    assert len(logged) == (2 * steps_per_epoch) // 3
    for tag in ("train/loss_epoch", "train/acc", "val/acc"):
        assert len(events.Scalars(tag)) == 2, tag  # one value per epoch
    accuracies = [e.value for e in events.Scalars("train/acc")]
    assert all(0 <= a <= 1 for a in accuracies) and accuracies[1] > 0.5  # the tiny task is being learned
