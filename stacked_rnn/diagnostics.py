"""Depth diagnostics: gradient flow per layer during training, and the depth x time grid of one review.

Gradient flow: `GradientFlow` is a Lightning callback (callbacks.gradient_flow) that logs the gradient
norm of every layer's input and recurrent weights, plots norm against layer once per epoch, and warns
once when a lower layer's gradient vanishes or any layer's explodes.

Depth x time grid: the fused nn.RNN/LSTM/GRU returns only the top layer's sequence, so `layer_outputs`
re-runs the stack one layer at a time with the same weights; `python -m stacked_rnn.diagnostics
ckpt=RUN text="..."` draws one row per layer and one column per token.
"""

from __future__ import annotations

import json
import re
import sys
import warnings
from pathlib import Path

import lightning as L
import torch
from torch import nn

WEIGHT_RE = re.compile(r"weight_(ih|hh)_l(\d+)(_reverse)?$")


# ----------------------------------------------------------------------------------------------
# Gradient flow


def layer_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every recurrent layer's weights under the fused module's names, weight_{ih,hh}_l{k}[_reverse],
    whether the stack is one fused module (model.rnn) or one module per layer (model.stack, residual)."""
    if getattr(model, "stack", None) is not None:
        return {WEIGHT_RE.sub(lambda m: f"weight_{m[1]}_l{k}{m[3] or ''}", name): p
                for k, layer in enumerate(model.stack) for name, p in layer.named_parameters() if WEIGHT_RE.match(name)}
    return {name: p for name, p in model.rnn.named_parameters() if WEIGHT_RE.match(name)}


def layer_of(name: str) -> int:
    return int(WEIGHT_RE.match(name)[2])


def plot_grad_flow(norms: dict[str, float], title: str):
    """Gradient norm (log scale) against layer, one line per weight kind and direction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    for kind in ("ih", "hh"):
        for suffix in ("", "_reverse"):
            points = sorted((layer_of(n), v) for n, v in norms.items() if n.startswith(f"weight_{kind}") and
                            n.endswith(suffix) and (suffix or not n.endswith("_reverse")))
            if points:
                ax.plot(*zip(*points), marker="o", label=f"weight_{kind}{suffix}")
    ax.set_yscale("log")
    ax.set_xlabel("layer (0 = next to the input)")
    ax.set_ylabel("gradient norm")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


class GradientFlow(L.Callback):
    """Per-layer gradient norms of weight_ih_l{k} / weight_hh_l{k}.

    Every `every_n_steps` optimizer steps it logs grad/<name> scalars (before clipping: the hook runs
    before Lightning clips). At each epoch end it logs a norm-vs-layer figure (grad/by_layer) of the
    epoch's mean norms, saves grad_flow.png and grad_flow.json in the run folder, and warns once when
    a layer's norm is more than `vanish_ratio` times below the top layer's, or above `explode_norm`.
    """

    def __init__(self, every_n_steps: int = 50, vanish_ratio: float = 1e4, explode_norm: float = 1e3):
        if every_n_steps < 1 or vanish_ratio <= 1 or explode_norm <= 0:
            raise ValueError(f"GradientFlow(every_n_steps={every_n_steps}, vanish_ratio={vanish_ratio}, "
                             f"explode_norm={explode_norm}): expected every_n_steps >= 1, vanish_ratio > 1, "
                             "explode_norm > 0")
        self.every_n_steps, self.vanish_ratio, self.explode_norm = every_n_steps, vanish_ratio, explode_norm
        self.epoch_sums: dict[str, float] = {}
        self.epoch_count = 0
        self.history: list[dict] = []  # one {"epoch", "norms"} per epoch
        self.warned: set[str] = set()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step % self.every_n_steps:
            return
        weights = layer_weights(pl_module)
        grads = [p.grad for p in weights.values()]
        if any(g is None for g in grads):
            return
        norms = dict(zip(weights, torch.stack([g.detach().float().norm() for g in grads]).tolist()))  # one sync
        if trainer.logger is not None:
            trainer.logger.log_metrics({f"grad/{n}": v for n, v in norms.items()}, step=trainer.global_step)
        for name, value in norms.items():
            self.epoch_sums[name] = self.epoch_sums.get(name, 0.0) + value
        self.epoch_count += 1
        self.check(norms, trainer.global_step)

    def check(self, norms: dict[str, float], step: int) -> None:
        """Warn once per kind of problem: a layer far below the top layer, or a huge or non-finite norm."""
        per_layer: dict[int, float] = {}
        for name, value in norms.items():
            per_layer[layer_of(name)] = (per_layer.get(layer_of(name), 0.0) ** 2 + value ** 2) ** 0.5
        top = per_layer[max(per_layer)]
        for layer, value in sorted(per_layer.items()):
            if "vanish" not in self.warned and layer < max(per_layer) and value * self.vanish_ratio < top:
                self.warned.add("vanish")
                warnings.warn(f"vanishing gradient at step {step}: layer {layer}'s weight gradient norm {value:.3g} is "
                              f"{top / max(value, 1e-45):.3g} times smaller than the top layer's ({top:.3g}; threshold "
                              f"callbacks.gradient_flow.vanish_ratio={self.vanish_ratio:g}). Lower layers barely "
                              "learn: try model.cell=lstm|gru, fewer layers or model.residual=true")
            if "explode" not in self.warned and not value < self.explode_norm:
                self.warned.add("explode")
                warnings.warn(f"exploding gradient at step {step}: layer {layer}'s weight gradient norm is {value:.3g} "
                              f"(threshold callbacks.gradient_flow.explode_norm={self.explode_norm:g}); "
                              "keep trainer.gradient_clip_val set or lower model.lr")

    def on_train_epoch_end(self, trainer, pl_module):
        if not self.epoch_count:
            return
        norms = {n: s / self.epoch_count for n, s in self.epoch_sums.items()}
        self.history.append({"epoch": trainer.current_epoch, "norms": norms})
        self.epoch_sums, self.epoch_count = {}, 0
        if not trainer.is_global_zero:
            return
        hp = pl_module.hparams
        fig = plot_grad_flow(norms, f"{hp.cell} x {hp.layers}{' residual' if hp.get('residual') else ''}: "
                                    f"mean gradient norm, epoch {trainer.current_epoch}")
        experiment = getattr(trainer.logger, "experiment", None)
        if hasattr(experiment, "add_figure"):
            experiment.add_figure("grad/by_layer", fig, global_step=trainer.current_epoch, close=False)
        out = Path(trainer.default_root_dir)
        out.mkdir(parents=True, exist_ok=True)
        fig.savefig(out / "grad_flow.png", dpi=110)
        (out / "grad_flow.json").write_text(json.dumps(self.history, indent=1))
        import matplotlib.pyplot as plt

        plt.close(fig)
