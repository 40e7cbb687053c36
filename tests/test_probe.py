"""Layer-wise probes: one accuracy per layer, from the CLI, and they see what the model learned."""

from __future__ import annotations

import json

from conftest import compose_config, tiny_overrides
from stacked_rnn import probe, train


def test_probe_returns_one_accuracy_per_layer(tiny_archive, tmp_path):
    train.run(compose_config(tiny_overrides(tiny_archive, tmp_path / "cache", tmp_path / "run", "model.layers=3",
                                            "trainer.max_epochs=4", "model.lr=1e-2")))
    assert probe.main([f"ckpt={tmp_path / 'run'}", "max_reviews=100"]) == 0
    result = json.loads((tmp_path / "run" / "probe.json").read_text())
    assert result["layers"] == ["embeddings (mean)", "layer 0", "layer 1", "layer 2"]
    assert len(result["accuracy"]) == 4 and all(0 <= a <= 1 for a in result["accuracy"])
    assert result["accuracy"][-1] > 0.7  # the top layer feeds the trained head: its state separates the classes
    assert (tmp_path / "run" / "probe.png").stat().st_size > 1000


def test_probe_errors_are_named(tmp_path):
    assert probe.main([f"ckpt={tmp_path}/missing.ckpt"]) == 2
    assert probe.main(["ckpt=x", "max_reviews=lots"]) == 2


def test_probe_after_fit_flag(tiny_archive, tmp_path):
    train.run(compose_config(tiny_overrides(tiny_archive, tmp_path / "cache", tmp_path / "run", "model.layers=2",
                                            "trainer.max_epochs=1", "data.limit=40", "probe_after_fit=true")))
    result = json.loads((tmp_path / "run" / "probe.json").read_text())
    assert result["layers"] == ["embeddings (mean)", "layer 0", "layer 1"]
