"""Language-model probes (stacked_rnn.probe_lm): the word targets on a hand-made text, the file a tiny LM run's
probe writes (trained beside control, every layer x column), that the embeddings name the character at t and
not the one 4 back (the steps line up), and python -m stacked_rnn.probe's hand-over of task=lm runs."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from conftest import compose_config
from stacked_rnn import probe, probe_lm, train

WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "and"]
SMALL = dict(windows=48, test_windows=24, window=24, steps_per_window=6, lags=(0, 1, 4), top_words=5)


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    """A 2-layer LSTM trained for 4 steps on 6,000 characters of random words from a 10-word list (barely: the
    probes' assertions must hold whatever it learnt). init=torch: N(0, 1) embeddings give the control's layers
    states far from zero."""
    tmp = tmp_path_factory.mktemp("probe_lm")
    rng = random.Random(0)
    text = "".join(rng.choice(WORDS) + rng.choice([" ", " ", " ", ", ", ".\n"]) for _ in range(1500))[:6000]
    (tmp / "words.txt").write_text(text)
    train.run(compose_config([
        "data=text_lm", "data.corpus=file", f"data.path={tmp / 'words.txt'}", "data.train_fraction=0.8",
        "data.window=32", "data.batch_size=16", "data.windows_per_epoch=64", "data.eval_rows=2",
        "data.eval_window=64", "data.nano_windows=16", "data.nano_block=16", "model.cell=lstm", "model.layers=2",
        "model.units=16", "model.embed_dim=8", "model.embed_dropout=0.0", "model.head_dropout=0.0",
        "model.lr=2e-2", "model.init=torch", "trainer.max_epochs=1", "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "seed=1", f"output_dir={tmp / 'run'}"]))
    return tmp / "run"


@pytest.fixture(scope="module")
def probed(lm_run):
    return probe_lm.run_lm_probe(str(lm_run), **SMALL)


def test_word_positions_ends_and_top_words_on_a_hand_made_text():
    text = "It's a dog, 'tis a Dog; 9x '."
    vocab = ["<pad>", "<unk>"] + sorted(set(text))
    ids = np.array([vocab.index(c) for c in text])
    ids[text.index("9")] = 1  # <unk>: never a letter
    targets = probe_lm.TextTargets(ids, vocab, top_words=2)
    #               I  t  '  s  _  a  _  d  o  g  ,  _  '  t  i  s  _  a  _  D  o  g  ;  _  9  x  _  '  .
    expected_pos = [0, 1, 2, 3, -1, 0, -1, 0, 1, 2, -1, -1, 0, 1, 2, 3, -1, 0, -1, 0, 1, 2, -1, -1, -1, 0, -1, -1, -1]
    np.testing.assert_array_equal(targets.position, expected_pos)  # a lone ' is no word
    assert targets.top == ["a", "dog"]  # lower-cased counts: a x2, dog x2, then it's, 'tis, x once each
    ends = {int(t): int(targets.word[t]) for t in np.flatnonzero(targets.word >= 0)}
    assert ends == {5: 0, 9: 1, 17: 0, 21: 1}  # the last letters of a, dog, a, Dog; it's, 'tis and x are no top word
    np.testing.assert_array_equal(targets.word_start[7:10], [7, 7, 7])


def test_windows_hold_t_minus_the_longest_lag_and_the_whole_word():
    text = "ab cd efg " * 30
    vocab = ["<pad>", "<unk>"] + sorted(set(text))
    targets = probe_lm.TextTargets(np.array([vocab.index(c) for c in text]), vocab)
    sample = probe_lm.WindowSample(targets, windows=10, window=12, steps_per_window=3, min_step=4,
                                   rng=np.random.default_rng(0))
    for family in probe_lm.FAMILIES:
        assert (sample.steps[family] >= 4).all() and (sample.steps[family] < 12).all()
        per_window = np.bincount(sample.rows[family], minlength=10)
        assert per_window.max() == 3 and per_window.min() >= (3 if family != "word" else 2)  # 2 words end in 8 steps
    word_at = sample.at("word")
    assert (targets.word_start[word_at] >= sample.starts[sample.rows["word"]]).all()
    with pytest.raises(probe.UsageError, match="window=400"):
        probe_lm.WindowSample(targets, 2, 400, 3, 4, np.random.default_rng(0))


def test_probe_lm_json_reports_trained_control_and_baselines_for_every_layer(lm_run, probed):
    assert probed["layers"] == ["embeddings", "layer 1", "layer 2"]
    assert probed["columns"] == ["t-0", "t-1", "t-4", "word pos", "word"]
    for key in ("trained", "control", "difference"):
        assert np.asarray(probed[key]).shape == (3, 5)
    np.testing.assert_allclose(probed["difference"], np.subtract(probed["trained"], probed["control"]))
    assert len(probed["baselines"]["majority"]) == 5 and len(probed["top_words"]) == 5
    assert probed["samples"]["train"]["windows"] == 48 and probed["samples"]["test"]["steps"]["t-0"] == 144
    assert probed["seeds"] == {"sample": 0, "cv": 0, "control": 1} and probed["run_seed"] == 1
    assert json.loads((lm_run / "probe_lm.json").read_text())["trained"] == probed["trained"]
    assert (lm_run / "probe_lm.png").stat().st_size > 0
    assert len(list(lm_run.glob("events.out.tfevents.*"))) >= 2  # the run's events, then the probe's figure


def test_embeddings_name_the_character_at_t_and_a_recurrent_state_the_one_before(probed):
    """The steps line up: the embedding at t names the character at t, not the one 4 back; the untrained control's
    first layer has read the character before t, which the embedding at t can only guess from the word list."""
    trained, control = np.asarray(probed["trained"]), np.asarray(probed["control"])
    for scores in (trained, control):
        assert scores[0, 0] >= 0.95  # t-0 from the embedding of the character at t: every character has its own
        assert scores[0, 2] < 0.8
    assert control[1, 1] > control[0, 1] + 0.15 and control[1, 1] > probed["baselines"]["majority"][1] + 0.3


def test_probe_cli_hands_lm_runs_over_and_refuses_imdb_options(lm_run, tmp_path, monkeypatch, capsys):
    assert probe.main([f"ckpt={lm_run}", "scales=1,4"]) == 2
    assert "scales=1,4' is an option of the text-classification probes" in capsys.readouterr().err
    calls = []
    monkeypatch.setattr(probe_lm, "run_lm_probe", lambda ckpt, **kw: calls.append(kw) or {"ok": True})
    assert probe.run_probe(str(lm_run), layers=[0], out=str(tmp_path)) == {"ok": True}  # train.py's probe_after_fit
    assert calls[0]["layers"] == [0] and calls[0]["out"] == str(tmp_path)
    monkeypatch.undo()
    args = [f"ckpt={lm_run}", f"out={tmp_path}", "windows=8", "test_windows=4", "window=16", "lags=1,2",
            "top_words=3", "layers=0,2"]
    assert probe.main(args) == 0
    result = json.loads((tmp_path / "probe_lm.json").read_text())
    assert result["layers"] == ["embeddings", "layer 2"] and result["columns"] == ["t-1", "t-2", "word pos", "word"]
    assert "| majority |" in capsys.readouterr().out
