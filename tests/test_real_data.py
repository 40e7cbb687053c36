"""Real IMDB (../shared/data/aclImdb_labelled.tar.gz). Marked slow: `pytest -m slow`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import compose_config
from stacked_rnn import train
from stacked_rnn.tasks.imdb import IMDBDataModule

ARCHIVE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "aclImdb_labelled.tar.gz"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not ARCHIVE.exists(), reason=f"real IMDB archive not found at {ARCHIVE}"),
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("imdb-cache")


def test_real_splits_and_vocabulary(cache):
    dm = IMDBDataModule(archive=str(ARCHIVE), cache_dir=str(cache), progress=False)
    dm.prepare_data()
    dm.setup()
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 22500, "val": 2500, "test": 25000}
    assert dm.val_split_used == "movie" and len(dm.val_names) == 2500  # the real archive has the urls files
    assert len(dm.vocab) == 20000
    for split in ("train", "val", "test"):
        assert dm.datasets[split].labels.mean() == 0.5


def test_seed_keras_learns_on_every_seed(cache, tmp_path):
    """The 5-unit reference learns on every seed: well above chance (0.5) with a margin that holds on any machine
    (floats differ between hosts and move one seed by several points; over 48 seeds here the lowest was 0.80,
    sd 0.007). Its distribution against Keras's is measured by benchmarks/seed_fidelity.py, not asserted here."""
    accuracies = []
    for seed in (0, 1, 2):
        cfg = compose_config([f"data.archive={ARCHIVE}", f"data.cache_dir={cache}", f"output_dir={tmp_path / str(seed)}",
                              "experiment=seed_keras", f"seed={seed}", "trainer.accelerator=cpu",
                              "trainer.enable_progress_bar=false"])
        accuracies.append(train.run(cfg)["test_acc"])
    assert min(accuracies) > 0.72 and sum(accuracies) / 3 > 0.78, accuracies


def test_probe_after_fit_on_real_reviews(cache, tmp_path):
    """The docs' smoke run (diagnostics.md section 6): a small GRU on 2,000 real reviews, probed after training. Its
    lexicon ranks real sentiment words first, and its states hold more than the untrained control's."""
    run_dir = tmp_path / "run"
    train.run(compose_config([f"data.archive={ARCHIVE}", f"data.cache_dir={cache}", f"output_dir={run_dir}",
                              "data.limit=2000", "data.max_len=200", "data.vocab_size=10000", "model.units=32",
                              "model.embed_dim=32", "trainer.max_epochs=2", "model.layers=2", "probe_after_fit=true",
                              "trainer.accelerator=cpu", "trainer.enable_progress_bar=false"]))
    result = json.loads((run_dir / "probe_scales.json").read_text())
    assert np.asarray(result["difference"]).shape == (3, 5) and result["test_steps"] == 16000
    assert {"excellent", "superb"} & set(result["lexicon"]["most_positive"])
    assert {"worst", "waste", "awful"} & set(result["lexicon"]["most_negative"])
    assert result["difference"][0][0] > 0 and result["difference"][-1][-1] > 0  # embeddings at w=1, top layer's label
    assert (run_dir / "probe_scales.png").exists() and (run_dir / "probe.png").exists()
