"""Selective copying and the per-step (tag) head: the data is what it claims, the head scores only the marker steps,
and a run goes through train, report, predict, diagnostics and TensorBoard with its metric by name."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import compose_config
from stacked_rnn import predict, report, train
from stacked_rnn.model import StackedRNNClassifier, stack_params
from stacked_rnn.tasks.batches import IGNORE
from stacked_rnn.tasks.selective_copy import (FIRST_DATA_ID, MARKER_ID, NOISE_ID, SelectiveCopyDataModule,
                                              collate_copies, make_selective_copy)


def test_k_data_tokens_among_noise_then_k_markers_and_the_targets_are_them_in_order():
    ids, lengths, tokens = make_selective_copy(300, 20, 5, 6, torch.Generator().manual_seed(0)).tensors
    assert ids.shape == (300, 25) and lengths.eq(25).all() and tokens.shape == (300, 5)
    assert ids[:, 20:].eq(MARKER_ID).all() and not ids[:, :20].eq(MARKER_ID).any()
    for row in range(300):  # an independent re-reading of every sequence
        data = [int(i) - FIRST_DATA_ID for i in ids[row, :20] if i != NOISE_ID]
        assert data == tokens[row].tolist()
    assert tokens.max() == 5 and tokens.min() == 0
    first = torch.tensor([next(t for t in range(20) if ids[r, t] != NOISE_ID) for r in range(300)])
    assert first.float().mean() < 6  # positions drawn uniformly: the first of 5 among 20 sits early on average


def test_targets_are_ignored_everywhere_but_at_the_markers():
    ids, lengths, targets = collate_copies([make_selective_copy(4, 10, 3, 4, torch.Generator().manual_seed(1))[i]
                                            for i in range(4)])
    assert ids.dtype == targets.dtype == torch.int64 and targets.shape == (4, 13)
    assert targets[:, :10].eq(IGNORE).all() and targets[:, 10:].ge(0).all()


def test_bad_sizes_name_the_key_and_what_is_allowed():
    with pytest.raises(ValueError, match=r"data.num_tokens_to_copy=9 is not allowed: expected an integer from 1 to "
                                         r"data.length=8"):
        SelectiveCopyDataModule(length=8, num_tokens_to_copy=9)
    with pytest.raises(ValueError, match="data.train_size=0 is not allowed"):
        SelectiveCopyDataModule(train_size=0)


def test_the_cli_refuses_k_larger_than_t_before_any_work(tmp_path):
    done = subprocess.run([sys.executable, "-m", "stacked_rnn.train", "data=selective_copy", "data.length=4",
                           "data.num_tokens_to_copy=16", f"hydra.run.dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "data.num_tokens_to_copy=16 is not allowed" in done.stderr
    assert not (tmp_path / "run" / "results.json").exists() and not (tmp_path / "run" / "checkpoints").exists()


def test_the_tag_head_scores_only_the_marker_steps_and_counts_its_parameters():
    model = StackedRNNClassifier(num_tokens=8, cell="mingru", layers=2, units=6, embed_dim=5, task="tag",
                                 num_classes=4, norm="layer", residual=True)
    ids = torch.randint(1, 8, (3, 9))
    logits = model(ids, torch.full((3,), 9))
    assert logits.shape == (3, 9, 4)
    targets = torch.full((3, 9), IGNORE)
    targets[:, -2:] = torch.randint(0, 4, (3, 2))
    expected = torch.nn.functional.cross_entropy(logits[:, -2:].reshape(-1, 4), targets[:, -2:].reshape(-1))
    torch.testing.assert_close(model.loss(logits, targets), expected)
    hits, scored = model.hits(logits, targets)
    assert scored == 6 and hits == (logits[:, -2:].argmax(-1) == targets[:, -2:]).sum()
    assert model.stack_params == stack_params("mingru", 2, 6, 5, outputs=4, norm="layer")


def copy_overrides(tmp_path, *extra) -> list[str]:
    return [f"output_dir={tmp_path}", "data=selective_copy", "data.length=12", "data.num_tokens_to_copy=2",
            "data.data_tokens=3", "data.train_size=1280", "data.val_size=64", "data.test_size=64",
            "model.cell=mingru", "model.layers=2", "model.units=24", "model.embed_dim=16", "model.lr=1e-2",
            "model.dropout=0.0", "model.embed_dropout=0.0", "model.head_dropout=0.0", "trainer.max_epochs=3",
            "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
            *extra]


def test_a_copy_run_learns_and_records_token_accuracy_and_exact_match(tmp_path):
    results = train.run(compose_config(copy_overrides(tmp_path)))
    print(f"token_acc {results['test_token_acc']:.3f}, exact_match {results['test_exact_match']:.3f}")
    assert results["metric"] == "token_acc" and results["metric_mode"] == "max"
    assert results["chance"] == pytest.approx(1 / 3)
    assert results["test_token_acc"] > 0.45  # above guessing (1/3) after 60 steps with K=2 among T=12 (0.55 here)
    assert 0 <= results["test_exact_match"] <= results["test_token_acc"]
    assert "val/token_acc" in results["history"][-1] and "val/exact_match" in results["history"][-1]
    assert results["best_epoch"] is not None
    # TensorBoard's HPARAMS tab holds the metric by its name
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for events in tmp_path.rglob("events.out.tfevents.*"):
        tags |= set(EventAccumulator(str(events)).Reload().Tags()["scalars"])
    assert {"hp/test_token_acc", "hp/best_val_token_acc", "val/exact_match"} <= tags
    # predict names the class at each step of a line of text; the markers are where the copies come out
    ckpt = results["best_checkpoint"]
    model, data_state = predict.load(predict.find_checkpoint(ckpt))
    [named] = predict.predict(model, data_state, [". a . . c . . . . . . . ? ?"])
    assert len(named) == 14 and set(named) <= {"a", "b", "c"}


def test_the_report_of_a_copy_sweep_names_token_accuracy(tmp_path):
    for name, layers, seed, score in (("layers=1,seed=0", 1, 0, 0.40), ("layers=1,seed=1", 1, 1, 0.42),
                                      ("layers=2,seed=0", 2, 0, 0.90), ("layers=2,seed=1", 2, 1, 0.94)):
        job = tmp_path / name
        job.mkdir()
        (job / "results.json").write_text(json.dumps({
            "status": "ok", "metric": "token_acc", "metric_mode": "max", "chance": 0.125, "test_token_acc": score,
            "best_val_token_acc": score, "num_params": 10,
            "config": {"seed": seed, "model": {"cell": "mingru", "layers": layers, "units": 8}}}))
    report.write_report(tmp_path, tensorboard=False)
    text = (tmp_path / "report.md").read_text()
    assert "test token_acc" in text and "2 layers better" in text
    assert "best_val_token_acc" in (tmp_path / "report.csv").read_text().splitlines()[0]
