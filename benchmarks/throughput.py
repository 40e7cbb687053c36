"""Training throughput of the package against a bare PyTorch loop: same model, same batches, alternating.

Each repeat trains one pass over the same fixed batches twice: once through the package (the Trainer
that `python -m stacked_rnn.train` builds, with its callbacks, logging and progress bar) and once
through a hand-written loop (embedding -> the same fused nn.GRU/RNN -> linear, Adam, clipping, the
same schedule; no Lightning, no Hydra). Both start from the same weights. The first repeat warms up
and is dropped; the ratio printed is the median of package/bare samples/s over the other repeats.

    python benchmarks/throughput.py --archive ../shared/data/aclImdb_labelled.tar.gz            # CPU
    python benchmarks/throughput.py --archive ../shared/data/aclImdb_labelled.tar.gz --device cuda
    python benchmarks/throughput.py --quick   # a generated archive, few batches (CI-sized)

Models: `default` is the package's default GRU 2x128 (emb 128) at data.max_len=256, batch 64;
`seed` is experiment=seed_keras (2-layer SimpleRNN(5), 100 tokens, batch 32).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torch.utils.data import DataLoader

from stacked_rnn.tasks.batches import to_device_keeping_lengths
from stacked_rnn.train import build_trainer

MODELS = {  # name: (overrides, batches per pass: a few seconds each on CPU)
    "default": (["data.max_len=256"], 60),
    "seed": (["experiment=seed_keras"], 400),
}


class BareRNN(nn.Module):
    """What one writes by hand: embedding -> fused RNN -> the state at each review's real last token -> linear.
    Padded on CPU, packed on CUDA, as the package runs a unidirectional stack."""

    def __init__(self, num_tokens, cell, layers, units, embed_dim, dropout, embed_dropout, head_dropout, **_):
        super().__init__()
        self.embedding = nn.Embedding(num_tokens, embed_dim, padding_idx=0)
        self.embed_dropout, self.head_dropout = nn.Dropout(embed_dropout), nn.Dropout(head_dropout)
        self.rnn = getattr(nn, cell.upper())(embed_dim, units, num_layers=layers, dropout=dropout if layers > 1 else 0,
                                             batch_first=True)
        self.classifier = nn.Linear(units, 1)

    def forward(self, ids, lengths):  # ids (B, T) on the device, lengths (B,) on the CPU, longest first
        x = self.embed_dropout(self.embedding(ids))  # (B, T, E)
        if ids.is_cuda:
            out, _ = self.rnn(pack_padded_sequence(x, lengths, batch_first=True))
            out, _ = pad_packed_sequence(out, batch_first=True)  # (B, T, H)
        else:
            out, _ = self.rnn(x)  # (B, T, H)
        last = out[torch.arange(len(out), device=out.device), lengths.to(out.device, non_blocking=True) - 1]  # (B, H)
        return self.classifier(self.head_dropout(last)).squeeze(-1)  # (B,)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EpochTimer(L.Callback):
    """Seconds from the start of the training epoch (or the end of batch `after_batch`) to the end of its last
    step: no checkpoint, no validation."""

    def __init__(self, after_batch: int | None = None):
        self.after_batch = after_batch
        self.start = self.seconds = None

    def on_train_epoch_start(self, trainer, pl_module):
        sync(pl_module.device)
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == self.after_batch:
            sync(pl_module.device)
            self.start = time.perf_counter()
        if batch_idx == trainer.num_training_batches - 1:
            sync(pl_module.device)
            self.seconds = time.perf_counter() - self.start


class FixedBatches(L.LightningDataModule):
    """The same pre-made batches every epoch, placed on the device as IMDBDataModule places its own."""

    def __init__(self, batches: list):
        super().__init__()
        self.batches = batches

    def train_dataloader(self):
        return DataLoader(self.batches, batch_size=None, collate_fn=lambda batch: batch)

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return to_device_keeping_lengths(batch, device)


def training_only(device: str) -> list[str]:
    """Overrides for a timed run of the package's Trainer: one epoch on `device`, no validation, no checkpoints."""
    return [f"trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}", "trainer.max_epochs=1",
            "+trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0", "+trainer.enable_checkpointing=false",
            "callbacks.model_checkpoint=null", "callbacks.save_for_resume=null", "data.progress=false",
            "trainer.enable_model_summary=false"]


def package_epoch(cfg, model, batches, output_dir: Path) -> float:
    """One pass over `batches` with the package's own Trainer; returns its seconds."""
    timer = EpochTimer()
    trainer = build_trainer(cfg, output_dir)
    trainer.callbacks.append(timer)
    trainer.fit(model, datamodule=FixedBatches(batches))
    return timer.seconds


