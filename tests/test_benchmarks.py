"""The benchmark scripts run end to end in their CI-sized --quick mode and print their tables.
(Their timings are not asserted: they vary with the machine.)"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_quick(script: str, *args: str) -> str:
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), "--quick", *args], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


def table_rows(output: str, first_cell: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in output.splitlines()
            if line.startswith(f"| {first_cell}")]


def test_throughput_compares_package_and_bare_loop_for_both_models():
    rows = table_rows(run_quick("throughput.py"), "")
    by_model = {r[0]: r for r in rows if r[0] in ("default", "seed")}
    assert set(by_model) == {"default", "seed"}
    for model, batches, package, bare, ratio in by_model.values():
        assert int(batches) == 10 and float(package) > 0 and float(bare) > 0 and float(ratio) > 0


def test_padding_reports_every_variant_at_both_lengths():
    rows = table_rows(run_quick("padding.py"), "")
    variants = {(r[0], r[1]) for r in rows if r[0] in ("512", "full")}
    assert variants == {(m, v) for m in ("512", "full") for v in ("bucketed", "bucketed+packed", "random", "fixed")}
    real = {(r[0], r[1]): float(r[2].rstrip("%")) for r in rows if r[0] in ("512", "full")}
    assert real[("512", "bucketed")] > real[("512", "random")]  # bucketing wastes fewer steps on padding


def test_data_prep_reports_cold_and_warm_seconds():
    out = run_quick("data_prep.py")
    cold, warm = (float(re.search(rf"{kind} .*?([\d.]+) s", out).group(1)) for kind in ("cold", "warm"))
    assert "reviews: 2,000" in out and cold > warm >= 0  # the cache is read back faster than it was built


def test_time_to_accuracy_stops_once_the_target_is_reached():
    out = run_quick("time_to_accuracy.py", "--target", "0.8")
    epochs = re.findall(r"epoch (\d+): .* test acc ([\d.]+)", out)
    assert epochs and float(epochs[-1][1]) >= 0.8 and all(float(acc) < 0.8 for _, acc in epochs[:-1])
    assert re.search(r"test accuracy [\d.]+ >= 0.8 after epoch \d+: [\d.]+ s of training", out)


def test_seed_fidelity_compares_with_a_keras_distribution(tmp_path):
    keras = tmp_path / "keras_seeds.json"
    keras.write_text('{"keras": "3.15.1", "tensorflow": "2.21.0", "test_acc": [0.81, 0.80, 0.79, 0.82]}')
    output = run_quick("seed_fidelity.py", "--seeds", "2", "--keras", str(keras))
    assert len(table_rows(output, "0 ")) == len(table_rows(output, "1 ")) == 1  # one row per seed
    [keras_row] = table_rows(output, "Keras 3.15.1 here")
    assert keras_row[1:3] == ["4", "0.8050"]  # n and mean of the four accuracies
    assert re.search(r"runs below 0\.76: \d of 2 vs 0 of 4 \(Fisher p = [0-9.e-]+\)", output)
    assert "Mann-Whitney p = " in output


def test_keras_reference_exports_the_packages_tokens_pre_padded(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import write_imdb_archive
    import numpy as np

    archive = write_imdb_archive(tmp_path / "tiny.tar.gz", per_class=20)
    out = tmp_path / "ids.npz"
    result = subprocess.run([sys.executable, str(BENCHMARKS / "keras_reference.py"), "export", str(out),
                             "--archive", str(archive)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    data = np.load(out)
    assert data["x_train"].shape == data["x_test"].shape == (40, 100)
    assert sorted(data["y_train"].tolist()) == [0] * 20 + [1] * 20
    assert (data["x_train"][:, -1] > 0).all()  # every review ends in the last column: pads come first
    lengths = (data["x_train"] > 0).sum(1)
    assert all((row[: 100 - n] == 0).all() for row, n in zip(data["x_train"], lengths))
    missing = subprocess.run([sys.executable, str(BENCHMARKS / "keras_reference.py"), "train", str(tmp_path / "no.npz")],
                             capture_output=True, text=True)
    assert missing.returncode == 1 and "no.npz does not exist: write it first" in missing.stderr


def test_gpu_check_dry_run_runs_every_step_on_the_cpu(tmp_path):
    """benchmarks/gpu_check.sh --dry-run: every step of the one prepared GPU check, at tiny sizes on the CPU, so
    that the device run (15 minutes for everything) does not find its mistakes."""
    out = tmp_path / "out"
    result = subprocess.run(["bash", str(BENCHMARKS / "gpu_check.sh"), "--dry-run"], capture_output=True, text=True,
                            timeout=900, env={**os.environ, "OUT": str(out), "BUDGET": "900", "PYTHON": sys.executable})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    steps = dict(re.findall(r"^(\w+): rc=(\d+)", (out / "summary.txt").read_text(), re.M))
    assert steps == {name: "0" for name in ("tests", "precision", "throughput", "time_to_accuracy", "sweep_n1",
                                             "sweep_n2", "depth_study_partial")}, steps
    precision = json.loads((out / "precision.json").read_text())
    assert [r["precision"] for r in precision["runs"]] == ["bf16-mixed", "32-true"]
    assert all(r["finite"] and r["steps"] == 12 and r["steps_per_s"] > 0 for r in precision["runs"])
    assert precision["dtypes"][0]["rnn_output"] in ("torch.float32", "torch.bfloat16")
    assert len(list((out / "logs" / "sweep_n2").glob("*/results.json"))) == 4  # 2 depths x 2 seeds
    assert (out / "depth_report.md").is_file() and (out / "logs.tar.gz").stat().st_size > 0
    assert "== summary" in result.stdout and "| bf16-mixed |" in result.stdout and "| cell=gru,layers=4" in result.stdout
