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

from stacked_rnn.checkpoint import CheckpointError, RunParser, UsageError, at_least, find_checkpoint, load, run_folder
from stacked_rnn.encoding import encode_text, text_tokens
from stacked_rnn.loggers import has_tensorboard, tensorboard_of
from stacked_rnn.tasks.batches import truncate_ids

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
        for logger in trainer.loggers:
            logger.log_metrics({f"grad/{n}": v for n, v in norms.items()}, step=trainer.global_step)
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
        writer = tensorboard_of(trainer)  # other loggers get grad_flow.png (MLflow: as an artifact, at the run's end)
        if writer is not None:
            writer.add_figure("grad/by_layer", fig, global_step=trainer.current_epoch, close=False)
        out = Path(trainer.default_root_dir)
        out.mkdir(parents=True, exist_ok=True)
        fig.savefig(out / "grad_flow.png", dpi=110)
        (out / "grad_flow.json").write_text(json.dumps(self.history, indent=1))
        import matplotlib.pyplot as plt

        plt.close(fig)


# ----------------------------------------------------------------------------------------------
# Per-layer re-run and the depth x time grid


def unfuse(rnn: nn.RNNBase) -> nn.ModuleList:
    """Single-layer copies of a fused num_layers=k module, holding the same weights (layer k's
    weight_ih_l{k}, weight_hh_l{k}, biases and their _reverse twins become layer 0's)."""
    layers = nn.ModuleList()
    width = rnn.hidden_size * (2 if rnn.bidirectional else 1)
    for k in range(rnn.num_layers):
        layer = type(rnn)(rnn.input_size if k == 0 else width, rnn.hidden_size, bias=rnn.bias,
                          batch_first=rnn.batch_first, bidirectional=rnn.bidirectional)
        layer.load_state_dict({name: getattr(rnn, name.replace("_l0", f"_l{k}")) for name, _ in layer.named_parameters()})
        layers.append(layer.to(next(rnn.parameters()).device))
    return layers


