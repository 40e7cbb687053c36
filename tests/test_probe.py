"""Layer-wise probes: the targets, the training-only lexicon, a planted layer x scale found, the control is the run's
start, the files a run's probe and a sweep's summary write, and the named errors."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from scipy import stats

from conftest import compose_config, tiny_overrides
from stacked_rnn import probe, probe_targets, train
from stacked_rnn.model import StackedRNNClassifier
from stacked_rnn.probe_targets import StepTargets, window_targets
from stacked_rnn.tasks.batches import ReviewDataset

RUN_SEED = 3


@pytest.fixture(scope="module")
def tiny_run(tiny_archive, tmp_path_factory):
    """A 3-layer GRU trained on the tiny archive with probe_after_fit=true; its weights at on_fit_start in start.pt."""
    tmp = tmp_path_factory.mktemp("probe")
    run_dir = tmp / "run"
    train.run(compose_config(tiny_overrides(
        tiny_archive, tmp / "cache", run_dir, "model.layers=3", "trainer.max_epochs=4", "model.lr=1e-2",
        f"seed={RUN_SEED}", "probe_after_fit=true", "+callbacks.start._target_=conftest.SaveStart",
        f"+callbacks.start.path={tmp / 'start.pt'}")))
    return run_dir


def test_window_means_match_hand_computed_means_at_the_start_and_with_padding():
    polarity = np.array([[1.0, 2.0, 3.0, 4.0, 99.0], [-2.0, 6.0, 99.0, 99.0, 99.0]])  # 99: padding, never counted
    means = probe_targets.window_means(polarity, np.array([4, 2]), scales=(1, 2, 3))  # (B, T, S)
    expected_first = [[1, 1, 1], [2, 1.5, 1.5], [3, 2.5, 2], [4, 3.5, 3]]  # fewer than w tokens: the mean so far
    np.testing.assert_allclose(means[0, :4], expected_first)
    np.testing.assert_allclose(means[1, :2], [[-2, -2, -2], [6, 2, 2]])
    assert np.isnan(means[0, 4]).all() and np.isnan(means[1, 2:]).all()  # padded steps have no target


def test_lexicon_reads_training_reviews_only():
    # ids: 0 <pad>, 1 <unk>, 2 only in positive reviews, 3 only in negative ones, 4 in both, 5 in no training review
    train_set = ReviewDataset([np.array([2, 2, 4]), np.array([2, 1]), np.array([3, 4]), np.array([3, 3, 1])],
                              np.array([1, 1, 0, 0]))
    r = probe_targets.polarity_lexicon(train_set, num_tokens=6)
    p, q = 1 + np.array([1, 2, 0, 1, 0]), 1 + np.array([1, 0, 2, 1, 0])  # binarised counts of ids 1..5, alpha = 1
    np.testing.assert_allclose(r[1:], np.log(p / p.sum()) - np.log(q / q.sum()))
    assert r[0] == 0 and r[2] > 0 > r[3] and r[4] == pytest.approx(0) and r[1] == pytest.approx(0)
    assert r[5] == pytest.approx(math.log(q.sum() / p.sum()))  # the prior: no training review holds it
    # a word only the test reviews hold cannot move the lexicon, whatever their labels: the function never sees them
    test_set = ReviewDataset([np.array([5, 5, 5])], np.array([1]))
    probe_input = probe.Sample(test_set, window_targets(test_set, r, (1,)), 10, 3, np.random.default_rng(0))
    np.testing.assert_allclose(probe_input.targets[:, 0], r[5])


def test_sampled_steps_are_real_distinct_and_seeded():
    lengths = [3, 12, 1, 40]
    dataset = ReviewDataset([np.arange(2, 2 + n) for n in lengths], np.array([0, 1, 0, 1]))
    sample = probe.Sample(dataset, window_targets(dataset, np.zeros(50), (1, 4)), max_reviews=10, steps_per_review=8,
                          rng=np.random.default_rng(5))
    for row, n in enumerate(lengths):
        steps = sample.step[sample.review == row]
        assert len(steps) == min(8, n) and len(set(steps)) == len(steps) and steps.max() < n
    again = probe.Sample(dataset, window_targets(dataset, np.zeros(50), (1, 4)), 10, 8, np.random.default_rng(5))
    np.testing.assert_array_equal(again.step, sample.step)


def test_a_bidirectional_layer_is_read_forward_at_each_step_and_whole_at_the_end():
    model = StackedRNNClassifier(num_tokens=20, cell="lstm", layers=2, units=4, embed_dim=3, bidirectional=True).eval()
    dataset = ReviewDataset([np.array([2, 5, 7, 9, 3]), np.array([4, 4, 8])], np.array([1, 0]))
    sample = probe.Sample(dataset, window_targets(dataset, np.zeros(20), (1,)), max_reviews=2, steps_per_review=2,
                          rng=np.random.default_rng(1))
    steps, finals = probe.extract(model, sample, layers=[0, 2])
    assert steps[0].shape == (4, 3) and steps[1].shape == (4, 4) and finals[1].shape == (2, 8)
    for i, (row, t) in enumerate(zip(sample.review, sample.step)):
        ids = torch.from_numpy(sample.ids[row])[None]
        top = probe.layer_outputs(model, ids, torch.tensor([ids.shape[1]]))[-1]  # (1, T, 2 * 4)
        np.testing.assert_allclose(steps[1][i], top[0, t, :4].numpy(), atol=1e-6)  # the forward half
        np.testing.assert_allclose(finals[1][row], model.last_state(top, torch.tensor([ids.shape[1]]))[0].numpy(),
                                   atol=1e-6)
        np.testing.assert_allclose(steps[0][i], model.embedding(ids)[0, t].detach().numpy())


def running_means(polarity: torch.Tensor, scale: int) -> torch.Tensor:
    """(B, T) -> (B, T): the mean of the last `scale` values at every step, by a plain loop."""
    return torch.stack([polarity[:, max(0, t - scale + 1) : t + 1].mean(1) for t in range(polarity.shape[1])], 1)


def test_the_planted_layer_and_scale_are_found(monkeypatch):
    """A stand-in trained model whose layer 1 holds the current word's polarity (scale 1) and layer 2 the mean over
    the last 16 words; everything else, and the control, is noise."""
    rng = np.random.default_rng(0)
    words = rng.normal(size=39)
    lexicon = np.concatenate([[0.0], words - words.mean()])  # centred: about as many positive reviews as negative
    reviews = [rng.integers(1, 40, size=rng.integers(60, 200)) for _ in range(240)]
    labels = np.array([int(lexicon[ids].mean() > 0) for ids in reviews])
    train_set, test_set = ReviewDataset(reviews[:120], labels[:120]), ReviewDataset(reviews[120:], labels[120:])
    trained = StackedRNNClassifier(num_tokens=40, layers=2, units=6, embed_dim=6)
    control = StackedRNNClassifier(num_tokens=40, layers=2, units=6, embed_dim=6)
    noise = torch.Generator().manual_seed(0)

    def planted(model, ids, lengths):
        states = [torch.randn(*ids.shape, 6, generator=noise) for _ in range(3)]  # (B, T, 6) each
        if model is trained:
            polarity = torch.from_numpy(lexicon[ids.numpy()]).float()  # (B, T); padding comes after the real steps
            states[1][..., 0], states[2][..., 0] = running_means(polarity, 1), running_means(polarity, 16)
        return states

    monkeypatch.setattr(probe, "layer_sequences", planted)
    targets = StepTargets.from_lexicon(lexicon, {"train": train_set, "test": test_set}, scales=(1, 4, 16, 64))
    result, final = probe.probe_model(trained, control, train_set, test_set, targets, steps_per_review=8,
                                      max_reviews=200)
    scores, columns = np.asarray(result["trained"]), result["columns"]
    assert result["layers"] == ["embeddings", "layer 1", "layer 2"] and columns == ["w=1", "w=4", "w=16", "w=64", "doc"]
    assert scores[1, 0] > 0.95 and scores[2, 2] > 0.95  # the planted cells
    best = result["best_layer"]["by_difference"]
    assert (best["w=1"], best["w=16"], best["w=64"]) == ("layer 1", "layer 2", "layer 2")
    assert scores[1, :4].argmax() == 0 and scores[2, :4].argmax() == 2  # each layer knows its own scale best
    off = scores[:, :4].copy()
    off[1, 0] = off[2, 2] = np.nan
    # elsewhere lower (nested windows share tokens: 16 of the last 64, all of them early in a review); noise: nothing
    assert np.nanmax(off) < 0.85 and scores[0, :4].max() < 0.05
    control_scores = np.asarray(result["control"])
    assert control_scores[:, :4].max() < 0.05 and control_scores[:, 4].max() < 0.65  # noise: R^2 ~ 0, accuracy ~ 0.5
    np.testing.assert_allclose(result["difference"], scores - np.asarray(result["control"]))
    assert len(final["accuracy"]) == 3 and len(final["control"]) == 3


def test_the_control_is_the_untrained_start_of_the_run(tiny_run):
    start = torch.load(tiny_run.parent / "start.pt")
    model, _ = probe.load(probe.find_checkpoint(str(tiny_run)))
    control = probe.initial_model(dict(model.hparams), RUN_SEED)
    for name, weights in control.state_dict().items():
        torch.testing.assert_close(weights, start[name], rtol=0, atol=0, msg=name)
    assert not torch.equal(model.state_dict()["rnn.weight_hh_l0"], start["rnn.weight_hh_l0"])  # training moved it
    assert not torch.equal(probe.initial_model(dict(model.hparams), RUN_SEED + 1).state_dict()["rnn.weight_hh_l0"],
                           start["rnn.weight_hh_l0"])  # another seed is another start


def test_probe_after_fit_writes_the_scale_probes_against_the_control(tiny_run):
    result = json.loads((tiny_run / "probe_scales.json").read_text())
    assert result["layers"] == ["embeddings", "layer 1", "layer 2", "layer 3"]
    assert result["columns"] == ["w=1", "w=4", "w=16", "w=64", "doc"]
    for key in ("trained", "control", "difference"):
        assert np.asarray(result[key]).shape == (4, 5), key  # (layers + 1) x (scales + 1)
    assert result["run_seed"] == RUN_SEED and result["train_reviews"] == 100  # the training split without validation
    assert result["control_model"].startswith(f"StackedRNNClassifier(**hparams) after torch.manual_seed({RUN_SEED})")
    assert result["lexicon"]["train_reviews"] == 100
    assert set(result["lexicon"]["most_positive"][:3]) <= {"great", "wonderful", "loved", "superb", "brilliant"}
    assert set(result["lexicon"]["most_negative"][:3]) <= {"awful", "boring", "hated", "terrible", "dull"}
    assert result["trained"][3][4] > 0.7 and result["difference"][3][4] > 0.1  # the top layer knows the label
    assert (tiny_run / "probe_scales.png").stat().st_size > 1000
    final = json.loads((tiny_run / "probe.json").read_text())
    assert final["layers"] == ["embeddings (mean)", "layer 1", "layer 2", "layer 3"]
    assert final["accuracy"][-1] > 0.7 and len(final["control"]) == 4
    assert (tiny_run / "probe.png").stat().st_size > 1000


@pytest.mark.parametrize("argv, message", [
    (["scales=0"], "argument --scales: '0' is not allowed: expected distinct integers >= 1"),
    (["scales=abc"], "argument --scales: 'abc' is not allowed"),
    (["scales=4,4"], "argument --scales: '4,4' is not allowed"),
    (["steps_per_review=0"], "argument --steps_per_review: '0' is not allowed: expected an integer >= 1"),
    (["layers=-1"], "argument --layers: '-1' is not allowed"),
    (["layers=4"], "layers=4: this model has no layer 4: expected layers 0 (the embeddings) to 3"),
])
def test_bad_arguments_are_named(tiny_run, argv, message, capsys):
    assert probe.main([f"ckpt={tiny_run}", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_probe_needs_one_run_or_one_sweep(tmp_path, capsys):
    assert probe.main([]) == 2
    assert "give ckpt=RUN_OR_CKPT (one run) or sweep=SWEEP_DIR" in capsys.readouterr().err
    assert probe.main(["ckpt=a", "sweep=b"]) == 2
    assert probe.main([f"ckpt={tmp_path}/missing.ckpt"]) == 2
    assert probe.main([f"sweep={tmp_path}"]) == 2
    assert "no finished text-classification job folder" in capsys.readouterr().err


def test_sweep_summary_probes_missing_jobs_and_averages_over_seeds(tiny_run, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    shutil.copytree(tiny_run, sweep / "cell=gru,seed=0", ignore=shutil.ignore_patterns("probe*"))  # to be probed
    (sweep / "cell=gru,seed=1").mkdir()  # already probed, at the same layers and scales
    (sweep / "cell=gru,seed=1" / "results.json").write_text(json.dumps({"status": "ok"}))
    other = {"layers": ["embeddings", "layer 3"], "columns": ["w=1", "w=16", "doc"], "metric": ["r2", "r2", "accuracy"],
             "trained": [[0.5, 0.1, 0.6], [0.2, 0.6, 0.9]], "control": [[0.4, 0.0, 0.55], [0.1, 0.1, 0.6]]}
    other["difference"] = (np.asarray(other["trained"]) - np.asarray(other["control"])).tolist()
    (sweep / "cell=gru,seed=1" / "probe_scales.json").write_text(json.dumps(other))
    (sweep / "cell=lstm,seed=0").mkdir()  # a failed job is left out
    (sweep / "cell=lstm,seed=0" / "results.json").write_text(json.dumps({"status": "failed"}))

    assert probe.main([f"sweep={sweep}", "jobs=cell=gru,*", "layers=3,0", "scales=16,1", "steps_per_review=2",
                       "max_reviews=40"]) == 0
    probed = json.loads((sweep / "cell=gru,seed=0" / "probe_scales.json").read_text())
    assert probed["layers"] == other["layers"] and probed["columns"] == other["columns"]
    assert probed["train_steps"] == 80 and np.asarray(probed["control"]).shape == (2, 3)
    summary = json.loads((sweep / "probe_scales_summary.json").read_text())
    [entry] = summary["configs"]
    assert entry["config"] == "cell=gru" and entry["n"] == 2 and entry["jobs"] == ["cell=gru,seed=0", "cell=gru,seed=1"]
    pair = np.asarray([probed["difference"], other["difference"]])  # (2, layers, columns)
    np.testing.assert_allclose(entry["difference"]["mean"], pair.mean(0))
    half_width = stats.t.ppf(0.975, 1) * pair.std(0, ddof=1) / math.sqrt(2)  # Student t, 1 degree of freedom
    np.testing.assert_allclose(entry["difference"]["ci95"], half_width)
    mean_trained = (np.asarray(probed["trained"]) + np.asarray(other["trained"])) / 2
    assert entry["best_layer"]["by_trained"] == {col: other["layers"][int(mean_trained[:, c].argmax())]
                                                 for c, col in enumerate(other["columns"])}
    assert (sweep / "probe_scales_cell=gru.png").stat().st_size > 1000
    assert "cell=gru (n=2): best layer by mean difference" in capsys.readouterr().out


def test_sweep_jobs_take_several_globs_joined_by_a_bar(tmp_path):
    """E.g. each configuration at its own tuned learning rate: only the matching jobs enter the summary."""
    result = {"layers": ["embeddings", "layer 1"], "columns": ["w=1", "doc"], "metric": ["r2", "accuracy"],
              "trained": [[0.5, 0.6], [0.2, 0.9]], "control": [[0.4, 0.55], [0.1, 0.6]],
              "difference": [[0.1, 0.05], [0.1, 0.3]]}
    for job in ("cell=gru,lr=0.001,seed=0", "cell=gru,lr=0.001,seed=1", "cell=gru,lr=0.003,seed=0",
                "cell=lstm,lr=0.003,seed=0", "cell=lstm,lr=0.001,seed=0"):
        (tmp_path / job).mkdir()
        (tmp_path / job / "results.json").write_text(json.dumps({"status": "ok"}))
        (tmp_path / job / "probe_scales.json").write_text(json.dumps(result))
    summary = probe.probe_sweep(str(tmp_path), jobs="cell=gru,lr=0.001,*|cell=lstm,lr=0.003,*")
    assert [(c["config"], c["n"]) for c in summary["configs"]] == [("cell=gru,lr=0.001", 2), ("cell=lstm,lr=0.003", 1)]
