"""Wall time of training until test accuracy reaches a target: the package's Trainer, from a warm token cache.

After every epoch the model is scored on the official test set; the clock stops while it is scored, so the
time counted is data loading, model building, training and validation only. Training ends at the first
epoch whose test accuracy reaches --target (or at trainer.max_epochs). Any config override may follow.

    python benchmarks/time_to_accuracy.py --target 0.89 experiment=best_imdb data.archive=../shared/data/aclImdb_labelled.tar.gz
    python benchmarks/time_to_accuracy.py --quick    # a generated archive and a tiny model (CI-sized)
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from stacked_rnn.tasks.batches import to_device_keeping_lengths
from stacked_rnn.train import build_trainer

QUICK = ["data.val_size=100", "data.vocab_size=100", "data.max_len=32", "model.units=16", "model.embed_dim=16",
         "model.embed_dropout=0.0", "model.lr=1e-2", "data.batch_size=16", "trainer.max_epochs=8"]


@torch.no_grad()
def test_accuracy(model, loader, precision_plugin) -> float:
    """Accuracy on every batch of loader, under the trainer's own precision context (autocast when mixed)."""
    was_training = model.training
    model.eval()
    hits = count = 0
    for batch in loader:
        ids, lengths, labels = to_device_keeping_lengths(batch, model.device)
        with precision_plugin.forward_context():
            logits = model(ids, lengths)
        hits += int(((logits > 0) == labels.bool()).sum())
        count += len(labels)
    model.train(was_training)
    return hits / count


class StopAtTestAccuracy(L.Callback):
    """After each validation, score the test set with the clock paused; stop training once it reaches target."""

    def __init__(self, datamodule, target: float, start: float):
        self.datamodule, self.target, self.start, self.paused = datamodule, target, start, 0.0
        self.epochs: list[dict] = []

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        elapsed = time.perf_counter() - self.start - self.paused
        pause = time.perf_counter()
        acc = test_accuracy(pl_module, self.datamodule.test_dataloader(), trainer.precision_plugin)
        self.paused += time.perf_counter() - pause
        val = float(trainer.callback_metrics.get("val/acc", float("nan")))
        self.epochs.append(dict(epoch=trainer.current_epoch + 1, seconds=elapsed, val=val, test=acc))
        print(f"  epoch {trainer.current_epoch + 1}: {elapsed:7.1f} s, val acc {val:.4f}, test acc {acc:.4f}", flush=True)
        if acc >= self.target:
            trainer.should_stop = True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=float, default=0.89, help="test accuracy to reach")
    parser.add_argument("--quick", action="store_true", help="a generated archive and a tiny model")
    parser.add_argument("overrides", nargs="*", help="config overrides, as for python -m stacked_rnn.train")
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        overrides = list(args.overrides)
        if args.quick:
            from quick import quick_overrides

            overrides = [*quick_overrides(tmp, per_class=200), *QUICK, *overrides]
        with initialize_config_module("stacked_rnn.conf", version_base="1.3"):
            cfg = compose("train", overrides=[*overrides, f"output_dir={tmp / 'run'}", "trainer.enable_progress_bar=false",
                                              "trainer.enable_model_summary=false"])
        torch.set_flush_denormal(True)
        L.seed_everything(cfg.seed, verbose=False)
        dm = instantiate(cfg.data)
        dm.prepare_data()  # a cold cache is filled before the clock starts
        start = time.perf_counter()
        dm.setup("fit")
        model = instantiate(cfg.model, num_tokens=dm.num_tokens)
        stopper = StopAtTestAccuracy(dm, args.target, start)
        trainer = build_trainer(cfg, tmp / "run")
        trainer.callbacks.append(stopper)
        trainer.fit(model, datamodule=dm)
    device = str(trainer.strategy.root_device)
    reached = next((e for e in stopper.epochs if e["test"] >= args.target), None)
    print(f"\ndevice {device}, precision {trainer.precision}, overrides: {' '.join(args.overrides) or '(none)'}")
    if reached:
        print(f"test accuracy {reached['test']:.4f} >= {args.target} after epoch {reached['epoch']}: "
              f"{reached['seconds']:.1f} s of training (test scoring excluded)")
    else:
        best = max(stopper.epochs, key=lambda e: e["test"])
        print(f"test accuracy never reached {args.target}: best {best['test']:.4f} after epoch {best['epoch']} "
              f"({best['seconds']:.1f} s)")
        sys.exit(1)


if __name__ == "__main__":
    main()
