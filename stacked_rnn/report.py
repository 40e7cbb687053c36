"""Depth-vs-accuracy report of a sweep: `python -m stacked_rnn.report outputs/multirun/<date>/<time>`.

Reads every job's results.json (or, for a job that died before writing one, its .hydra/config.yaml)
and writes into the sweep folder:
- report.csv: one row per job (failed jobs included), with its seed;
- report_by_config.csv: one row per configuration (jobs that differ only in `seed`): n and, for the
  best-validation and the test metric, mean, sd and the 95% CI half-width (Student t);
- report_tuned.csv, when the sweep varies a tuning key (default model.lr): for each configuration of the
  other swept keys, the tuning values with the best MEAN validation metric, and that choice's test metric.
  Test scores never choose anything;
- report.md with these tables, accuracy_vs_depth.png and time_vs_depth.png (mean with 95% CI bars, each
  seed a faint dot; tuned curves when tuning), and the same figures under report/ in TensorBoard.
It also runs by itself at the end of every multirun (hydra.callbacks.sweep_report).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

COLUMNS = ("job", "cell", "layers", "units", "seed", "params", "best_val_acc", "test_acc", "seconds_per_epoch",
           "status")
DEFAULT_TUNE = ("model.lr",)
SEED_KEYS = ("seed",)  # the short (folder-name) key of the run seed: jobs differing only in it are repeats


def columns(rows: list[dict]) -> tuple[str, ...]:
    """COLUMNS, with the mse columns for a regression sweep (data=adding) and a residual column when used."""
    cols = COLUMNS
    if is_mse(rows):
        cols = tuple(c.replace("_acc", "_mse") for c in cols)
    if any(r.get("residual") for r in rows):
        cols = cols[:3] + ("residual",) + cols[3:]
    return cols


def is_mse(rows: list[dict]) -> bool:
    return any(r.get("best_val_mse") is not None for r in rows)


def swept_values(job_name: str) -> dict[str, str]:
    """The swept settings a job folder is named after: 'cell=gru,layers=3,seed=1' -> {cell: gru, layers: 3, seed: 1}."""
    items = [item.partition("=") for item in job_name.split(",")]
    return {key: value for key, sep, value in items if sep}


def job_row(job_dir: Path) -> dict | None:
    """One table row; None for folders that are not jobs."""
    results_file, config_file = job_dir / "results.json", job_dir / ".hydra" / "config.yaml"
    if results_file.is_file():
        results = json.loads(results_file.read_text())
        config = results.get("config") or {}
    elif config_file.is_file():
        results = {"status": "failed", "reason": "no results.json: the job crashed or was killed"}
        config = OmegaConf.to_container(OmegaConf.load(config_file), resolve=False)
    else:
        return None
    model = config.get("model", {})
    status = results.get("status", "ok")
    if status != "ok":
        status = f"failed: {results.get('reason', 'unknown')}".replace("\n", " ")
    return {
        "job": job_dir.name,
        "swept": swept_values(job_dir.name),
        "cell": model.get("cell"),
        "layers": model.get("layers"),
        "units": model.get("units"),
        "seed": config.get("seed"),
        "params": results.get("num_params"),
        "best_val_acc": results.get("best_val_acc"),
        "test_acc": results.get("test_acc"),
        "best_val_mse": results.get("best_val_mse"),
        "test_mse": results.get("test_mse"),
        "residual": bool(model.get("residual", False)),
        "seconds_per_epoch": results.get("seconds_per_epoch"),
        "status": status,
    }


def collect(sweep_dir: Path) -> list[dict]:
    """Rows of every job folder in the sweep, sorted by units, cell, depth and seed."""
    rows = [row for d in sorted(sweep_dir.iterdir()) if d.is_dir() and (row := job_row(d)) is not None]
    return sorted(rows, key=lambda r: (r["units"] or 0, str(r["cell"]), r["layers"] or 0, r["job"]))


# ----------------------------------------------------------------------------------------------
# Seeds and tuning


def summarise(values: list[float]) -> dict:
    """n, mean, sample sd and the 95% CI half-width of the mean (Student t, n - 1 degrees of freedom);
    sd and ci95 are None for n < 2."""
    from scipy import stats

    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "sd": None, "ci95": None}
    mean = statistics.fmean(values)
    if n == 1:
        return {"n": 1, "mean": mean, "sd": None, "ci95": None}
    sd = statistics.stdev(values)
    return {"n": n, "mean": mean, "sd": sd, "ci95": float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)}


def short(key: str) -> str:
    """model.lr -> lr: the name a swept key has in job folder names."""
    return key.rsplit(".", 1)[-1]


def config_name(swept: dict[str, str], leave_out=SEED_KEYS) -> str:
    return ",".join(f"{k}={v}" for k, v in swept.items() if k not in leave_out) or "default"


def metric_of(rows: list[dict]) -> str:
    return "mse" if is_mse(rows) else "acc"


def by_config(rows: list[dict], metric: str, leave_out=SEED_KEYS) -> list[dict]:
    """One row per configuration: the jobs whose swept values differ only in `leave_out` keys (the seed).
    Finished jobs count towards n and the statistics; failed ones are counted apart."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(config_name(row["swept"], leave_out), []).append(row)
    out = []
    for name, members in groups.items():
        done = [r for r in members if r["status"] == "ok"]
        first = members[0]
        row = {"config": name, "cell": first["cell"], "layers": first["layers"], "units": first["units"],
               "residual": first["residual"], "params": first["params"],
               "swept": {k: v for k, v in first["swept"].items() if k not in leave_out},
               "members": members, "failed": len(members) - len(done)}
        for col in (f"best_val_{metric}", f"test_{metric}", "seconds_per_epoch"):
            stats = summarise([r[col] for r in done if r[col] is not None])
            row["n"] = max(row.get("n", 0), stats["n"])
            row |= {f"{col}_{k}": v for k, v in stats.items() if k != "n"}
        out.append(row)
    return sorted(out, key=lambda r: (r["units"] or 0, str(r["cell"]), r["layers"] or 0, r["config"]))


