"""The probes' figures: the heatmap of every layer against every target (trained score, the control's, and their
difference as colour) and the final-state probe's bars.
"""

from __future__ import annotations

import numpy as np

def plot_final(result: dict, title: str):
    """Final-state probe: one bar per layer (trained), the control as a black tick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n.replace(" (", "\n(") for n in result["layers"]]
    fig, ax = plt.subplots(figsize=(1.6 + 0.9 * len(names), 3.4))
    bars = ax.bar(range(len(names)), result["accuracy"], color=["grey" if n.startswith("embeddings") else "C0"
                                                                for n in names])
    ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.scatter(range(len(names)), result["control"], marker="_", s=600, color="black", label="untrained control")
    ax.axhline(0.5, color="red", linestyle=":", label="chance")
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_ylim(0.4, 1.07)
    ax.set_ylabel("probe test accuracy")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right", framealpha=0.9)
    fig.tight_layout()
    return fig


def plot_scales(layers: list[str], columns: list[str], trained, control, difference, title: str, spread=None,
                axis: str | None = None):
    """Heatmap, layers (top layer at the top) x scales, coloured by trained - control: the R^2 columns on one colour
    scale, the doc (accuracy) column on its own. Each cell shows the trained score and the control's (and, for a
    summary over seeds, the 95% CI of the difference)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trained, control, difference = (np.asarray(m, dtype=float)[::-1] for m in (trained, control, difference))
    spread = None if spread is None else np.asarray(spread, dtype=float)[::-1]
    n_rows, n_cols = trained.shape
    fig, axes = plt.subplots(1, 2, figsize=(2.2 + 1.25 * n_cols, 1.3 + 0.62 * n_rows), squeeze=False,
                             gridspec_kw={"width_ratios": [n_cols - 1, 1]})
    panels = [(axes[0][0], slice(0, n_cols - 1), "trained - control (R^2)"),
              (axes[0][1], slice(n_cols - 1, n_cols), "trained - control (accuracy)")]
    for ax, cols, label in panels:
        values = difference[:, cols]
        limit = max(float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 0.0, 0.02)
        image = ax.imshow(values, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
        for r in range(n_rows):
            for c, col in enumerate(range(n_cols)[cols]):
                small = f"ctl {control[r, col]:.2f}"
                if spread is not None and np.isfinite(spread[r, col]):
                    small += f"\ndiff ±{spread[r, col]:.2f}"
                colour = "white" if abs(values[r, c]) > 0.6 * limit else "black"
                ax.text(c, r, f"{trained[r, col]:.2f}", ha="center", va="bottom", fontsize=9, weight="bold",
                        color=colour)
                ax.text(c, r, small, ha="center", va="top", fontsize=6.5, color=colour)
        ax.set_xticks(range(values.shape[1]), columns[cols])
        ax.set_yticks(range(n_rows), layers[::-1] if ax is axes[0][0] else [""] * n_rows)
        fig.colorbar(image, ax=ax, label=label, fraction=0.08 if ax is axes[0][0] else 0.3, pad=0.03)
    axes[0][0].set_xlabel(axis or "scale: mean polarity of the last w tokens (R^2)")
    axes[0][1].set_xlabel("label")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_lm(layers: list[str], columns: list[str], trained, control, difference, chance, title: str):
    """Language-model probes (stacked_rnn.probe_lm): heatmap, layers (top layer at the top) x targets, coloured by
    trained - control accuracy on one scale; each cell shows the trained accuracy and the control's, each column
    label its majority-class baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trained, control, difference = (np.asarray(m, dtype=float)[::-1] for m in (trained, control, difference))
    n_rows, n_cols = trained.shape
    fig, ax = plt.subplots(figsize=(2.4 + 1.05 * n_cols, 1.4 + 0.62 * n_rows))
    limit = max(float(np.nanmax(np.abs(difference))) if np.isfinite(difference).any() else 0.0, 0.02)
    image = ax.imshow(difference, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
    for r in range(n_rows):
        for c in range(n_cols):
            colour = "white" if abs(difference[r, c]) > 0.6 * limit else "black"
            ax.text(c, r, f"{trained[r, c]:.2f}", ha="center", va="bottom", fontsize=9, weight="bold", color=colour)
            ax.text(c, r, f"ctl {control[r, c]:.2f}", ha="center", va="top", fontsize=6.5, color=colour)
    ax.set_xticks(range(n_cols), [f"{col}\nchance {p:.2f}" for col, p in zip(columns, chance)], fontsize=8)
    ax.set_yticks(range(n_rows), layers[::-1])
    ax.set_xlabel("target at step t: the character k back, the position in the word, the word (at its end)")
    fig.colorbar(image, ax=ax, label="trained - control (accuracy)", fraction=0.05, pad=0.02)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
