"""Depth-vs-accuracy report of a sweep: `python -m stacked_rnn.report outputs/multirun/<date>/<time>`.

Reads every job's results.json (or, for a job that died before writing one, its .hydra/config.yaml)
and writes into the sweep folder:
- report.csv: one row per job (failed jobs included), with its seed;
- report_by_config.csv: one row per configuration (jobs that differ only in `seed`): n and, for the
  best-validation and the test metric, mean, sd and the 95% CI half-width (Student t);
- report_tuned.csv, when the sweep varies a tuning key (default model.lr): for each configuration of the
  other swept keys, the tuning values with the best MEAN validation metric, and that choice's test metric.
  Test scores never choose anything;
- report_compare.csv, when seeds repeat: within each group of configurations that differ only in depth (the
  tuned ones when tuning), every depth against a reference depth (default the shallowest): the difference of
  mean test metric with its Welch 95% CI, Welch's p, Mann-Whitney's p, both Holm-corrected over every
  comparison in the report, and P(better): the chance that a run of one beats a run of the other;
- report.md with these tables, accuracy_vs_depth.png (depths that differ from the reference after correction
  are starred), time_vs_depth.png and convergence.png (validation metric per epoch, one line per depth), and
  the same figures under report/ in TensorBoard.
Every table carries the parameter count, and the epochs trained and the best epoch (means over seeds).
It also runs by itself at the end of every multirun (hydra.callbacks.sweep_report).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from stacked_rnn.report_plots import plot_against_depth, plot_convergence, pyplot
from stacked_rnn.report_stats import (EQUIVALENCE_MARGIN, LOWER_IS_BETTER_MARGINS, by_config, compare_depths,
                                      metric_label, short, size_of, tuned, varied_tune_keys)
from stacked_rnn.report_tables import (COMPARE_COLUMNS, ci_table, columns, compare_table, config_columns,
                                       markdown_table, tuned_columns, write_csv)

DEFAULT_TUNE = ("model.lr",)


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
        results = {"status": "failed", "reason": "no results.json: the job crashed, was killed or is still running"}
        loaded = OmegaConf.load(config_file)
        config = OmegaConf.to_container(loaded, resolve=False)
        for key in ("metric", "data.metric_mode"):  # `metric: ${oc.select:data.metric,acc}` names the task's metric
            try:
                results[key.rsplit(".", 1)[-1]] = OmegaConf.select(loaded, key)
            except Exception:  # an interpolation that needs Hydra's runtime: leave it to the defaults below
                pass
    else:
        return None
    model, data = config.get("model", {}), config.get("data", {})
    metric = results.get("metric") or config.get("metric") or "acc"  # as the task described itself (data.metric)
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
        "stack_params": results.get("stack_params"),  # recurrent stack + head: what model.param_budget fixes
        "param_budget": model.get("param_budget"),
        "metric": metric,
        # runs written before results.json held metric_mode: only MSE was minimised
        "metric_mode": results.get("metric_mode") or data.get("metric_mode") or ("min" if metric == "mse" else "max"),
        "chance": results.get("chance", data.get("chance")),  # the score of the trivial answer, if the task gives one
        f"best_val_{metric}": results.get(f"best_val_{metric}"),
        f"test_{metric}": results.get(f"test_{metric}"),
        "residual": bool(model.get("residual", False)),
        "seconds_per_epoch": results.get("seconds_per_epoch"),
        "epochs": results.get("epochs"),
        "best_epoch": results.get("best_epoch"),
        "history": results.get("history") or [],
        "status": status,
    }


def collect(sweep_dir: Path) -> list[dict]:
    """Rows of every job folder in the sweep, sorted by size (units or budget), cell, depth and job name."""
    rows = [row for d in sorted(sweep_dir.iterdir()) if d.is_dir() and (row := job_row(d)) is not None]
    return sorted(rows, key=lambda r: (size_of(r), str(r["cell"]), r["layers"] or 0, r["job"]))


def metric_of(rows: list[dict]) -> tuple[str, int]:
    """The sweep's metric and its direction (+1: higher is better), as its tasks described them; one per sweep."""
    metrics = {(r["metric"], r["metric_mode"]) for r in rows}
    if len(metrics) > 1:
        names = ", ".join(sorted(f"{m} ({mode})" for m, mode in metrics))
        raise ValueError(f"the jobs of this sweep are scored on different metrics ({names}): report each task's jobs "
                         "on their own")
    metric, mode = metrics.pop()
    return metric, (1 if mode == "max" else -1)


