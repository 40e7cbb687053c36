"""docs/python_api.md runs as written: its python blocks, in order, on a tiny generated archive (only the first
block, the settings, is replaced), so the documented notebook API cannot drift from the code."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from stacked_rnn.tasks.imdb_corpus import tokenise
from stacked_rnn.model import StackedRNNClassifier

PAGE = Path(__file__).resolve().parent.parent / "docs" / "python_api.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)


def test_python_api_page_runs_as_written(tiny_archive, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything the page writes lands here
    settings, *blocks = python_blocks(PAGE.read_text())
    documented: dict = {}
    exec(settings, documented)
    tiny = dict(ARCHIVE=str(tiny_archive), RUN_DIR=str(tmp_path / "notebook"), EPOCHS=2,
                DATA=dict(val_size=20, batch_size=8, vocab_size=100, max_len=32, cache_dir=str(tmp_path / "cache")),
                MODEL=dict(cell="gru", layers=2, units=16, embed_dim=16, lr=1e-2))
    assert {k for k in documented if not k.startswith("__")} == set(tiny), "the settings block names what the test sets"

    page: dict = dict(tiny)
    for i, block in enumerate(blocks, start=2):
        exec(compile(block, f"{PAGE.name}, python block {i}", "exec"), page)

    assert Path(page["best"].best_model_path).is_file()
    assert isinstance(page["model"], StackedRNNClassifier) and page["model"].hparams.units == 16  # the reloaded one
    assert 0.5 < page["tested"][0]["test/acc"] <= 1  # the tiny task is learnable
    probs = page["probs"]
    assert len(probs) == 2 and all(0 <= p <= 1 for p in probs)
    model = page["model"].train()  # dropout on: predict must still switch it off, and leave the mode as it was
    assert page["predict"](model, page["data_state"], ["A moving, wonderful film.",
                                                       "A waste of time, and far too long."]) == probs
    assert model.training
    assert page["data_state"] == page["dm"].state_dict()
    assert len(page["flow"].history) == tiny["EPOCHS"] and (tmp_path / "notebook" / "grad_flow.png").exists()
    assert tuple(page["grid"].shape) == (2, len(tokenise(page["text"])))
    scales, final = page["scales"], page["final"]  # (layers 0-2) x (w=1, 4, 16, doc)
    assert scales["layers"] == ["embeddings", "layer 1", "layer 2"]
    assert scales["columns"] == ["w=1", "w=4", "w=16", "doc"]
    assert np.asarray(scales["trained"]).shape == np.asarray(scales["control"]).shape == (3, 4)
    assert all(0 <= a <= 1 for a in final["accuracy"] + final["control"])
    assert page["own_model"].embedding.num_embeddings == len(page["my_vocab"]) and page["own_model"].trainer.global_step
    assert page["cli_dm"].max_len == 512 and page["cli_model"].hparams.cell == "lstm"
    assert not (tmp_path / "outputs").exists(), "the page writes only into RUN_DIR"
