"""Depth-vs-accuracy report of a sweep: `python -m stacked_rnn.report outputs/multirun/<date>/<time>`.

Reads every job's results.json (or, for a job that died before writing one, its .hydra/config.yaml)
and writes into the sweep folder: report.md and report.csv (one row per job, failed jobs included),
accuracy_vs_depth.png and time_vs_depth.png, and the same figures as TensorBoard images under report/.
It also runs by itself at the end of every multirun (hydra.callbacks.sweep_report).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

COLUMNS = ("job", "cell", "layers", "units", "params", "best_val_acc", "test_acc", "seconds_per_epoch", "status")


def columns(rows: list[dict]) -> tuple[str, ...]:
    """COLUMNS, with the mse columns for a regression sweep (data=adding) and a residual column when used."""
    cols = COLUMNS
    if any(r.get("best_val_mse") is not None for r in rows):
        cols = tuple(c.replace("_acc", "_mse") for c in cols)
    if any(r.get("residual") for r in rows):
        cols = cols[:3] + ("residual",) + cols[3:]
    return cols


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
        "cell": model.get("cell"),
        "layers": model.get("layers"),
        "units": model.get("units"),
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
    """Rows of every job folder in the sweep, sorted by units, cell and depth."""
    rows = [row for d in sorted(sweep_dir.iterdir()) if d.is_dir() and (row := job_row(d)) is not None]
    return sorted(rows, key=lambda r: (r["units"] or 0, str(r["cell"]), r["layers"] or 0, r["job"]))


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if value <= 1 else f"{value:.1f}"
    if isinstance(value, int) and value >= 10000:
        return f"{value:,}"
    return str(value)


def markdown_table(rows: list[dict]) -> str:
    cols = columns(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(row[c]).replace("|", "/") for c in cols) + " |" for row in rows]
    return "\n".join(lines)


def plot_against_depth(rows: list[dict], metric: str, ylabel: str, title: str):
    """One panel per unit count, one line per cell type, depth on x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["status"] == "ok" and r[metric] is not None and r["layers"] is not None]
    units = sorted({r["units"] for r in rows if r["units"] is not None}) or [None]
    fig, axes = plt.subplots(1, len(units), figsize=(4.5 * len(units), 3.6), squeeze=False, sharey=True)
    for ax, unit in zip(axes[0], units):
        for cell in sorted({(r["cell"], r.get("residual", False)) for r in done}):
            points = sorted((r["layers"], r[metric]) for r in done
                            if (r["cell"], r.get("residual", False)) == cell and r["units"] == unit)
            if points:
                ax.plot(*zip(*points), marker="o", label=cell[0] + (" residual" if cell[1] else ""))
        failed = [r for r in rows if r["status"] != "ok" and r["units"] == unit and r["layers"] is not None]
        for r in failed:
            ax.axvline(r["layers"], color="red", alpha=0.25, linestyle=":")
        ax.set_title(f"units = {unit}" + (f"  ({len(failed)} failed)" if failed else ""))
        ax.set_xlabel("layers (depth)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(title="cell")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def write_report(sweep_dir: str | Path, tensorboard: bool = True) -> list[dict]:
    """Write report.md, report.csv and the two PNGs into sweep_dir; returns the rows."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep folder {sweep_dir} does not exist")
    rows = collect(sweep_dir)
    if not rows:
        raise FileNotFoundError(f"{sweep_dir} holds no job folders (no */results.json nor */.hydra/config.yaml)")
    ok = sum(r["status"] == "ok" for r in rows)
    shown = "accuracy" if "test_acc" in columns(rows) else "MSE"
    (sweep_dir / "report.md").write_text(
        f"# Sweep report: {sweep_dir}\n\n{ok} of {len(rows)} jobs finished.\n\n{markdown_table(rows)}\n\n"
        f"![test {shown} against depth](accuracy_vs_depth.png)\n\n![training time against depth](time_vs_depth.png)\n"
    )
    with open(sweep_dir / "report.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns(rows), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    figures = {
        "accuracy_vs_depth": plot_against_depth(rows, "test_acc", "test accuracy", "Test accuracy against depth")
        if "test_acc" in columns(rows) else plot_against_depth(rows, "test_mse", "test MSE (0.167 = predict the mean)",
                                                               "Test MSE against depth"),
        "time_vs_depth": plot_against_depth(rows, "seconds_per_epoch", "seconds per epoch", "Training time against depth"),
    }
    for name, fig in figures.items():
        fig.savefig(sweep_dir / f"{name}.png", dpi=120)
    if tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(sweep_dir / "report")) as writer:
            for name, fig in figures.items():
                writer.add_figure(f"report/{name}", fig)
            writer.add_text("report/table", markdown_table(rows))
    import matplotlib.pyplot as plt

    for fig in figures.values():
        plt.close(fig)
    return rows


class SweepReport(Callback):
    """Hydra callback: write the report when a multirun ends (failed jobs included)."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            rows = write_report(sweep_dir)
        except Exception as err:  # a report problem must never hide the jobs' own results
            print(f"sweep report failed: {err}", file=sys.stderr)
            return
        print(f"\n{markdown_table(rows)}\n\nreport: {sweep_dir / 'report.md'}\n"
              f"plots:  {sweep_dir / 'accuracy_vs_depth.png'}, {sweep_dir / 'time_vs_depth.png'}\n"
              f"tensorboard --logdir {sweep_dir}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m stacked_rnn.report outputs/multirun/<date>/<time>", file=sys.stderr)
        return 2
    try:
        rows = write_report(argv[0])
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(markdown_table(rows))
    print(f"\nwrote report.md, report.csv, accuracy_vs_depth.png and time_vs_depth.png into {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
