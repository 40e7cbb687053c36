"""Character-level language modelling (data=text_lm, task=lm): contiguous splits and a training-only vocabulary, the
stream read with its state carried, bits per character against an independent re-computation, a run that learns and
records both measures, the report, predict, generate and the errors."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import math
import subprocess
import sys
import threading

import pytest
import torch
import torch.nn.functional as F

from conftest import compose_config
from stacked_rnn import generate, predict, train
from stacked_rnn.checkpoint import load
from stacked_rnn.model import StackedRNNClassifier, stack_params, units_for_budget
from stacked_rnn.tasks.imdb_corpus import DataError
from stacked_rnn.tasks.text_lm import UNK_ID, TextLMDataModule, stream_batches

VERSE = "the cat sat on the mat. the dog sat on the log.\n"


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "verse.txt"
    path.write_text(VERSE * 200 + "zebra!" + VERSE * 5)  # "z", "!": only in the test split, after the 90% cut
    return path


def lm_overrides(path, out, *extra):
    return ["data.corpus=file", f"data.path={path}", f"output_dir={out}", "data=text_lm", "data.window=32",
            "data.batch_size=16", "data.windows_per_epoch=320", "data.eval_rows=4", "data.eval_window=64",
            "data.nano_windows=40", "data.nano_block=16", "model.units=24", "model.embed_dim=8", "model.init=torch",
            "model.embed_dropout=0.0", "model.head_dropout=0.0", "model.dropout=0.0", "model.lr=1e-2",
            "model.lr_schedule=constant", "trainer.max_epochs=3", "trainer.accelerator=cpu",
            "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "trainer.log_every_n_steps=5",
            *extra]


def test_splits_are_contiguous_and_the_vocabulary_comes_from_training_only(text_file):
    data = TextLMDataModule(corpus="file", path=str(text_file), window=16, nano_block=16)
    data.setup()
    text = text_file.read_text()
    cut = int(len(text) * 0.9)
    sizes = data.split_sizes()
    assert sizes["train"] == cut and sizes["val"] == (len(text) - cut) // 2
    assert sum(sizes.values()) == len(text)
    assert "z" not in data.vocab and "!" not in data.vocab and data.vocab[:2] == ["<pad>", "<unk>"]
    decoded = "".join(data.vocab[i] for i in data.splits["train"].tolist())
    assert decoded == text[:cut]  # the training split is the text's beginning, character for character
    test_text = text[cut + (len(text) - cut) // 2:]
    assert data.splits["test"].eq(UNK_ID).sum() == sum(c not in data.vocab for c in test_text) > 0


def test_stream_rows_continue_across_windows_and_targets_are_the_next_character():
    ids = torch.arange(103)
    batches = stream_batches(ids, rows=4, window=10)
    rows = torch.cat([x for x, _, _ in batches], dim=1)  # (4, 25): each row reassembled from its windows
    assert rows.shape == (4, 25) and rows[1, 0] == 25 and rows[0].tolist() == list(range(25))
    targets = torch.cat([y for _, _, y in batches], dim=1)
    assert torch.equal(targets, rows + 1)
    assert [x.shape[1] for x, _, _ in batches] == [10, 10, 5]


def test_bad_values_name_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"data.corpus='wiki' is not allowed: expected one of"):
        TextLMDataModule(corpus="wiki")
    with pytest.raises(ValueError, match=r"data.train_fraction=1.0 is not allowed"):
        TextLMDataModule(train_fraction=1.0)
    with pytest.raises(DataError, match=r"data.path=.*nothing.txt does not exist"):
        TextLMDataModule(corpus="file", path=str(tmp_path / "nothing.txt")).setup()
    short = tmp_path / "short.txt"
    short.write_text("abc" * 30)
    with pytest.raises(DataError, match="the val split holds 4 characters, fewer than a window"):
        TextLMDataModule(corpus="file", path=str(short), window=16).setup()


def test_the_download_is_checked_against_its_sha256(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    (served / "input.txt").write_text(VERSE * 50)
    good = hashlib.sha256((served / "input.txt").read_bytes()).hexdigest()
    handler = functools.partial(QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)  # loopback only
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/input.txt"
    try:
        data = TextLMDataModule(url=url, sha256=good, cache_dir=str(tmp_path / "cache"), window=16, nano_block=16,
                                progress=False)
        data.setup()
        assert (tmp_path / "cache" / "downloads" / "tinyshakespeare.txt").read_text() == VERSE * 50
        bad = TextLMDataModule(url=url, sha256="0" * 64, cache_dir=str(tmp_path / "cache2"), progress=False)
        with pytest.raises(DataError, match="checksum mismatch"):
            bad.setup()
        assert not (tmp_path / "cache2" / "downloads" / "tinyshakespeare.txt").exists()
    finally:
        server.shutdown()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_the_lm_head_is_vocabulary_wide_and_the_budget_counts_it():
    model = StackedRNNClassifier(num_tokens=30, cell="lstm", layers=2, units=12, embed_dim=6, task="lm")
    logits = model(torch.randint(2, 30, (3, 7)), torch.full((3,), 7))
    assert logits.shape == (3, 7, 30)
    assert model.stack_params == stack_params("lstm", 2, 12, 6, outputs=30)  # the head: 12 x 30 + 30
    units = units_for_budget(5000, "gru", 3, 6, outputs=30)
    budgeted = StackedRNNClassifier(num_tokens=30, cell="gru", layers=3, embed_dim=6, task="lm", param_budget=5000)
    assert budgeted.hparams.units == units and abs(stack_params("gru", 3, units, 6, outputs=30) - 5000) < 300
    with pytest.raises(ValueError, match="bidirectional=True with task='lm'"):
        StackedRNNClassifier(num_tokens=30, task="lm", bidirectional=True)


@pytest.mark.parametrize("cell", ["lstm", "mingru"])
def test_carried_state_over_windows_equals_one_pass_over_the_whole_row(cell):
    torch.manual_seed(0)
    model = StackedRNNClassifier(num_tokens=20, cell=cell, layers=2, units=8, embed_dim=4, task="lm",
                                 residual=cell == "mingru", norm="layer" if cell == "mingru" else "none").eval()
    ids = torch.randint(2, 20, (3, 30))
    whole, _ = model.forward_with_state(ids)
    state, parts = None, []
    for start in range(0, 30, 7):
        logits, state = model.forward_with_state(ids[:, start : start + 7], state)
        parts.append(logits)
    assert torch.allclose(torch.cat(parts, dim=1), whole, atol=1e-5)


@pytest.fixture(scope="module")
def lm_run(text_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("lm_run")
    results = train.run(compose_config(lm_overrides(text_file, out)))
    return out, results


def test_a_run_learns_and_records_stream_bpc_and_window_nats(lm_run):
    out, results = lm_run
    assert results["metric"] == "bpc" and results["metric_mode"] == "min"
    assert json.loads((out / "results.json").read_text())["test_bpc"] == results["test_bpc"]
    history = [h["val/bpc"] for h in results["history"]]
    assert history[-1] < history[0] - 0.5  # learning happens
    assert results["best_val_bpc"] == pytest.approx(min(history), abs=1e-4)  # the best checkpoint is the lowest bpc
    assert results["test_bpc"] < 0.5 * results["chance"]  # the verse repeats: far below a uniform guess
    assert 0 < results["test_window_nats"] < results["chance"] * math.log(2)
    assert "best-epoch" in results["best_checkpoint"] and "val_bpc" in results["best_checkpoint"]


def test_stream_bpc_matches_an_independent_recomputation(lm_run, text_file):
    out, results = lm_run
    model, data_state = load(out / "checkpoints" / results["best_checkpoint"].rsplit("/", 1)[1])
    data = TextLMDataModule(corpus="file", path=str(text_file), window=32, eval_rows=4, eval_window=64,
                            nano_windows=40, nano_block=16)
    data.setup()
    ids = data.splits["test"]
    n = (len(ids) - 1) // 4 * 4
    rows, targets = ids[:n].view(4, -1), ids[1 : n + 1].view(4, -1)
    with torch.no_grad():  # each row in one pass, no windows at all
        logits = model(rows, torch.full((4,), rows.shape[1]))
    expected = F.cross_entropy(logits.flatten(0, 1), targets.flatten()).item() / math.log(2)
    assert results["test_bpc"] == pytest.approx(expected, rel=1e-4)


def test_predict_scores_bits_per_character_and_generate_is_deterministic_for_a_seed(lm_run):
    out, _ = lm_run
    model, data_state = load(next((out / "checkpoints").glob("best-*.ckpt")))
    seen, scrambled = predict.predict(model, data_state, ["the cat sat on the mat.", "mtt.a ehe ontsa the ac"])
    assert seen < scrambled  # the verse is cheaper than its letters shuffled
    assert math.isnan(predict.predict(model, data_state, ["t"])[0])
    first = generate.generate(model, data_state, "the ", length=40, seed=3)
    assert len(first) == 40 and first == generate.generate(model, data_state, "the ", length=40, seed=3)
    assert "sat on the" in generate.generate(model, data_state, "the cat ", length=80, temperature=0.3, seed=0)


def test_the_generate_cli_answers_help_reads_stdin_and_refuses_a_bad_temperature(lm_run, monkeypatch, capsys):
    out, _ = lm_run
    with pytest.raises(SystemExit) as exited:
        generate.main(["--help"])
    assert exited.value.code == 0 and "temperature" in capsys.readouterr().out
    monkeypatch.setattr(sys, "stdin", io.StringIO("the dog "))  # not a terminal: the prompt is read from it
    assert generate.main([f"ckpt={out}", "length=20", "seed=1"]) == 0
    written = capsys.readouterr().out
    assert written.startswith("the dog ") and len(written.rstrip("\n")) >= 28
    assert generate.main([f"ckpt={out}", "prompt=a", "temperature=0"]) == 2
    assert "temperature" in capsys.readouterr().err


def test_the_generate_command_runs_as_a_module(lm_run):
    out, _ = lm_run
    done = subprocess.run([sys.executable, "-m", "stacked_rnn.generate", f"ckpt={out}", "prompt=the ", "length=10"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("the ") and len(done.stdout) == len("the ") + 10 + 1


def test_a_language_model_refuses_bidirectional_before_any_work(text_file, tmp_path):
    with pytest.raises(train.ConfigError, match="model.bidirectional=true is not allowed with a language model"):
        train.run(compose_config(lm_overrides(text_file, tmp_path, "model.bidirectional=true")))
    assert not (tmp_path / "checkpoints").exists()


def test_a_budget_too_small_for_the_vocabulary_wide_head_is_a_clear_error(text_file, tmp_path):
    with pytest.raises(train.ConfigError, match=r"model.param_budget=50 is too small: gru x 2 layers"):
        train.run(compose_config(lm_overrides(text_file, tmp_path, "model.param_budget=50",
                                              "model.layers=2")))
    assert not (tmp_path / "checkpoints").exists()
