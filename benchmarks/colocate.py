"""How many sweep jobs at once use one GPU best? For each N given, run the sweep's first N jobs N at a time
(hydra/launcher=gpu_shared, n_jobs=N, each job with cores // N CPU threads) for a fixed window, then stop them, and
compare the training samples per second of all N jobs together: each job's steady rate, counted from a few seconds
after its first batch (its start, cuDNN's first plans and the data setup left out), averaged over the jobs that got
that far, times N. Give it a sweep of identical jobs (seeds only), at least as many as the largest N, so that the
jobs' rates can be compared. Prints a table and the best N (the larger N only when it gives more than 5% more);
--choose FILE writes that N.

    python benchmarks/colocate.py --jobs 4,8 --seconds 30 -- experiment=depth_study model.cell=gru model.layers=2 \
        model.lr=1e-3 seed=0,1,2,3,4,5,6,7 trainer=gpu data.archive=.data/aclImdb_labelled.tar.gz
    python benchmarks/colocate.py --quick       # CPU, a generated archive and a tiny model, 1 vs 2 jobs

With MPS (benchmarks/mps.sh start; its exports in the environment) the jobs share the GPU through it; without it
they are plain concurrent processes. The jobs' runs are thrown away (a temporary sweep folder, or --dir).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L

HERE = Path(__file__).resolve().parent
WARM_S = 3.0  # default seconds after a job's first batch before its rate counts (--warm)


class SampleRate(L.Callback):
    """Training progress a probe can read while the job runs: (seconds since the first batch, samples trained) about
    once a second, in the json file `path`. Batch sizes come from shapes: nothing waits for the GPU."""

    def __init__(self, path: str, every_s: float = 1.0):
        self.path, self.every_s = Path(path), every_s
        self.first = self.last_write = None
        self.samples, self.points = 0, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = time.perf_counter()
        if self.first is None:
            self.first = self.last_write = now
        self.samples += len(batch[-1])
        if now - self.last_write >= self.every_s:
            self.last_write = now
            self.points.append((round(now - self.first, 3), self.samples))
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"points": self.points}))
            os.replace(tmp, self.path)  # a job stopped mid-write leaves the last whole file


def steady_rate(points: list, warm: float = WARM_S) -> float | None:
    """Samples per second from `warm` seconds after the first batch to the last point; None before that."""
    after = [(t, n) for t, n in points if t >= warm]
    if len(after) < 2:
        return None
    (t0, n0), (t1, n1) = after[0], after[-1]
    return (n1 - n0) / (t1 - t0)


def probe(n_jobs: int, seconds: float, overrides: list[str], folder: Path, warm: float = WARM_S) -> dict:
    """The sweep N at a time for `seconds`, then stopped (the whole process group); its rates and GPU use."""
    sweep = folder / f"n{n_jobs}"
    cmd = [sys.executable, "-m", "stacked_rnn.train", "-m", *overrides, "hydra/launcher=gpu_shared",
           f"hydra.launcher.n_jobs={n_jobs}", f"hydra.sweep.dir={sweep}", "trainer.enable_progress_bar=false",
           "+callbacks.sample_rate._target_=colocate.SampleRate", "+callbacks.sample_rate.path=${output_dir}/rate.json"]
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
    sweep.mkdir(parents=True, exist_ok=True)
    util_file = sweep / "gpu_util.csv"
    sampler = None
    if subprocess.run(["which", "nvidia-smi"], capture_output=True).returncode == 0:
        sampler = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,"
                                    "nounits", "-lms", "500"], stdout=util_file.open("w"), stderr=subprocess.DEVNULL)
    with (sweep / "sweep.log").open("w") as log:
        job = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            job.wait(timeout=seconds)
            ended = f"ended by itself (rc {job.returncode})"
        except subprocess.TimeoutExpired:
            ended = "stopped"
        finally:
            try:
                os.killpg(job.pid, signal.SIGKILL)  # the launcher and its joblib workers: one process group
            except ProcessLookupError:
                pass
            job.wait()
    if sampler is not None:
        sampler.terminate()
        sampler.wait()
    rates = []
    for path in sorted(sweep.glob("*/rate.json")):
        try:
            rates.append(steady_rate(json.loads(path.read_text())["points"], warm))
        except (OSError, ValueError, KeyError):
            rates.append(None)
    counted = [r for r in rates if r is not None]
    util = [line.split(", ") for line in util_file.read_text().splitlines()] if util_file.exists() else []
    util = [(float(u), float(m)) for u, m in util if u.strip().replace(".", "").isdigit()]
    per_job = sum(counted) / len(counted) if counted else 0.0
    return dict(n_jobs=n_jobs, seconds=seconds, ended=ended, started=len(rates), counted=len(counted),
                per_job=per_job, total=per_job * n_jobs,
                gpu_util=sum(u for u, _ in util) / len(util) if util else None,
                gpu_memory_mib=max((m for _, m in util), default=None))


def choose(results: list[dict]) -> int:
    """The N with the most samples/s, a larger N only when it gives at least 5% more than the best smaller one."""
    best, *larger = sorted(results, key=lambda r: r["n_jobs"])
    for r in larger:
        if r["total"] > 1.05 * best["total"]:
            best = r
    return best["n_jobs"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", default="4,8", help="job counts to compare, comma-separated")
    parser.add_argument("--seconds", type=float, default=30, help="window per job count")
    parser.add_argument("--warm", type=float, default=WARM_S, help="seconds after a job's first batch before it counts")
    parser.add_argument("--choose", type=Path, help="write the chosen job count to this file")
    parser.add_argument("--dir", type=Path, help="keep the probe's sweep folders here (default: a temporary folder)")
    parser.add_argument("--quick", action="store_true", help="CPU, a generated archive, a tiny model, 1 vs 2 jobs")
    parser.add_argument("overrides", nargs="*", help="the sweep's overrides, as for python -m stacked_rnn.train -m")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.dir or Path(tmp)
        overrides = list(args.overrides)
        if args.quick:
            sys.path.insert(0, str(HERE))
            from quick import quick_overrides

            args.jobs, args.seconds = "1,2" if args.jobs == "4,8" else args.jobs, min(args.seconds, 15)
            args.warm = min(args.warm, 1.0)
            overrides = [*quick_overrides(Path(tmp), per_class=200), "trainer=cpu", "seed=0,1,2,3",
                         "data.val_size=20", "data.vocab_size=100", "data.max_len=32", "model.units=16",
                         "model.embed_dim=16", "trainer.max_epochs=1000", *overrides]  # still training when stopped
        results = [probe(int(n), args.seconds, overrides, folder, args.warm) for n in args.jobs.split(",")]
    best = choose(results)
    print(f"\n{args.seconds:.0f} s per job count; samples/s counted from {args.warm:.0f} s after each job's first "
          "batch")
    print("| n_jobs | jobs counted | samples/s, N jobs | per job | mean GPU util | max GPU memory MiB |\n"
          "|---|---|---|---|---|---|")
    for r in results:
        util = f"{r['gpu_util']:.0f}%" if r["gpu_util"] is not None else "-"
        memory = f"{r['gpu_memory_mib']:.0f}" if r["gpu_memory_mib"] is not None else "-"
        print(f"| {r['n_jobs']} | {r['counted']} of {r['started']} | {r['total']:.1f} | {r['per_job']:.1f} | {util} "
              f"| {memory} |")
    print(f"best n_jobs: {best}")
    if args.choose:
        args.choose.write_text(f"{best}\n")


if __name__ == "__main__":
    main()