@torch.no_grad()
def layer_outputs(model, ids: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
    """Every layer's output sequence (B, T, D*H) for a batch, in eval mode (no dropout). A fused stack is
    re-run one layer at a time with its own weights; a residual stack already runs that way."""
    was_training = model.training
    model.eval()
    try:
        layers = model.stack if model.stack is not None else unfuse(model.rnn)
        return model.run_layers(model.inputs(ids), lengths, layers)
    finally:
        model.train(was_training)


def final_states(model, outputs: list[torch.Tensor], lengths: torch.Tensor) -> list[torch.Tensor]:
    """Each layer's final hidden state (B, D*H), as the fused module's h_n holds it."""
    return [model.last_state(out, lengths) for out in outputs]  # layers x (B, D*H)


GRID_VALUES = ("norm", "readout")


def depth_time_grid(model, ids: torch.Tensor, value: str = "norm") -> torch.Tensor:
    """(layers, T) grid of one sequence ids (T,) or (T, F): each layer's hidden-state norm per step, or its
    running read-out, sigmoid(head(h_t)) (the trained head reads only the top layer; on lower layers it shows
    how close their states already are to what the head looks for)."""
    if value not in GRID_VALUES:
        raise ValueError(f"value={value!r} is not allowed: expected one of {GRID_VALUES}")
    outputs = layer_outputs(model, ids[None], torch.tensor([len(ids)]))  # layers x (1, T, D*H)
    stacked = torch.cat(outputs)  # (layers, T, D*H)
    if value == "norm":
        return stacked.norm(dim=-1)
    with torch.no_grad():
        logits = model.classifier(model.head_norm(stacked))  # (layers, T, outputs)
        if model.kind.per_step:  # tag, lm: the head's confidence in the class (character) it would name at each step
            return logits.softmax(-1).amax(-1)  # (layers, T)
        return torch.sigmoid(logits.squeeze(-1))  # (layers, T)


def plot_grid(grid: torch.Tensor, tokens: list[str], value: str, title: str):
    """Heatmap: one row per layer (top layer at the top), one column per token."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers, steps = grid.shape
    fig, ax = plt.subplots(figsize=(min(2 + 0.28 * steps, 40), 1.2 + 0.45 * layers))
    image = ax.imshow(grid.flip(0).numpy(), aspect="auto", cmap="viridis" if value == "norm" else "RdBu",
                      **({} if value == "norm" else {"vmin": 0.0, "vmax": 1.0}), interpolation="nearest")
    ax.set_yticks(range(layers), [f"layer {k}" for k in reversed(range(layers))])
    ax.set_xticks(range(steps), tokens, rotation=90, fontsize=7)
    fig.colorbar(image, ax=ax, pad=0.01, label="|h_t|" if value == "norm" else "P(positive) or max P(class)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


GRID_USAGE = '%(prog)s ckpt=RUN_OR_CKPT text="a review" [value=norm|readout] [out=PNG] [max_tokens=60]'
GRID_EXAMPLES = """\
  python -m stacked_rnn.diagnostics ckpt=outputs/2026-11-24/15-13-02 text="A moving, wonderful film."
  python -m stacked_rnn.diagnostics ckpt=RUN text="This movie was a complete waste of time." value=readout"""


def grid_parser() -> RunParser:
    parser = RunParser("python -m stacked_rnn.diagnostics", GRID_USAGE, "Depth x time grid of one review: one row per "
                       "layer, one column per token ((?) marks an unknown word).\nSaves a PNG (default: "
                       "depth_time_{value}.png in the run folder) and logs it to the run's TensorBoard, if it has "
                       "one.", GRID_EXAMPLES)
    parser.add_key("text", "the review", required=True, metavar='"..."')
    parser.add_key("value", "norm: each layer's hidden-state norm; readout: the head's running read-out "
                   "(default: %(default)s)", choices=GRID_VALUES, default="norm")
    parser.add_key("out", "the PNG to write", metavar="PNG")
    parser.add_key("max_tokens", "tokens shown at most (default: %(default)s)", type=at_least(1), default=60,
                   metavar="N")
    return parser


def grid_main(argv: list[str] | None = None) -> int:
    """Draw the depth x time grid of one review: save a PNG and log it to the run's TensorBoard, if it has one."""
    parser = grid_parser()
    try:
        args = parser.parse_args(argv)
        path = find_checkpoint(args.ckpt)
        model, data_state = load(path)
    except (UsageError, CheckpointError) as err:
        return parser.fail(err)
    if not data_state.get("vocab"):
        return parser.fail(CheckpointError(f"{path} reads real-valued features, not text (e.g. data=adding): the grid "
                                           "takes a text"))
    max_tokens = min(args.max_tokens, data_state["max_len"])
    ids = torch.from_numpy(truncate_ids(encode_text(args.text, data_state), max_tokens, data_state["truncate"]))
    words = truncate_ids(text_tokens(args.text, data_state) or ["<unk>"], max_tokens, data_state["truncate"])
    known = set(data_state["vocab"])
    tokens = [w if w in known else f"{w}(?)" for w in words]  # (?) marks out-of-vocabulary
    tokens = [{" ": "\u2423", "\n": "\u23ce"}.get(t, t) for t in tokens]  # characters: a space and a newline shown
    value = args.value
    grid = depth_time_grid(model, ids, value)
    hp = model.hparams
    shown = "hidden-state norm" if value == "norm" else "running read-out"
    fig = plot_grid(grid, tokens, value, f"{hp.cell} x {hp.layers}: {shown} per layer and token")
    run_dir = run_folder(path)
    out = Path(args.out or run_dir / f"depth_time_{value}.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    shown_in = ""
    if has_tensorboard(run_dir):  # the run logged to TensorBoard (logger=tensorboard, the default)
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(run_dir)) as writer:
            writer.add_figure(f"depth_time/{value}", fig)
        shown_in = f" (TensorBoard: depth_time/{value} in {run_dir})"
    print(f"{len(tokens)} tokens x {grid.shape[0]} layers -> {out}{shown_in}")
    return 0


if __name__ == "__main__":
    sys.exit(grid_main())
