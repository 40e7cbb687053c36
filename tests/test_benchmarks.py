"""The benchmark scripts run end to end in their CI-sized --quick mode and print their tables.
(Their timings are not asserted: they vary with the machine.)"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
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
    """benchmarks/gpu_check.sh --dry-run: every step of the one prepared GPU check (issue 25), at tiny sizes on the
    CPU, so that the device run (15 minutes for everything) does not find its mistakes. About a minute."""
    out, keep = tmp_path / "out", tmp_path / "keep"
    result = subprocess.run(["bash", str(BENCHMARKS / "gpu_check.sh"), "--dry-run"], capture_output=True, text=True,
                            timeout=600, env={**os.environ, "OUT": str(out), "KEEP": str(keep), "BUDGET": "600",
                                              "PYTHON": sys.executable})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = (out / "summary.txt").read_text()
    steps = dict(re.findall(r"^(\w+): rc=(\d+)", summary, re.M))
    assert steps == {name: "0" for name in ("tests", "paths", "colocate", "depth_study", "time_to_accuracy")}, summary
    # 1. the CUDA tests are collected (and skip here)
    assert re.search(r"^\| 1\. tests \| rc=0 .*\| \d+ passed, \d+ skipped", summary, re.M), summary
    # 2. four paths per model at 32-true, as ratios to the bare loop; the fastest one is used by the later steps
    rows = json.loads((out / "paths.json").read_text())["rows"]
    assert [(r["model"], r["variant"]) for r in rows] == [
        (m, v) for m in ("default", "seed") for v in ("bare", "packed", "unpacked", "unpacked+on_device")]
    assert all(r["samples_per_s"] > 0 for r in rows) and all(r["ratio"] == 1 for r in rows if r["variant"] == "bare")
    fastest = re.search(r"^fastest path: (model\.pack=(always|never) data\.on_device=(true|false))$", summary, re.M)
    assert fastest, summary
    # 3. MPS cannot start here: plain processes, said so; the probe chose 1 or 2 jobs; the study ran at that path
    assert re.search(r"^mps: plain: nvidia-cuda-mps-control is not installed$", summary, re.M)
    assert re.search(r"^n_jobs: [12]$", summary, re.M)
    jobs = [json.loads(p.read_text()) for p in (out / "logs" / "depth_study").glob("*/results.json")]
    assert len(jobs) == 2 and all(j["status"] == "ok" for j in jobs)  # gru at depths 1 and 2
    paths_used = {f"model.pack={j['config']['model']['pack']} data.on_device={j['config']['data']['on_device']}"
                  for j in jobs}
    assert paths_used == {fastest.group(1).replace("=true", "=True").replace("=false", "=False")}
    assert (out / "depth_report.md").is_file()
    # 4. and the summary table comes last, the key files are kept (the device tool returns 8 at most), no checkpoints
    assert re.search(r"^\| 4\. time_to_accuracy \| rc=0 .*\| test accuracy [\d.]+ >= 0\.6 after epoch", summary, re.M)
    assert result.stdout.index("== summary") > result.stdout.index("time_to_accuracy: rc=0")
    kept = {p.name for p in keep.iterdir()}
    assert {"summary.txt", "logs.tar.gz", "paths.json", "depth_report.md"} <= kept and len(kept) <= 8
    with tarfile.open(out / "logs.tar.gz") as tar:
        names = tar.getnames()
    assert "logs/paths.log" in names and not any(n.endswith(".ckpt") for n in names)


def fake_tools(folder: Path, client_ok: bool) -> dict:
    """nvidia-smi, nvidia-cuda-mps-control and a python that stand in for a GPU machine's: the fake control daemon
    makes its pipe, answers get_server_list while it runs and writes each command it reads to calls.txt."""
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    scripts = {
        "nvidia-smi": "exit 0",
        "nvidia-cuda-mps-control": f"""calls={folder}/calls.txt
if [ "${{1:-}}" = -d ]; then
    mkdir -p "$CUDA_MPS_PIPE_DIRECTORY"; touch "$CUDA_MPS_PIPE_DIRECTORY/control"; echo start >> $calls; exit 0
