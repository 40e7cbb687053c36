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
import csv
import json
import math
import statistics
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

COLUMNS = ("job", "cell", "layers", "units", "seed", "params", "stack_params", "best_val_acc", "test_acc", "epochs",
           "best_epoch", "seconds_per_epoch", "status")
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
        "stack_params": results.get("stack_params"),  # recurrent stack + head: what model.param_budget fixes
        "param_budget": model.get("param_budget"),
        "best_val_acc": results.get("best_val_acc"),
        "test_acc": results.get("test_acc"),
        "best_val_mse": results.get("best_val_mse"),
        "test_mse": results.get("test_mse"),
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


def size_of(row: dict) -> int:
    """Rows sort by width, or by parameter budget when the budget chose the widths (they then differ by depth)."""
    return row.get("param_budget") or row["units"] or 0


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
               "residual": first["residual"], "params": first["params"], "stack_params": first["stack_params"],
               "param_budget": first["param_budget"],
               "swept": {k: v for k, v in first["swept"].items() if k not in leave_out},
               "members": members, "failed": len(members) - len(done)}
        for col in (f"best_val_{metric}", f"test_{metric}", "seconds_per_epoch", "epochs", "best_epoch"):
            stats = summarise([r[col] for r in done if r[col] is not None])
            row["n"] = max(row.get("n", 0), stats["n"])
            row |= {f"{col}_{k}": v for k, v in stats.items() if k != "n"}
        out.append(row)
    return sorted(out, key=lambda r: (size_of(r), str(r["cell"]), r["layers"] or 0, r["config"]))


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
# Comparisons between depths: tests, not overlapping error bars


def welch(a: list[float], b: list[float]) -> dict:
    """mean(a) - mean(b) with its 95% CI and two-sided p from Welch's t (unequal variances, Welch-Satterthwaite
    degrees of freedom). Needs n >= 2 on both sides; with no spread on either side the difference is exact
    (p = 1 when it is zero, else 0)."""
    from scipy import stats

    diff = statistics.fmean(a) - statistics.fmean(b)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return {"diff": diff, "ci_low": diff, "ci_high": diff, "p": 1.0 if diff == 0 else 0.0}
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = float(stats.t.ppf(0.975, df)) * se
    return {"diff": diff, "ci_low": diff - half, "ci_high": diff + half,
            "p": float(2 * stats.t.sf(abs(diff) / se, df))}


def mann_whitney(a: list[float], b: list[float]) -> float:
    """Two-sided Mann-Whitney U p-value (exact when there are no ties): a rank test, robust to the bimodal seed
    distributions here (runs that learn and runs stuck at chance)."""
    from scipy import stats

    if len(set(a) | set(b)) == 1:  # every run scored the same: nothing to rank
        return 1.0
    return float(stats.mannwhitneyu(a, b, alternative="two-sided").pvalue)


def p_better(a: list[float], b: list[float], sign: int = 1) -> float:
    """P(a run of a beats a run of b), ties counted half: the common-language effect size (McGraw & Wong 1992),
    U / (n_a n_b). sign=-1 when lower is better (MSE)."""
    wins = sum((sign * (x - y) > 0) + 0.5 * (x == y) for x in a for y in b)
    return wins / (len(a) * len(b))


