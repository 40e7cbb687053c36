"""data=synthetic_reviews through the package's tools: a run with every cell, its probes against the exact per-step
targets (and the untrained control), predict on a line of generated text, the depth x time grid, and a clear error
for a bad level on the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import compose_config
from stacked_rnn import diagnostics, predict, probe, train


def hierarchy_overrides(tmp_path, *extra) -> list[str]:
    return [f"output_dir={tmp_path}", "data=synthetic_reviews", "data.levels=2", "data.train_size=400",
            "data.val_size=100", "data.test_size=200", "model.layers=2", "model.units=12", "model.embed_dim=12",
            "model.lr=1e-2", "trainer.max_epochs=2", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false", *extra]


@pytest.fixture(scope="module")
def mingru_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("hierarchy")
    # embeddings wider than the 55-token vocabulary: every token's vector is linearly independent of the others
    results = train.run(compose_config(hierarchy_overrides(out, "model.cell=mingru", "model.param_budget=3000",
                                                           "model.embed_dim=64")))
    return out, results


def test_a_minimal_cell_trains_on_the_hierarchy_at_a_parameter_budget(mingru_run):
    out, results = mingru_run
    assert results["status"] == "ok" and results["metric"] == "acc" and results["chance"] == 0.5
    assert abs(results["stack_params"] - 3000) < 120 and results["units"] != 12  # the budget chose the width
    norms = json.loads((out / "grad_flow.json").read_text())[-1]["norms"]  # per layer: input weights, no weight_hh
    assert set(norms) == {"weight_ih_l0", "weight_ih_l1"} and all(v > 0 for v in norms.values())


def test_probes_read_the_exact_word_phrase_sentence_and_document_targets(mingru_run):
    out, _ = mingru_run
    result, final = probe.run_probe(str(out), max_reviews=60, steps_per_review=4)
    assert result["columns"] == ["word", "phrase", "sentence", "document", "doc"]
    assert result["layers"] == ["embeddings", "layer 1", "layer 2"] and len(final["accuracy"]) == 3
    trained, control = np.asarray(result["trained"]), np.asarray(result["control"])
    assert trained.shape == control.shape == (3, 5) and "lexicon" not in result
    # independent embeddings hold each token's polarity exactly, trained or not: the targets sit on their own steps
    assert trained[0, 0] > 0.9 and control[0, 0] > 0.9  # 0.999 and 0.96 here; misaligned targets give ~0
    assert set(result["best_layer"]["by_difference"]) == set(result["columns"])
    assert (out / "probe_scales.png").is_file() and (out / "probe.json").is_file()


def test_predict_and_the_grid_read_a_line_of_generated_text(mingru_run, capsys):
    out, _ = mingru_run
    model, data_state = predict.load(predict.find_checkpoint(str(out)))
    assert data_state["tokenizer"] == "whitespace"
    [good, bad] = predict.predict(model, data_state, ["very great acting , superb plot .", "not great acting ."])
    assert 0 <= good <= 1 and 0 <= bad <= 1
    png = out / "grid.png"
    assert diagnostics.grid_main([f"ckpt={out}", "text=not great acting , but superb plot .", f"out={png}"]) == 0
    assert png.is_file() and "8 tokens x 2 layers" in capsys.readouterr().out


def test_a_bad_level_on_the_command_line_is_named_before_any_work(tmp_path):
    done = subprocess.run([sys.executable, "-m", "stacked_rnn.train", "data=synthetic_reviews", "data.levels=5",
                           f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "data.levels=5 is not allowed: expected 1, 2, 3 or 4" in done.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
