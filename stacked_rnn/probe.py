"""Layer-wise probes: which depth "knows" the sentiment? `python -m stacked_rnn.probe ckpt=RUN`.

Freezes a trained model, takes each layer's final hidden state (the fused module's h_n, here from the
per-layer re-run) for the training and test reviews, fits one logistic regression per layer on the
training features and reports its test accuracy. The mean of the word embeddings (a bag of words)
is probed too, as the reference for word-level cues. Writes probe.json and probe.png into the run
folder and logs the figure to its TensorBoard (when the run logged to TensorBoard).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from stacked_rnn.checkpoint import (CheckpointError, RunParser, UsageError, at_least, find_checkpoint, load,
                                    read_results, run_folder)
from stacked_rnn.diagnostics import final_states, layer_outputs
from stacked_rnn.loggers import has_tensorboard

USAGE = "%(prog)s ckpt=RUN_OR_CKPT [max_reviews=2000] [out=DIR] [archive=PATH | root=DIR] [cache_dir=DIR]"
EXAMPLES = """\
  python -m stacked_rnn.probe ckpt=outputs/2026-11-24/15-13-02
  python -m stacked_rnn.probe ckpt=RUN max_reviews=2000 archive=~/aclImdb_v1.tar.gz cache_dir=~/.cache/stacked_rnn"""


def build_parser() -> RunParser:
    parser = RunParser("python -m stacked_rnn.probe", USAGE, "Layer-wise probes: fit a logistic regression on each "
                       "layer's final hidden state (and on the mean\nword embedding) of the training reviews and print "
                       "its test accuracy. Writes probe.json and\nprobe.png into the run folder and logs the figure "
                       "to its TensorBoard, if it has one.", EXAMPLES)
    parser.add_key("max_reviews", "reviews of each split to probe (default: %(default)s)", type=at_least(2),
                   default=2000, metavar="N")
    parser.add_key("out", "folder for probe.json and probe.png (default: the run folder)", metavar="DIR")
    parser.add_key("archive", "the IMDB archive, when not where the run read it (data.archive)", metavar="PATH")
    parser.add_key("root", "an extracted aclImdb/ folder instead (data.root)", metavar="DIR")
    parser.add_key("cache_dir", "the token cache, when not the run's (data.cache_dir)", metavar="DIR")
    return parser


@torch.no_grad()
def extract(model, loader, max_reviews: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Per-layer final states [(N, D*H)] (index 0 = mean word embedding) and labels (N,) of up to max_reviews."""
    feats, labels, seen = [], [], 0
    for ids, lengths, y in loader:
        outputs = layer_outputs(model, ids, lengths)  # layers x (B, T, D*H)
        real = (torch.arange(ids.shape[1])[None, :] < lengths[:, None])[..., None]  # (B, T, 1)
        bag = (model.embedding(ids) * real).sum(1) / lengths[:, None]  # (B, E): mean word embedding
        feats.append([bag] + final_states(model, outputs, lengths))
        labels.append(y)
        seen += len(y)
        if seen >= max_reviews:
            break
    per_layer = [torch.cat([f[k] for f in feats])[:max_reviews].numpy() for k in range(len(feats[0]))]
    return per_layer, torch.cat(labels)[:max_reviews].numpy()


def fit_probes(train: list[np.ndarray], y_train: np.ndarray, test: list[np.ndarray], y_test: np.ndarray) -> list[float]:
    """Test accuracy of a standardised logistic regression fitted on each feature set."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    accs = []
    for x_train, x_test in zip(train, test):
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
        probe.fit(x_train, y_train)
        accs.append(float(probe.score(x_test, y_test)))
    return accs


def plot_probes(names: list[str], accs: list[float], title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 + 0.9 * len(names), 3.4))
    bars = ax.bar(range(len(names)), accs, color=["grey"] + ["C0"] * (len(names) - 1))
    ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.axhline(0.5, color="red", linestyle=":", label="chance")
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_ylim(0.4, 1.0)
    ax.set_ylabel("probe test accuracy")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def run_probe(ckpt: str, max_reviews: int = 2000, out: str | None = None, **data_overrides) -> dict:
    """Probe every layer of the checkpoint's model; returns (and writes) {"layers": [...], "accuracy": [...]}."""
    from hydra.utils import instantiate

    path = find_checkpoint(ckpt)
    model, data_state = load(path)
    run_dir = run_folder(path)
    data_cfg = read_results(run_dir)["config"]["data"]  # the probe rebuilds the run's training data
    data_cfg.update({k: v for k, v in data_overrides.items() if v is not None})
    datamodule = instantiate(data_cfg)
    datamodule.setup("fit")
    if datamodule.vocab != data_state["vocab"]:
        raise CheckpointError("the rebuilt data has a different vocabulary from the checkpoint's: give the "
                              "archive/root and cache_dir the run was trained with")
    train_feats, y_train = extract(model, datamodule.train_dataloader(), max_reviews)
    test_feats, y_test = extract(model, datamodule.test_dataloader(), max_reviews)
    accs = fit_probes(train_feats, y_train, test_feats, y_test)
    names = ["embeddings\n(mean)"] + [f"layer {k}" for k in range(len(accs) - 1)]
    result = {"checkpoint": str(path), "train_reviews": len(y_train), "test_reviews": len(y_test),
              "layers": [n.replace("\n", " ") for n in names], "accuracy": accs}
    hp = model.hparams
    fig = plot_probes(names, accs, f"{hp.cell} x {hp.layers}: logistic probe on each layer's final state")
    out_dir = Path(out) if out else run_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_dir / "probe.png", dpi=120)
    (out_dir / "probe.json").write_text(json.dumps(result, indent=2))
    if has_tensorboard(run_dir):  # the run logged to TensorBoard (logger=tensorboard, the default)
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(run_dir)) as writer:
            writer.add_figure("probe/accuracy_by_layer", fig)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        result = run_probe(args.ckpt, args.max_reviews, args.out, archive=args.archive, root=args.root,
                           cache_dir=args.cache_dir)
    except (UsageError, CheckpointError) as err:
        return parser.fail(err)
    print(f"probe: logistic regression on {result['train_reviews']} training reviews, "
          f"accuracy on {result['test_reviews']} test reviews\n\n| features | test accuracy |\n|---|---|")
    for name, acc in zip(result["layers"], result["accuracy"]):
        print(f"| {name} | {acc:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