fi
read -r command; echo "$command" >> $calls
[ -e "$CUDA_MPS_PIPE_DIRECTORY/control" ] || exit 1
[ "$command" = quit ] && rm "$CUDA_MPS_PIPE_DIRECTORY/control"
exit 0""",
        "client": "exit 0" if client_ok else "echo 'CUDA error: all CUDA-capable devices are busy' >&2; exit 1",
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text("#!/bin/bash\n" + body + "\n")
        (bin_dir / name).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "STACKED_RNN_MPS_DIR": str(folder / "mps"),
            "PYTHON": str(bin_dir / "client")}


def mps(command: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(BENCHMARKS / "mps.sh"), command], capture_output=True, text=True, env=env,
                          timeout=60)


def test_mps_script_starts_checks_and_stops_the_daemon_in_its_own_directory(tmp_path):
    env = fake_tools(tmp_path, client_ok=True)
    started = mps("start", env)
    pipe = tmp_path / "mps" / "pipe"
    assert started.returncode == 0 and started.stdout.strip() == (
        f"export CUDA_MPS_PIPE_DIRECTORY={pipe} CUDA_MPS_LOG_DIRECTORY={tmp_path / 'mps' / 'log'}")
    assert "mps: started" in started.stderr
    assert mps("status", env).stdout.startswith(f"mps: running (pipe directory {pipe}")
    assert "already running" in mps("start", env).stderr  # a second start leaves the daemon alone
    assert mps("stop", env).stderr.strip() == "mps: stopped"
    assert mps("status", env).stdout.startswith("mps: not running")
    calls = (tmp_path / "calls.txt").read_text().split()
    assert calls[0] == "start" and calls.count("start") == 1 and calls[-1] == "quit"  # quit ends it


def test_mps_script_falls_back_to_plain_processes_where_mps_cannot_serve(tmp_path):
    """A daemon that starts but serves no client (as under a sandbox such as gVisor) is stopped again; start prints
    no exports, says why on stderr and exits 0, so the jobs run as plain concurrent processes."""
    env = fake_tools(tmp_path, client_ok=False)
    started = mps("start", env)
    assert started.returncode == 0 and started.stdout == ""
    assert re.search(r"MPS is not available \(a CUDA client could not run through it: CUDA error: all CUDA-capable "
                     r"devices are busy.*\): jobs will run as plain concurrent processes", started.stderr)
    assert "quit" in (tmp_path / "calls.txt").read_text().split()  # the daemon was stopped again
    assert mps("status", env).stdout.startswith("mps: not running: jobs run as plain concurrent processes (plain: a "
                                                 "CUDA client could not run through it")
    missing = {**env, "PATH": "/usr/bin:/bin", "STACKED_RNN_MPS_DIR": str(tmp_path / "none")}
    assert "nvidia-cuda-mps-control is not installed" in mps("start", missing).stderr
    assert mps("bogus", env).returncode == 2


def test_minimal_cells_speed_compares_every_cell_with_nn_gru_in_one_run():
    rows = [row for row in table_rows(run_quick("minimal_cells_speed.py"), "") if row[0].isdigit()]  # T, model, ...
    models = {"gru", "lstm", "mingru-chunked", "mingru-log", "minlstm-chunked", "minlstm-log"}
    for length in ("32", "64"):
        at = {row[1]: row for row in rows if row[0] == length}
        assert set(at) == models and at["gru"][-1] == "1.00x"  # every ratio is to nn.GRU at the same T, same run
        assert all(float(row[-1].rstrip("x")) > 0 for row in at.values())


def test_hierarchy_baselines_give_the_lower_rule_half_and_the_level_rule_all(tmp_path):
    result = subprocess.run([sys.executable, str(BENCHMARKS / "hierarchy_baselines.py"), "--levels", "2", "--json",
                             str(tmp_path / "rows.json")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    [row] = __import__("json").loads((tmp_path / "rows.json").read_text())
    assert row["rules"]["2"] == 1.0 and row["rules"]["1"] == 0.5  # balanced by construction: exactly half
    assert abs(row["unigram"] - 0.5) < 0.05 and row["majority"] == 0.5


def test_lm_vs_nanogpt_trains_each_candidate_for_its_wall_clock_and_scores_nanogpts_measure(tmp_path):
    text = tmp_path / "verse.txt"
    text.write_text("ROMEO: the cat sat on the mat.\nJULIET: the dog sat on the log.\n" * 400)
    output = run_quick("lm_vs_nanogpt.py", "--data", str(text), "--out", str(tmp_path / "out"))
    assert "best on validation: lstm2_small" in output and "against nanoGPT's 1.88" in output
    result = json.loads((tmp_path / "out" / "lm_vs_nanogpt.json").read_text())
    row = result["rows"][0]
    assert row["params"] <= 0.8e6 and row["steps"] >= 5 and 0 < row["val_window_nats"] < 5
    assert row["train_seconds"] < 60  # stopped by its 6-second max_time, not by steps