def tuned(configs: list[dict], tune_keys, metric: str) -> list[dict]:
    """For each configuration of the swept keys other than `tune_keys`, the configuration whose MEAN validation
    metric is best (max accuracy, min MSE). Only validation is read: test scores never influence the choice."""
    tune = {short(k) for k in tune_keys}
    sign = -1 if metric == "mse" else 1
    groups: dict[str, list[dict]] = {}
    for c in configs:
        groups.setdefault(config_name(c["swept"], tune), []).append(c)
    out = []
    for name, candidates in groups.items():
        scored = [c for c in candidates if c[f"best_val_{metric}_mean"] is not None]
        if not scored:
            continue
        best = max(scored, key=lambda c: sign * c[f"best_val_{metric}_mean"])
        chosen = {k: v for k, v in best["swept"].items() if k in tune}
        out.append(best | chosen | {"config": name, "chosen": chosen, "candidates": len(candidates)})
    return out


def varied_tune_keys(rows: list[dict], tune_keys) -> list[str]:
    """The tuning keys that take more than one value in this sweep."""
    return [k for k in tune_keys if len({r["swept"].get(short(k)) for r in rows} - {None}) > 1]


# ----------------------------------------------------------------------------------------------
# Tables


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) <= 1 else f"{value:.1f}"
    if isinstance(value, int) and value >= 10000:
        return f"{value:,}"
    return str(value)


def markdown_table(rows: list[dict]) -> str:
    cols = columns(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(row.get(c)).replace("|", "/") for c in cols) + " |" for row in rows]
    return "\n".join(lines)


def stat_columns(metric: str) -> tuple[str, ...]:
    return tuple(f"{col}_{k}" for col in (f"best_val_{metric}", f"test_{metric}") for k in ("mean", "sd", "ci95"))


def config_columns(configs: list[dict], metric: str) -> tuple[str, ...]:
    residual = ("residual",) if any(c["residual"] for c in configs) else ()
    return ("config", "cell", "layers", "units", *residual, "n", "failed", "params", *stat_columns(metric),
            "seconds_per_epoch_mean")


def tuned_columns(rows: list[dict], metric: str, tune_keys) -> tuple[str, ...]:
    residual = ("residual",) if any(r["residual"] for r in rows) else ()
    return ("config", "cell", "layers", "units", *residual, *(short(k) for k in tune_keys), "candidates", "n",
            *stat_columns(metric), "seconds_per_epoch_mean")


