"""The report's statistics: seeds grouped into configurations (mean, sd, Student-t 95% CI), learning rates picked on
validation only, and each depth tested against a reference depth (Welch and Mann-Whitney with Holm's correction,
P(better) with a bootstrap CI). Every function takes the metric's direction (sign +1: higher is better).
"""

from __future__ import annotations

import math
import statistics

SEED_KEYS = ("seed",)  # the short (folder-name) key of the run seed: jobs differing only in it are repeats
METRIC_LABELS = {"acc": "accuracy", "mse": "MSE", "token_acc": "token accuracy", "exact_match": "exact-match rate",
                 "bpc": "bits per character", "window_nats": "loss on 64-char windows (nats)"}
EQUIVALENCE_MARGIN = 0.02  # default +-margin of an "equivalent" verdict for a score in [0, 1] where higher is better
LOWER_IS_BETTER_MARGINS = {"bpc": 0.02}  # the same band for a metric where lower is better: bits per character


def metric_label(metric: str) -> str:
    """How a metric is named in titles and axes: acc -> accuracy (unknown names as they are)."""
    return METRIC_LABELS.get(metric, metric.replace("_", " "))


def size_of(row: dict) -> int:
    """Rows sort by width, or by parameter budget when the budget chose the widths (they then differ by depth)."""
    return row.get("param_budget") or row["units"] or 0


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


def tuned(configs: list[dict], tune_keys, metric: str, sign: int = 1) -> list[dict]:
    """For each configuration of the swept keys other than `tune_keys`, the configuration whose MEAN validation
    metric is best (sign +1: the highest, as accuracy; -1: the lowest, as MSE). Only validation is read: test
    scores never influence the choice."""
    tune = {short(k) for k in tune_keys}
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
                   margin: float | None = None, alpha: float = 0.05, sign: int = 1) -> tuple[list[dict], list[str]]:
    """Within each group of configurations that differ only in depth, every depth against the reference depth
    (default: the group's shallowest) on the test metric over seeds. Holm's correction runs over every comparison
    returned. The verdict reads the Welch test: better/worse when Holm's p < alpha; "equivalent" when the 95% CI
    of the difference lies inside +-margin; else "not resolved". Marks each config with `vs_reference`.
    sign: +1 when higher is better. Returns (rows, notes on groups left out)."""
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
