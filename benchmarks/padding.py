"""Epoch time of the default GRU with length bucketing against fixed-length padding, at data.max_len=512
and at full length (no truncation).

Each variant trains the package's own Trainer on the first --batches batches of a shuffled epoch (a random
sample of its batches; one more batch before them warms up) and scales the time per batch to the whole epoch. It also counts, over the whole
epoch, how many of the time steps the RNN runs are real tokens rather than padding.

    python benchmarks/padding.py --archive ../shared/data/aclImdb_labelled.tar.gz
    python benchmarks/padding.py --quick      # a generated archive, 3 batches per variant (CI-sized)

Variants (model.pack=auto runs padded on CPU and packed on CUDA for a unidirectional stack):
  bucketed          data.bucket=true: similar lengths batched together, padded to the batch's longest (default)
  bucketed+packed   the same batches as packed sequences (model.pack=always)
  random            data.bucket=false: shuffled batches padded to the batch's longest
  fixed             data.bucket=false data.fixed_length=true: every batch padded to max_len
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from stacked_rnn.train import build_trainer
from throughput import EpochTimer, training_only  # benchmarks/ is on sys.path when this script runs

VARIANTS = {
    "bucketed": [],
    "bucketed+packed": ["model.pack=always"],
    "random": ["data.bucket=false"],
    "fixed": ["data.bucket=false", "data.fixed_length=true"],
}
FULL_LENGTH = 100_000  # longer than any review: nothing is cut (fixed padding then pads to the longest review)


def real_fraction(loader) -> tuple[float, int]:
    """Share of the computed time steps that are real tokens, over one epoch of batches; and the batch count."""
    real = computed = batches = 0
    for ids, lengths, _ in loader:
        real += int(lengths.sum())
        computed += ids.numel()
        batches += 1
    return real / computed, batches


def time_variant(overrides: list[str], device: str, n_batches: int, tmp: Path) -> dict:
    with initialize_config_module("stacked_rnn.conf", version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, f"output_dir={tmp}", *training_only(device),
                                          f"+trainer.limit_train_batches={n_batches + 1}",
                                          "trainer.enable_progress_bar=false"])
    torch.set_flush_denormal(True)
    L.seed_everything(0, verbose=False)
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    if dm.fixed_length and dm.max_len == FULL_LENGTH:  # "full length" fixed padding: to the longest review
        dm.max_len = int(max(ds.lengths.max() for ds in dm.datasets.values()))
    fraction, epoch_batches = real_fraction(dm.train_dataloader())
    model = instantiate(cfg.model, num_tokens=dm.num_tokens)
    timer = EpochTimer(after_batch=0)  # batch 0 warms up (allocations, lazy init)
    trainer = build_trainer(cfg, tmp)
    trainer.callbacks.append(timer)
    trainer.fit(model, datamodule=dm)
    per_batch = timer.seconds / n_batches
    return dict(real=fraction, per_batch=per_batch, epoch=per_batch * epoch_batches,
                samples_per_s=len(dm.datasets["train"]) / (per_batch * epoch_batches))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", type=Path, help="an aclImdb .tar.gz (default with --quick: generated)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    parser.add_argument("--batches", type=int, default=12, help="batches timed per variant")
    parser.add_argument("--max-lens", default=f"512,{FULL_LENGTH}", help="comma-separated data.max_len values")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {list(VARIANTS)}")
    parser.add_argument("--cache-dir", type=Path, help="token cache (default: the package's, or a temporary one)")
    parser.add_argument("--quick", action="store_true", help="a small generated archive, 3 batches per variant")
    args = parser.parse_args()
    if unknown := [v for v in args.variants.split(",") if v not in VARIANTS]:
        parser.error(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        archive, cache, extra = args.archive, args.cache_dir, []
        if args.quick or archive is None:
            from quick import quick_archive

            archive, cache, args.batches = quick_archive(tmp, per_class=400), tmp / "cache", 3
            extra = ["data.val_size=100"]
        for max_len in map(int, args.max_lens.split(",")):
            for name in args.variants.split(","):
                overrides = [*VARIANTS[name], f"data.max_len={max_len}", f"data.archive={archive}",
                             f"data.cache_dir={cache or 'null'}", *extra]
                r = time_variant(overrides, args.device, args.batches, tmp)
                rows.append(dict(max_len="full" if max_len == FULL_LENGTH else max_len, variant=name, **r))
                print(f"  max_len {rows[-1]['max_len']} {name}: {r['per_batch']:.3f} s/batch, "
                      f"epoch ~{r['epoch']:.0f} s, real steps {r['real']:.1%}", flush=True)
    print(f"\ndevice {args.device} ({torch.get_num_threads()} threads), default GRU 2x128, batch 64, "
          f"{args.batches} batches timed per variant")
    print("| max_len | variant | real steps | s/batch | epoch (s) | samples/s | speed-up of bucketed |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        base = next((b for b in rows if b["max_len"] == r["max_len"] and b["variant"] == "bucketed"), None)
        speedup = f"{r['epoch'] / base['epoch']:.2f}x" if base else "-"
        print(f"| {r['max_len']} | {r['variant']} | {r['real']:.1%} | {r['per_batch']:.3f} | {r['epoch']:.0f} | "
              f"{r['samples_per_s']:.0f} | {speedup} |")


if __name__ == "__main__":
    main()
