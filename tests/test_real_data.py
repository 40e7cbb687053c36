"""Real IMDB (../shared/data/aclImdb_labelled.tar.gz). Marked slow: `pytest -m slow`."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import compose_config
from stacked_rnn import train
from stacked_rnn.data import IMDBDataModule

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