def parse_reference(value) -> int | None:
    """The reference depth: None (each group's shallowest), K or 'layers=K'."""
    if value is None or value == "":
        return None
    text = str(value).strip()
    text = text.partition("=")[2] if text.startswith("layers=") else text
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"reference={value!r} is not allowed: expected layers=K or K, a depth of the sweep "
                         "(default: the shallowest depth of each group)")
    return int(text)


def write_report(sweep_dir: str | Path, tensorboard: bool = True, tune_keys=DEFAULT_TUNE, reference=None,
                 margin: float | None = None, panels: str | None = None, note: str = "") -> list[dict]:
    """Write report.md, report.csv, report_by_config.csv (report_tuned.csv when tuning keys vary,
    report_compare.csv when seeds repeat) and the PNGs into sweep_dir; returns the per-job rows.
    `reference` is the depth each group is compared against; `margin` the +-band of an "equivalent" verdict;
    `panels` a swept key (e.g. cell) that gets one panel each in the depth figures; `note` a paragraph under the
    title (stacked_rnn.tune: how the configurations were tuned)."""
    sweep_dir = Path(sweep_dir)
    reference = parse_reference(reference)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep folder {sweep_dir} does not exist")
    rows = collect(sweep_dir)
    if not rows:
        raise FileNotFoundError(f"{sweep_dir} holds no job folders (no */results.json nor */.hydra/config.yaml)")
    metric, sign = metric_of(rows)
    label = metric_label(metric)
    margin = (EQUIVALENCE_MARGIN if sign > 0 else LOWER_IS_BETTER_MARGINS.get(metric)) if margin is None else margin
    chance = next((r["chance"] for r in rows if r.get("chance") is not None), None)
    configs = by_config(rows, metric)
    tuning = varied_tune_keys(rows, tune_keys)
    best = tuned(configs, tuning, metric, sign) if tuning else []
    curves = best or configs
    ok = sum(r["status"] == "ok" for r in rows)
    repeated = any(c["n"] > 1 for c in configs)
    compared, notes = compare_depths(curves, metric, reference, tuning, margin, sign=sign) if repeated else ([], [])
    first_cols = ("cell", "layers", "units") + (("residual",) if any(c["residual"] for c in configs) else ())

    text = f"# Sweep report: {sweep_dir}\n\n" + (f"{note}\n\n" if note else "") + f"{ok} of {len(rows)} jobs finished.\n\n"
    if best:
        shown = tuple(short(k) for k in tuning)
        text += (f"## Tuned: best mean validation {metric} over {', '.join(tuning)} (test never chooses)\n\n"
                 f"{ci_table(best, metric, ('config', *first_cols, *shown, 'params'))}\n\n")
    if compared:
        text += (f"## Depth against the reference depth ({'tuned ' if best else ''}test {metric} over seeds)\n\n"
                 f"{compare_table(compared, metric)}\n\n"
                 f"Difference = mean of the row's depth minus the reference's, with Welch's 95% CI. p-values in "
                 f"brackets are Holm-corrected over all {len(compared)} comparisons. P(better): the chance that one "
                 f"run of the row's depth beats one run of the reference (0.5 = a coin flip), with a bootstrap 95% "
                 f"CI. Verdict from Welch's test (Holm p < 0.05); 'equivalent' when the CI lies inside "
                 f"±{margin if margin is not None else '-'}.\n\n")
        text += "".join(f"- not compared: {note}\n" for note in notes) + ("\n" if notes else "")
    if repeated:
        text += (f"## By configuration (over seeds)\n\n"
                 f"{ci_table(configs, metric, ('config', *first_cols, 'params'))}\n\n")
    table = markdown_table(rows, metric)
    text += f"## Every job\n\n{table}\n\n" if best or repeated else f"{table}\n\n"
    text += (f"![test {label} against depth](accuracy_vs_depth.png)\n\n"
             "![training time against depth](time_vs_depth.png)\n\n"
             "![validation score per epoch, one line per depth](convergence.png)\n")
    (sweep_dir / "report.md").write_text(text)
    write_csv(sweep_dir / "report.csv", rows, columns(rows, metric))
    write_csv(sweep_dir / "report_by_config.csv", configs, config_columns(configs, metric))
    if best:
        write_csv(sweep_dir / "report_tuned.csv", best, tuned_columns(best, metric, tuning))
    if compared:
        write_csv(sweep_dir / "report_compare.csv", compared, COMPARE_COLUMNS)

    leave_out = tuple(short(k) for k in tuning)
    what = "tuned on validation, " if best else ""
    spread = "mean ± 95% CI over seeds" if repeated else "one run each"
    figures = {
        "accuracy_vs_depth": plot_against_depth(
            curves, f"test_{metric}", f"test {label}", f"Test {label} against depth ({what}{spread})", leave_out,
            mark_tests=bool(compared), chance=chance, panel_key=panels,
            top=1.02 if sign > 0 and chance is not None else None),  # a score in [0, 1] with a chance level
        "time_vs_depth": plot_against_depth(curves, "seconds_per_epoch", "seconds per epoch",
                                            f"Training time against depth ({spread})", leave_out, panel_key=panels),
        "convergence": plot_convergence(curves, metric, tuning),
    }
    figures = {name: fig for name, fig in figures.items() if fig is not None}
    for name, fig in figures.items():
        fig.savefig(sweep_dir / f"{name}.png", dpi=120, bbox_inches="tight")  # the legend sits right of the panels
    if tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(sweep_dir / "report")) as writer:
            for name, fig in figures.items():
                writer.add_figure(f"report/{name}", fig, close=False)
            writer.add_text("report/table", table)
            if repeated:
                writer.add_text("report/by_config", ci_table(configs, metric, ("config", *first_cols, "params")))
            if best:
                writer.add_text("report/tuned", ci_table(best, metric, ("config", *first_cols, *leave_out, "params")))
            if compared:
                writer.add_text("report/compare", compare_table(compared, metric))
    plt = pyplot()
    for fig in figures.values():
        plt.close(fig)
    return rows