def ci_table(rows: list[dict], metric: str, first_cols: tuple[str, ...]) -> str:
    """Markdown table with 'mean ± ci95 (sd)' cells, easier to read than three columns each."""
    def cell(row, col):
        mean, sd, ci = row.get(f"{col}_mean"), row.get(f"{col}_sd"), row.get(f"{col}_ci95")
        return "-" if mean is None else f"{mean:.4f}" if ci is None else f"{mean:.4f} ± {ci:.4f} (sd {sd:.4f})"
    cols = (*first_cols, "n", f"best val {metric} (mean ± 95% CI)", f"test {metric} (mean ± 95% CI)", "s/epoch")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [fmt(r.get(c)) for c in first_cols] + [str(r["n"]), cell(r, f"best_val_{metric}"),
                                                       cell(r, f"test_{metric}"), fmt(r.get("seconds_per_epoch_mean"))]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def write_csv(path: Path, rows: list[dict], cols) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


# ----------------------------------------------------------------------------------------------
# Figures


def plot_against_depth(configs: list[dict], metric: str, ylabel: str, title: str, line_leave_out=()):
    """One panel per unit count, one line per configuration of the other swept keys, depth on x: the mean over
    seeds with 95% CI bars (when n > 1) and each seed's value as a faint dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    units = sorted({c["units"] for c in configs if c["units"] is not None}) or [None]
    fig, axes = plt.subplots(1, len(units), figsize=(max(6.4, 4.8 * len(units)), 4.2), squeeze=False, sharey=True)
    leave_out = {"layers", "units", *line_leave_out}
    for ax, unit in zip(axes[0], units):
        panel = [c for c in configs if c["units"] == unit and c["layers"] is not None]
        lines: dict[str, list[dict]] = {}
        for c in panel:
            label = config_name(c["swept"], leave_out)
            if label == "default":
                label = str(c["cell"]) + (" residual" if c["residual"] else "")
            lines.setdefault(label, []).append(c)
        for label, points in sorted(lines.items()):
            points = sorted((p for p in points if p.get(f"{metric}_mean") is not None), key=lambda p: p["layers"])
            if not points:
                continue
            x = [p["layers"] for p in points]
            y = [p[f"{metric}_mean"] for p in points]
            err = [p[f"{metric}_ci95"] or 0.0 for p in points]
            drawn = ax.errorbar(x, y, yerr=err if any(err) else None, marker="o", capsize=3, label=label)
            for p in points:
                seeds = [m[metric] for m in p["members"] if m["status"] == "ok" and m[metric] is not None]
                if len(seeds) > 1:
                    ax.scatter([p["layers"]] * len(seeds), seeds, s=12, alpha=0.3, color=drawn[0].get_color())
        failed = [c["layers"] for c in panel if c["failed"]]
        for layers in failed:
            ax.axvline(layers, color="red", alpha=0.25, linestyle=":")
        ax.set_title(f"units = {unit}" + (f"  ({sum(c['failed'] for c in panel)} failed)" if failed else ""))
        ax.set_xlabel("layers (depth)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(fontsize="small")
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    return fig


def write_report(sweep_dir: str | Path, tensorboard: bool = True, tune_keys=DEFAULT_TUNE) -> list[dict]:
    """Write report.md, report.csv, report_by_config.csv (and report_tuned.csv when tuning keys vary) and
    the two PNGs into sweep_dir; returns the per-job rows."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep folder {sweep_dir} does not exist")
    rows = collect(sweep_dir)
    if not rows:
        raise FileNotFoundError(f"{sweep_dir} holds no job folders (no */results.json nor */.hydra/config.yaml)")
    metric = metric_of(rows)
    configs = by_config(rows, metric)
    tuning = varied_tune_keys(rows, tune_keys)
    best = tuned(configs, tuning, metric) if tuning else []
    ok = sum(r["status"] == "ok" for r in rows)
    repeated = any(c["n"] > 1 for c in configs)
    first_cols = ("cell", "layers", "units") + (("residual",) if any(c["residual"] for c in configs) else ())

    text = f"# Sweep report: {sweep_dir}\n\n{ok} of {len(rows)} jobs finished.\n\n"
    if best:
        shown = tuple(short(k) for k in tuning)
        text += (f"## Tuned: best mean validation {metric} over {', '.join(tuning)} (test never chooses)\n\n"
                 f"{ci_table(best, metric, ('config', *first_cols, *shown))}\n\n")
    if repeated:
        text += f"## By configuration (over seeds)\n\n{ci_table(configs, metric, ('config', *first_cols))}\n\n"
    text += f"## Every job\n\n{markdown_table(rows)}\n\n" if best or repeated else f"{markdown_table(rows)}\n\n"
    shown_metric = "accuracy" if metric == "acc" else "MSE"
    text += (f"![test {shown_metric} against depth](accuracy_vs_depth.png)\n\n"
             "![training time against depth](time_vs_depth.png)\n")
    (sweep_dir / "report.md").write_text(text)
    write_csv(sweep_dir / "report.csv", rows, columns(rows))
    write_csv(sweep_dir / "report_by_config.csv", configs, config_columns(configs, metric))
    if best:
        write_csv(sweep_dir / "report_tuned.csv", best, tuned_columns(best, metric, tuning))

    curves, leave_out = (best, tuple(short(k) for k in tuning)) if best else (configs, ())
    what = "tuned on validation, " if best else ""
    spread = "mean ± 95% CI over seeds" if repeated else "one run each"
    figures = {
        "accuracy_vs_depth": plot_against_depth(
            curves, f"test_{metric}", "test accuracy" if metric == "acc" else "test MSE (0.167 = predict the mean)",
            f"Test {shown_metric} against depth ({what}{spread})", leave_out),
        "time_vs_depth": plot_against_depth(curves, "seconds_per_epoch", "seconds per epoch",
                                            f"Training time against depth ({spread})", leave_out),
    }
    for name, fig in figures.items():
        fig.savefig(sweep_dir / f"{name}.png", dpi=120)
    if tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(sweep_dir / "report")) as writer:
            for name, fig in figures.items():
                writer.add_figure(f"report/{name}", fig)
            writer.add_text("report/table", markdown_table(rows))
            if repeated:
                writer.add_text("report/by_config", ci_table(configs, metric, ("config", *first_cols)))
            if best:
                writer.add_text("report/tuned", ci_table(best, metric, ("config", *first_cols,
                                                                        *(short(k) for k in tuning))))
    import matplotlib.pyplot as plt

    for fig in figures.values():
        plt.close(fig)
    return rows