def bare_epoch(model, batches, device, cfg) -> float:
    """One pass over `batches` in a plain loop: the same fused Adam, clipping and lr schedule as the package."""
    m = cfg.model
    optimizer = torch.optim.Adam(model.parameters(), lr=m.lr, eps=m.adam_eps, fused=True)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=len(batches)) \
        if m.lr_schedule == "cosine" else None
    clip = cfg.trainer.gradient_clip_val
    model.train()
    sync(device)
    start = time.perf_counter()
    for ids, lengths, labels in batches:
        ids, labels = ids.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.trainer.precision == "bf16-mixed"):
            logits = model(ids, lengths)
        loss = F.binary_cross_entropy_with_logits(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        if schedule:
            schedule.step()
    sync(device)
    return time.perf_counter() - start


def compare(name: str, overrides: list[str], archive: Path, cache: Path, device: str, n_batches: int,
            repeats: int, tmp: Path, extra: list[str], compile_bare: bool = False) -> dict:
    """Alternate package and bare passes over the same batches; per-repeat samples/s and their ratio."""
    with initialize_config_module("stacked_rnn.conf", version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, f"data.archive={archive}", f"data.cache_dir={cache}",
                                          f"output_dir={tmp / name}", *training_only(device), *extra])
    torch.set_flush_denormal(True)  # as stacked_rnn.train.run does
    L.seed_everything(0, verbose=False)
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    batches = [b for _, b in zip(range(n_batches), dm.train_dataloader())]  # pinned on CUDA (data.pin_memory)
    samples = sum(len(b[2]) for b in batches)
    model = instantiate(cfg.model, num_tokens=dm.num_tokens)
    bare = BareRNN(dm.num_tokens, **cfg.model).to(device)
    bare.load_state_dict(model.state_dict())  # the same starting weights
    if compile_bare:
        bare = torch.compile(bare, dynamic=True)  # batch lengths vary: one graph for all of them
    rows = []
    for r in range(repeats + 1):  # repeat 0 warms up (allocator, cuDNN plans, lazy init) and is dropped
        pkg_s = package_epoch(cfg, model, batches, tmp / name)
        bare_s = bare_epoch(bare, batches, torch.device(device), cfg)
        if r:
            rows.append(dict(package=samples / pkg_s, bare=samples / bare_s, ratio=bare_s / pkg_s))
        print(f"  {name} repeat {r}{' (warm-up)' if not r else ''}: package {samples / pkg_s:7.1f} samples/s, "
              f"bare {samples / bare_s:7.1f} samples/s, ratio {bare_s / pkg_s:.3f}", flush=True)
    return dict(model=name, batches=len(batches), samples=samples, device=device, threads=torch.get_num_threads(),
                package=statistics.median(r["package"] for r in rows), bare=statistics.median(r["bare"] for r in rows),
                ratio=statistics.median(r["ratio"] for r in rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", type=Path, help="an aclImdb .tar.gz (default with --quick: generated)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    parser.add_argument("--models", default="default,seed", help=f"comma-separated, from {sorted(MODELS)}")
    parser.add_argument("--batches", type=int, help="batches per pass (default: 60 for default, 400 for seed)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (after one warm-up)")
    parser.add_argument("--cache-dir", type=Path, help="token cache (default: the package's, or a temporary one)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's, one per core)")
    parser.add_argument("--compile-bare", action="store_true",
                        help="torch.compile the bare loop's model: does compiling help? (ratio < 1: yes)")
    parser.add_argument("--quick", action="store_true", help="a small generated archive, 10 batches, 3 repeats")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no per-fit banners between the timings
    names = args.models.split(",")
    if unknown := [n for n in names if n not in MODELS]:
        parser.error(f"--models: unknown {unknown}; choose from {sorted(MODELS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        archive, cache = args.archive, args.cache_dir
        if args.quick or archive is None:
            from quick import quick_archive

            archive = quick_archive(tmp, per_class=400)
            args.batches, args.repeats, cache = 10, min(args.repeats, 3), tmp / "cache"
        extra = ["data.val_size=100"] if args.quick or args.archive is None else []
        results = [compare(n, MODELS[n][0], archive, cache or "null", args.device, args.batches or MODELS[n][1],
                           args.repeats, tmp, extra, args.compile_bare) for n in names]
    print(f"\ndevice {args.device} ({torch.get_num_threads()} threads), torch {torch.__version__}, "
          f"median of {args.repeats} repeats{', bare model torch.compiled' if args.compile_bare else ''}")
    print("| model | batches | package samples/s | bare samples/s | ratio package/bare |\n|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['batches']} | {r['package']:.1f} | {r['bare']:.1f} | {r['ratio']:.3f} |")


if __name__ == "__main__":
    main()
