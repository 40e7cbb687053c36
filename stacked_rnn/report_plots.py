"""The report's figures: the metric and the time per epoch against depth (one line per configuration, stars on
depths that differ from the reference), and each depth's validation curve (convergence).
"""

from __future__ import annotations

from stacked_rnn.report_stats import config_name, depth_group, label_of, layers_text, metric_label, short, summarise

def panel_of(config: dict, key: str | None = None) -> str | None:
    """Figures get one panel per value of `key` (a swept key's short name, e.g. cell), else per swept width or
    parameter budget (at a fixed budget the units differ by depth)."""
    swept = config["swept"]
    if key is not None:
        return f"{short(key)} = {swept.get(short(key), config.get(short(key)))}"
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
                       mark_tests: bool = False, chance: float | None = None, panel_key: str | None = None,
                       top: float | None = None):
    """One panel per swept width or budget (or per value of panel_key), one line per configuration of the other
    swept keys, depth on x: the mean over seeds with 95% CI bars (when n > 1) and each seed's value as a faint dot.
    mark_tests stars the depths that differ from their group's reference depth after Holm's correction
    (compare_depths sets vs_reference); chance draws the trivial answer's score as a dashed line; top caps the y axis
    (a score that cannot exceed 1: a wide CI of three bimodal seeds would otherwise stretch it far above)."""
    plt = pyplot()
    panels = sorted({panel_of(c, panel_key) for c in configs}, key=str)
    fig, axes = plt.subplots(1, len(panels), figsize=(max(6.4, (4.8 if len(panels) < 4 else 3.9) * len(panels)), 4.2),
                             squeeze=False, sharey=True)
    leave_out = {"layers", "units", "param_budget", *line_leave_out, *((short(panel_key),) if panel_key else ())}
    starred = False
    for ax, panel_name in zip(axes[0], panels):
        panel = [c for c in configs if panel_of(c, panel_key) == panel_name and c["layers"] is not None]
        if chance is not None:
            ax.axhline(chance, color="grey", linestyle="--", linewidth=1,
                       label="chance (the trivial answer)" if ax is axes[0][-1] else None)
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
    if top is not None:
        values = [m[metric] for c in configs for m in c["members"] if m["status"] == "ok" and m.get(metric) is not None]
        low = min(values + ([chance] if chance is not None else []), default=0.0)
        axes[0][0].set_ylim(max(0.0, low - 0.05), top)
    if starred:
        axes[0][-1].scatter([], [], marker="*", s=120, color="grey", edgecolor="black", linewidth=0.6,
                            label="differs from the reference depth\n(Welch, Holm p < 0.05)")
    if axes[0][-1].get_legend_handles_labels()[0]:  # nothing labelled (one configuration per panel): no empty box
        axes[0][-1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
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
    axes[0][0].set_ylabel(f"validation {metric_label(metric)}")
    fig.suptitle("Convergence: validation score per epoch (mean ± sd over seeds, a stopped run held at its last value; "
                 "faint: each seed)",
                 fontsize="medium")
    fig.tight_layout()
    return fig
