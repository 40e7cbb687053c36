"""The report's tables: per job, per configuration ('mean ± 95% CI (sd)' cells), tuned, and the depth comparisons,
as markdown and CSV.
"""

from __future__ import annotations

import csv
from pathlib import Path

from stacked_rnn.report_stats import short

COLUMNS = ("job", "cell", "layers", "units", "seed", "params", "stack_params", "best_val_{metric}", "test_{metric}",
           "epochs", "best_epoch", "seconds_per_epoch", "status")


def columns(rows: list[dict], metric: str) -> tuple[str, ...]:
    """COLUMNS for the sweep's metric (best_val_acc, test_mse, ...), with a residual column when used."""
    cols = tuple(c.format(metric=metric) for c in COLUMNS)
    if any(r.get("residual") for r in rows):
        cols = cols[:3] + ("residual",) + cols[3:]
    return cols


def fmt(value, score: bool = False) -> str:
    """A table cell: scores (best_val_*, test_*) always with 4 decimals (a bpc or MSE above 1 included), other
    floats with 4 up to 1 and 1 above (seconds)."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if score or abs(value) <= 1 else f"{value:.1f}"
    if isinstance(value, int) and value >= 10000:
        return f"{value:,}"
    return str(value)


def markdown_table(rows: list[dict], metric: str) -> str:
    cols = columns(rows, metric)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(row.get(c), score=c.startswith(("best_val_", "test_"))).replace("|", "/")
                                for c in cols) + " |" for row in rows]
    return "\n".join(lines)


def stat_columns(metric: str) -> tuple[str, ...]:
    return tuple(f"{col}_{k}" for col in (f"best_val_{metric}", f"test_{metric}") for k in ("mean", "sd", "ci95"))


EXTRA_MEANS = ("epochs_mean", "best_epoch_mean", "seconds_per_epoch_mean")


def config_columns(configs: list[dict], metric: str) -> tuple[str, ...]:
    residual = ("residual",) if any(c["residual"] for c in configs) else ()
    return ("config", "cell", "layers", "units", *residual, "n", "failed", "params", "stack_params",
            *stat_columns(metric), *EXTRA_MEANS)


def tuned_columns(rows: list[dict], metric: str, tune_keys) -> tuple[str, ...]:
    residual = ("residual",) if any(r["residual"] for r in rows) else ()
    return ("config", "cell", "layers", "units", *residual, *(short(k) for k in tune_keys), "candidates", "n",
            "params", "stack_params", *stat_columns(metric), *EXTRA_MEANS)


COMPARE_COLUMNS = ("group", "config", "reference", "cell", "layers", "reference_layers", "units", "reference_units",
                   "params", "reference_params", "n", "reference_n", "mean", "reference_mean", "diff", "diff_ci_low",
                   "diff_ci_high", "welch_p", "welch_p_holm", "mann_whitney_p", "mann_whitney_p_holm", "p_better",
                   "p_better_ci_low", "p_better_ci_high", "verdict")


def ci_table(rows: list[dict], metric: str, first_cols: tuple[str, ...]) -> str:
    """Markdown table with 'mean ± ci95 (sd)' cells, easier to read than three columns each."""
    def cell(row, col):
        mean, sd, ci = row.get(f"{col}_mean"), row.get(f"{col}_sd"), row.get(f"{col}_ci95")
        return "-" if mean is None else f"{mean:.4f}" if ci is None else f"{mean:.4f} ± {ci:.4f} (sd {sd:.4f})"

    def epochs(row):
        trained, best = row.get("epochs_mean"), row.get("best_epoch_mean")
        return "-" if trained is None else f"{trained:.1f}" + (f" ({best:.1f})" if best is not None else "")
    cols = (*first_cols, "n", f"best val {metric} (mean ± 95% CI)", f"test {metric} (mean ± 95% CI)",
            "epochs (best)", "s/epoch")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [fmt(r.get(c)) for c in first_cols] + [str(r["n"]), cell(r, f"best_val_{metric}"),
                                                       cell(r, f"test_{metric}"), epochs(r),
                                                       fmt(r.get("seconds_per_epoch_mean"))]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def fmt_p(p: float | None) -> str:
    return "-" if p is None else "<0.0001" if p < 1e-4 else f"{p:.4f}"


def compare_table(rows: list[dict], metric: str) -> str:
    """Markdown: each depth against its group's reference, the test metric's difference with its 95% CI."""
    cols = ("config", "vs", "params", "n", f"test {metric}: difference [95% CI]", "Welch p (Holm)",
            "Mann-Whitney p (Holm)", "P(better) [95% CI]", "verdict")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        params = f"{fmt(r['params'])} vs {fmt(r['reference_params'])}"
        n = f"{r['n']} vs {r['reference_n']}"
        if r.get("diff") is None:
            cells = [r["config"], r["reference"], params, n, "-", "-", "-", "-", r["verdict"]]
        else:
            cells = [r["config"], r["reference"], params, n,
                     f"{r['diff']:+.4f} [{r['diff_ci_low']:+.4f}, {r['diff_ci_high']:+.4f}]",
                     f"{fmt_p(r['welch_p'])} ({fmt_p(r['welch_p_holm'])})",
                     f"{fmt_p(r['mann_whitney_p'])} ({fmt_p(r['mann_whitney_p_holm'])})",
                     f"{r['p_better']:.2f} [{r['p_better_ci_low']:.2f}, {r['p_better_ci_high']:.2f}]", r["verdict"]]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def write_csv(path: Path, rows: list[dict], cols) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