class SweepReport(Callback):
    """Hydra callback: write the report when a multirun ends (failed jobs included). `tune` lists the keys whose
    best values are picked on validation per configuration (hydra.callbacks.sweep_report.tune=[model.lr,model.dropout]);
    `reference` is the depth the others are tested against (hydra.callbacks.sweep_report.reference=2; default the
    shallowest); `margin` the +-band of an "equivalent" verdict (default 0.02 when higher is better); `panels` a swept
    key with one panel per value in the depth figures (hydra.callbacks.sweep_report.panels=cell)."""

    def __init__(self, tune=DEFAULT_TUNE, reference=None, margin: float | None = None, panels: str | None = None):
        self.tune, self.reference, self.margin, self.panels = tuple(tune), reference, margin, panels

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            write_report(sweep_dir, tune_keys=self.tune, reference=self.reference, margin=self.margin,
                         panels=self.panels)
        except Exception as err:  # a report problem must never hide the jobs' own results
            print(f"sweep report failed: {err}", file=sys.stderr)
            return
        print(f"\n{tables_of(sweep_dir)}\n\nreport: {sweep_dir / 'report.md'}\n"
              f"plots:  {sweep_dir / 'accuracy_vs_depth.png'}, {sweep_dir / 'time_vs_depth.png'}, "
              f"{sweep_dir / 'convergence.png'}\ntensorboard --logdir {sweep_dir}")


def tables_of(sweep_dir: Path) -> str:
    """report.md without its title and figure links, for the terminal."""
    lines = (sweep_dir / "report.md").read_text().splitlines()
    return "\n".join(line for line in lines[1:] if not line.startswith("![")).strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stacked_rnn.report", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write report.md/.csv (per job, per configuration over seeds, tuned on validation, each depth\n"
                    "tested against a reference depth) and the depth and convergence figures into a sweep folder.",
        epilog="examples:\n  python -m stacked_rnn.report outputs/multirun/2026-11-24/15-13-02\n"
               "  python -m stacked_rnn.report outputs/multirun/2026-11-24/15-13-02 --tune model.lr,model.dropout\n"
               "  python -m stacked_rnn.report outputs/multirun/2026-11-24/15-13-02 --reference layers=2")
    parser.add_argument("sweep_dir", help="a multirun folder, e.g. outputs/multirun/<date>/<time>")
    parser.add_argument("--tune", default=",".join(DEFAULT_TUNE),
                        help="comma-separated keys picked on mean validation per configuration when the sweep "
                             "varies them (default: %(default)s; empty: no tuning)")
    parser.add_argument("--reference", default=None, metavar="layers=K",
                        help="the depth every other depth is tested against (default: the shallowest of each group)")
    parser.add_argument("--margin", type=float, default=None,
                        help="a difference whose 95%% CI lies inside +-MARGIN is called equivalent (default: 0.02 "
                             "when higher is better, as accuracy; none for MSE)")
    parser.add_argument("--panels", default=None, metavar="KEY",
                        help="a swept key (e.g. cell) with one panel per value in the depth figures (default: one "
                             "panel per swept width or budget)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        write_report(args.sweep_dir, tune_keys=tuple(k for k in args.tune.split(",") if k), reference=args.reference,
                     margin=args.margin, panels=args.panels)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(tables_of(Path(args.sweep_dir)))
    print(f"\nwrote report.md, report*.csv, accuracy_vs_depth.png, time_vs_depth.png and convergence.png into "
          f"{args.sweep_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
