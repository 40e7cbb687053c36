"""What a tune spent and found, per cell and depth: tune_summary.csv/.md (trials complete, pruned and failed, epochs
and seconds trained, best validation score and its parameters), best_vs_trials.png (best validation score against
trials spent, one line per depth), and Optuna's own figures: optimisation history per cell (one series per depth)
and parameter importances per study. Written by stacked_rnn.tune at the end of every run.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

from stacked_rnn.report_plots import pyplot
from stacked_rnn.report_tables import fmt, write_csv

log = logging.getLogger("stacked_rnn.tune")
SPENT = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def short_params(params: dict) -> str:
    """{'model.lr': 0.00123, 'model.dropout': 0.3} -> 'lr=0.00123, dropout=0.3'."""
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={v:.3g}" if isinstance(v, float) else f"{k.rsplit('.', 1)[-1]}={v}"
                     for k, v in params.items())


def study_rows(studies: dict, metric: str, sign: int) -> list[dict]:
    """One row per (cell, depth) study: its budget as spent, and its best COMPLETE trial (validation only)."""
    rows = []
    for (cell, depth), study in studies.items():
        trials = study.get_trials(deepcopy=False)
        spent = [t for t in trials if t.state in SPENT]
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        best = max(complete, key=lambda t: sign * t.value) if complete else None
        units = next((t.user_attrs["units"] for t in spent if t.user_attrs.get("units")), None)  # one per study
        rows.append({
            "cell": cell, "layers": depth, "units": units,
            "trials": len(spent), "complete": len(complete),
            "pruned": sum(t.state == TrialState.PRUNED for t in trials),
            "failed": sum(t.state == TrialState.FAIL for t in trials),
            "epochs": sum(t.user_attrs.get("epochs") or 0 for t in spent),
            "train_seconds": round(sum(t.user_attrs.get("train_seconds") or 0 for t in spent), 1),
            f"best_val_{metric}": best.value if best else None,
            "best_trial": best.number if best else None,
            "best_params": short_params(best.params) if best else "",
        })
    return rows


def plot_best_vs_trials(studies: dict, metric: str, sign: int):
    """Best validation score so far against trials spent (in trial order), one panel per cell, one line per depth:
    does each depth's search flatten out within its budget?"""
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    cells = sorted({cell for cell, _ in studies})
    fig, axes = plt.subplots(1, len(cells), figsize=(5 * len(cells), 3.6), squeeze=False, sharey=True)
    for ax, cell in zip(axes[0], cells):
        for (c, depth), study in sorted(studies.items()):
            if c != cell:
                continue
            best, ys = None, []
            for t in sorted((t for t in study.get_trials(deepcopy=False) if t.state in SPENT), key=lambda t: t.number):
                if t.state == TrialState.COMPLETE and (best is None or sign * t.value > sign * best):
                    best = t.value
                ys.append(best if best is not None else float("nan"))
            label = f"{depth} layer{'s' if depth > 1 else ''}"
            ax.step(range(1, len(ys) + 1), ys, where="post", marker="o", ms=3, label=label)
        ax.set(title=f"cell = {cell}", xlabel="trials spent (pruned and failed included)",
               ylabel=f"best validation {metric}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def optuna_figures(studies: dict, metric: str) -> dict:
    """Optuna's matplotlib figures: the optimisation history of each cell (its depths as series) and the parameter
    importances of each study (fANOVA: needs 2+ complete trials whose scores differ; skipped with a warning else)."""
    import matplotlib
    from optuna.visualization import matplotlib as ovm

    plt = pyplot()
    figures = {}
    with warnings.catch_warnings(), matplotlib.rc_context():  # optuna sets the ggplot style globally: undo it after
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for cell in sorted({cell for cell, _ in studies}):
            series = [s for (c, _), s in sorted(studies.items()) if c == cell]
            try:
                ax = ovm.plot_optimization_history(series)
                ax.set(title=f"Optimisation history, cell={cell}", ylabel=f"validation {metric}")
                figures[f"history_{cell}"] = ax.figure
            except Exception as err:
                log.warning(f"no optimisation history figure for cell={cell}: {err}")
        for (cell, depth), study in sorted(studies.items()):
            if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < 2:
                log.warning(f"no parameter importances for {study.study_name}: fewer than 2 complete trials")
                continue
            try:
                ax = ovm.plot_param_importances(study)
                ax.set_title(f"Hyperparameter importances, {study.study_name}", loc="left")  # replaces optuna's
                figures[f"importance_{cell}_{depth}"] = ax.figure
            except Exception as err:  # e.g. every complete trial scored the same: no variance to attribute
                log.warning(f"no parameter importances for {study.study_name}: {err}")
                plt.close("all")
    return figures


def write_tune_report(studies: dict, run_dir: Path, metric: str, sign: int, tune: dict, note: str) -> list[dict]:
    """tune_summary.csv/.md and the figures into the run folder; returns the summary rows."""
    rows = study_rows(studies, metric, sign)
    cols = ("cell", "layers", "units", "trials", "complete", "pruned", "failed", "epochs", "train_seconds",
            f"best_val_{metric}", "best_trial", "best_params")
    write_csv(run_dir / "tune_summary.csv", rows, cols)
    figures = {"best_vs_trials": plot_best_vs_trials(studies, metric, sign), **optuna_figures(studies, metric)}
    plt = pyplot()
    for name, fig in figures.items():
        fig.savefig(run_dir / f"{name}.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
    table = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    table += ["| " + " | ".join(fmt(r[c]).replace("|", "/") for c in cols) + " |" for r in rows]
    finals = "See [final/report.md](final/report.md) for the depths compared on fresh seeds.\n\n" \
        if (run_dir / "final").is_dir() else ""
    text = (f"# Tune summary: {run_dir}\n\n{note}\n\n{finals}"
            f"Budget per depth: {tune['trials']} trials, complete + pruned + failed. Epochs and seconds: training "
            f"spent by all of a depth's trials. Best: the complete trial with the best validation {metric} (test "
            f"scores never choose).\n\n" + "\n".join(table) + "\n\n"
            + "".join(f"![{name}]({name}.png)\n" for name in figures))
    (run_dir / "tune_summary.md").write_text(text)
    for r in rows:
        log.info(f"[cell={r['cell']},layers={r['layers']}] {r['trials']} trials ({r['complete']} complete, "
                 f"{r['pruned']} pruned, {r['failed']} failed), {r['epochs']} epochs, {r['train_seconds']:.0f} s; "
                 f"best val {metric} {fmt(r[f'best_val_{metric}'])} ({r['best_params']})")
    return rows