class SweepReport(Callback):
    """Hydra callback: write the report when a multirun ends (failed jobs included). `tune` lists the keys whose
    best values are picked on validation per configuration (hydra.callbacks.sweep_report.tune=[model.lr,model.dropout])."""

    def __init__(self, tune=DEFAULT_TUNE):
        self.tune = tuple(tune)

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            write_report(sweep_dir, tune_keys=self.tune)
        except Exception as err:  # a report problem must never hide the jobs' own results
            print(f"sweep report failed: {err}", file=sys.stderr)
            return
        print(f"\n{tables_of(sweep_dir)}\n\nreport: {sweep_dir / 'report.md'}\n"
              f"plots:  {sweep_dir / 'accuracy_vs_depth.png'}, {sweep_dir / 'time_vs_depth.png'}\n"
              f"tensorboard --logdir {sweep_dir}")


def tables_of(sweep_dir: Path) -> str:
    """report.md without its title and figure links, for the terminal."""
    lines = (sweep_dir / "report.md").read_text().splitlines()
    return "\n".join(line for line in lines[1:] if not line.startswith("![")).strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stacked_rnn.report", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write report.md/.csv (per job, per configuration over seeds, tuned on validation) and the\n"
                    "depth figures into a sweep folder.",
        epilog="examples:\n  python -m stacked_rnn.report outputs/multirun/2026-11-24/15-13-02\n"
               "  python -m stacked_rnn.report outputs/multirun/2026-11-24/15-13-02 --tune model.lr,model.dropout")
    parser.add_argument("sweep_dir", help="a multirun folder, e.g. outputs/multirun/<date>/<time>")
    parser.add_argument("--tune", default=",".join(DEFAULT_TUNE),
                        help="comma-separated keys picked on mean validation per configuration when the sweep "
                             "varies them (default: %(default)s; empty: no tuning)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        write_report(args.sweep_dir, tune_keys=tuple(k for k in args.tune.split(",") if k))
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(tables_of(Path(args.sweep_dir)))
    print(f"\nwrote report.md, report*.csv, accuracy_vs_depth.png and time_vs_depth.png into {args.sweep_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