def p_better_ci(a: list[float], b: list[float], sign: int = 1, draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of p_better, resampling the seeds of each side (Bouthillier et al. 2021)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    xs = x[rng.integers(0, len(x), (draws, len(x)))]  # (draws, n_a)
    ys = y[rng.integers(0, len(y), (draws, len(y)))]  # (draws, n_b)
    d = sign * (xs[:, :, None] - ys[:, None, :])  # (draws, n_a, n_b)
    p = ((d > 0) + 0.5 * (d == 0)).mean(axis=(1, 2))
    low, high = np.percentile(p, [2.5, 97.5])
    return float(low), float(high)


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm's step-down correction over every p that is not None: the i-th smallest of m is multiplied by
    (m - i + 1), then made monotone; None (no test) stays None and does not count towards m."""
    tested = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[i] = running
    return adjusted


def depth_group(config: dict, tune=()) -> str:
    """The configurations that differ only in depth share this name (seed and tuning keys left out too)."""
    return config_name(config["swept"], {"layers", *SEED_KEYS, *(short(k) for k in tune)})


def compare_depths(configs: list[dict], metric: str, reference: int | None = None, tune=(),
                   margin: float | None = None, alpha: float = 0.05) -> tuple[list[dict], list[str]]:
    """Within each group of configurations that differ only in depth, every depth against the reference depth
    (default: the group's shallowest) on the test metric over seeds. Holm's correction runs over every comparison
    returned. The verdict reads the Welch test: better/worse when Holm's p < alpha; "equivalent" when the 95% CI
    of the difference lies inside +-margin; else "not resolved". Marks each config with `vs_reference`.
    Returns (rows, notes on groups left out)."""
    sign = -1 if metric == "mse" else 1
    groups: dict[str, list[dict]] = {}
    for c in configs:
        if c["layers"] is not None:
            groups.setdefault(depth_group(c, tune), []).append(c)
    rows, notes = [], []
    for name, members in groups.items():
        if len(members) < 2:
            continue
        depths = {c["layers"]: c for c in members}
        ref_depth = min(depths) if reference is None else reference
        if ref_depth not in depths:
            notes.append(f"{name}: no configuration at the reference depth {ref_depth}")
            continue
        ref = depths[ref_depth]
        ref_scores = scores_of(ref, metric)
        ref["vs_reference"] = "reference"
        for depth, c in sorted(depths.items()):
            if depth == ref_depth:
                continue
            scores = scores_of(c, metric)
            row = {"group": name, "config": label_of(c, tune), "reference": label_of(ref, tune), "cell": c["cell"],
                   "layers": depth, "reference_layers": ref_depth, "units": c["units"], "reference_units": ref["units"],
                   "params": c["params"], "reference_params": ref["params"], "n": len(scores),
                   "reference_n": len(ref_scores),
                   "mean": statistics.fmean(scores) if scores else None,
                   "reference_mean": statistics.fmean(ref_scores) if ref_scores else None, "config_row": c}
            if len(scores) >= 2 and len(ref_scores) >= 2:
                test = welch(scores, ref_scores)
                low, high = p_better_ci(scores, ref_scores, sign)
                row |= {"diff": test["diff"], "diff_ci_low": test["ci_low"], "diff_ci_high": test["ci_high"],
                        "welch_p": test["p"], "mann_whitney_p": mann_whitney(scores, ref_scores),
                        "p_better": p_better(scores, ref_scores, sign), "p_better_ci_low": low, "p_better_ci_high": high}
            rows.append(row)
    for test in ("welch_p", "mann_whitney_p"):
        for row, adjusted in zip(rows, holm([r.get(test) for r in rows])):
            row[f"{test}_holm"] = adjusted
    for row in rows:
        row["verdict"] = verdict(row, sign, margin, alpha)
        row["config_row"]["vs_reference"] = row["verdict"]
    return rows, notes


def scores_of(config: dict, metric: str) -> list[float]:
    """The test metric of each finished seed of a configuration (failed jobs left out)."""
    return [m[f"test_{metric}"] for m in config["members"] if m["status"] == "ok" and m[f"test_{metric}"] is not None]


def label_of(config: dict, tune=()) -> str:
    """'cell=gru,layers=2 (lr=0.003)': the configuration, with the tuning values chosen on validation."""
    chosen = ",".join(f"{short(k)}={config['swept'][short(k)]}" for k in tune if short(k) in config["swept"])
    return config_name(config["swept"], (*SEED_KEYS, *(short(k) for k in tune))) + (f" ({chosen})" if chosen else "")


def layers_text(layers: int) -> str:
    return f"{layers} layer{'s' if layers != 1 else ''}"


def verdict(row: dict, sign: int, margin: float | None, alpha: float) -> str:
    if row.get("welch_p_holm") is None:
        return "no test (n < 2)"
    if row["welch_p_holm"] < alpha:
        better = sign * row["diff"] > 0
        return f"{layers_text(row['layers'])} {'better' if better else 'worse'}"
    if margin is not None and -margin < row["diff_ci_low"] and row["diff_ci_high"] < margin:
        return f"equivalent (within ±{margin:g})"
    return "not resolved"


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


# ----------------------------------------------------------------------------------------------
# Figures


def panel_of(config: dict) -> str | None:
    """Figures get one panel per swept width or parameter budget (at a fixed budget the units differ by depth)."""
    swept = config["swept"]
    if "units" in swept:
        return f"units = {swept['units']}"
    if "param_budget" in swept:
        return f"param_budget = {swept['param_budget']}"
    return None


def size_title(configs: list[dict]) -> str:
    """What the one panel of an unswept size holds: its units, or its parameter budget."""
    budgets = {c.get("param_budget") for c in configs}
    if len(budgets) == 1 and None not in budgets:
        return f"param_budget = {budgets.pop():,} (units marked)"
    units = {c["units"] for c in configs}
    return f"units = {units.pop()}" if len(units) == 1 else ""


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_against_depth(configs: list[dict], metric: str, ylabel: str, title: str, line_leave_out=(),
                       mark_tests: bool = False):
    """One panel per swept width or budget, one line per configuration of the other swept keys, depth on x: the
    mean over seeds with 95% CI bars (when n > 1) and each seed's value as a faint dot. mark_tests stars the depths
    that differ from their group's reference depth after Holm's correction (compare_depths sets vs_reference)."""
    plt = pyplot()
    panels = sorted({panel_of(c) for c in configs}, key=str)
    fig, axes = plt.subplots(1, len(panels), figsize=(max(6.4, 4.8 * len(panels)), 4.2), squeeze=False, sharey=True)
    leave_out = {"layers", "units", "param_budget", *line_leave_out}
    starred = False
    for ax, panel_name in zip(axes[0], panels):
        panel = [c for c in configs if panel_of(c) == panel_name and c["layers"] is not None]
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
            color = drawn[0].get_color()
            for p in points:
                seeds = [m[metric] for m in p["members"] if m["status"] == "ok" and m[metric] is not None]
                if len(seeds) > 1:
                    ax.scatter([p["layers"]] * len(seeds), seeds, s=12, alpha=0.3, color=color)
                if p.get("param_budget") is not None:
                    ax.annotate(f"u={p['units']}", (p["layers"], p[f"{metric}_mean"]), textcoords="offset points",
                                xytext=(6, -10), fontsize=7, color=color)
                if mark_tests and str(p.get("vs_reference", "")).endswith(("better", "worse")):
                    ax.scatter([p["layers"]], [p[f"{metric}_mean"]], marker="*", s=160, color=color,
                               edgecolor="black", linewidth=0.6, zorder=5)
                    starred = True
        failed = [c["layers"] for c in panel if c["failed"]]
        for layers in failed:
            ax.axvline(layers, color="red", alpha=0.25, linestyle=":")
        name = panel_name if panel_name is not None else size_title(panel)
        ax.set_title(name + (f"  ({sum(c['failed'] for c in panel)} failed)" if failed else ""), fontsize="medium")
        ax.set_xlabel("layers (depth)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    if starred:
        axes[0][-1].scatter([], [], marker="*", s=120, color="grey", edgecolor="black", linewidth=0.6,
                            label="differs from the reference depth\n(Welch, Holm p < 0.05)")
    axes[0][-1].legend(fontsize="small")
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    return fig


def plot_convergence(configs: list[dict], metric: str, tune=()):
    """Validation metric against epoch: one panel per group of configurations that differ only in depth, one
    line per depth (mean over all seeds, band ± 1 sd), each seed a faint line. A run stopped early keeps its last
    value in the mean, so that runs stuck at chance, which early stopping ends first, do not drop out of it."""
    plt = pyplot()
    groups: dict[str, list[dict]] = {}
    for c in configs:
        if c["layers"] is not None:
            groups.setdefault(depth_group(c, tune), []).append(c)
    if not groups:
        return None
    fig, axes = plt.subplots(1, len(groups), figsize=(max(6.4, 4.4 * len(groups)), 4.0), squeeze=False,
                             sharey=True)
    key = f"val/{metric}"
    for ax, (name, members) in zip(axes[0], sorted(groups.items())):
        for c in sorted(members, key=lambda c: c["layers"]):
            curves = [[h[key] for h in m["history"] if key in h] for m in c["members"] if m["status"] == "ok"]
            curves = [curve for curve in curves if curve]
            if not curves:
                continue
            chosen = label_of(c, tune).partition(" (")[2].rstrip(")")
            label = layers_text(c["layers"]) + (f", u={c['units']}" if c.get("param_budget") is not None else "") + \
                (f", {chosen}" if chosen else "")
            epochs = range(1, max(map(len, curves)) + 1)
            held = [curve + curve[-1:] * (len(epochs) - len(curve)) for curve in curves]  # stopped: last value held
            stats = [summarise([curve[e - 1] for curve in held]) for e in epochs]
            mean = [st["mean"] for st in stats]
            (line,) = ax.plot(epochs, mean, marker="o", markersize=3, label=label)
            low = [st["mean"] - (st["sd"] or 0.0) for st in stats]
            high = [st["mean"] + (st["sd"] or 0.0) for st in stats]
            ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.15)
            for curve in curves:
                ax.plot(range(1, len(curve) + 1), curve, color=line.get_color(), alpha=0.2, linewidth=0.8)
        ax.set_title(name, fontsize="medium")
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="x-small")
    axes[0][0].set_ylabel(f"validation {'accuracy' if metric == 'acc' else 'MSE'}")
    fig.suptitle("Convergence: validation score per epoch (mean ± sd over seeds, a stopped run held at its last value; "
                 "faint: each seed)",
                 fontsize="medium")
    fig.tight_layout()
    return fig


EQUIVALENCE_MARGIN = {"acc": 0.02}  # default +-margin for an "equivalent" verdict: 2 points of accuracy


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
                 margin: float | None = None) -> list[dict]:
    """Write report.md, report.csv, report_by_config.csv (report_tuned.csv when tuning keys vary,
    report_compare.csv when seeds repeat) and the PNGs into sweep_dir; returns the per-job rows.
    `reference` is the depth each group is compared against; `margin` the +-band of an "equivalent" verdict."""
    sweep_dir = Path(sweep_dir)
    reference = parse_reference(reference)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep folder {sweep_dir} does not exist")
    rows = collect(sweep_dir)
    if not rows:
        raise FileNotFoundError(f"{sweep_dir} holds no job folders (no */results.json nor */.hydra/config.yaml)")
    metric = metric_of(rows)
    margin = EQUIVALENCE_MARGIN.get(metric) if margin is None else margin
    configs = by_config(rows, metric)
    tuning = varied_tune_keys(rows, tune_keys)
    best = tuned(configs, tuning, metric) if tuning else []
    curves = best or configs
    ok = sum(r["status"] == "ok" for r in rows)
    repeated = any(c["n"] > 1 for c in configs)
    compared, notes = compare_depths(curves, metric, reference, tuning, margin) if repeated else ([], [])
    first_cols = ("cell", "layers", "units") + (("residual",) if any(c["residual"] for c in configs) else ())

    text = f"# Sweep report: {sweep_dir}\n\n{ok} of {len(rows)} jobs finished.\n\n"
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
    text += f"## Every job\n\n{markdown_table(rows)}\n\n" if best or repeated else f"{markdown_table(rows)}\n\n"
    shown_metric = "accuracy" if metric == "acc" else "MSE"
    text += (f"![test {shown_metric} against depth](accuracy_vs_depth.png)\n\n"
             "![training time against depth](time_vs_depth.png)\n\n"
             "![validation score per epoch, one line per depth](convergence.png)\n")
    (sweep_dir / "report.md").write_text(text)
    write_csv(sweep_dir / "report.csv", rows, columns(rows))
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
            curves, f"test_{metric}", "test accuracy" if metric == "acc" else "test MSE (0.167 = predict the mean)",
            f"Test {shown_metric} against depth ({what}{spread})", leave_out, mark_tests=bool(compared)),
        "time_vs_depth": plot_against_depth(curves, "seconds_per_epoch", "seconds per epoch",
                                            f"Training time against depth ({spread})", leave_out),
        "convergence": plot_convergence(curves, metric, tuning),
    }
    figures = {name: fig for name, fig in figures.items() if fig is not None}
    for name, fig in figures.items():
        fig.savefig(sweep_dir / f"{name}.png", dpi=120)
    if tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(sweep_dir / "report")) as writer:
            for name, fig in figures.items():
                writer.add_figure(f"report/{name}", fig, close=False)
            writer.add_text("report/table", markdown_table(rows))
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
    shallowest); `margin` the +-band of an "equivalent" verdict (default 0.02 accuracy)."""

    def __init__(self, tune=DEFAULT_TUNE, reference=None, margin: float | None = None):
        self.tune, self.reference, self.margin = tuple(tune), reference, margin

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            write_report(sweep_dir, tune_keys=self.tune, reference=self.reference, margin=self.margin)
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
                             "for accuracy; none for MSE)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        write_report(args.sweep_dir, tune_keys=tuple(k for k in args.tune.split(",") if k), reference=args.reference,
                     margin=args.margin)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(tables_of(Path(args.sweep_dir)))
    print(f"\nwrote report.md, report*.csv, accuracy_vs_depth.png, time_vs_depth.png and convergence.png into "
          f"{args.sweep_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
