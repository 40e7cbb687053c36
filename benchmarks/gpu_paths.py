"""Which path trains fastest: the package's packed stack, its padded stack (model.pack=never), and the padded stack
fed from the device (data.on_device=true), against the bare PyTorch loop of throughput.py, at 32-true.

For each model, one warm-up pass and one timed pass of each variant over the first N batches of epoch 0 (the same
batches for every variant):

  bare                 throughput.py's hand-written loop over those batches, made beforehand (packed on CUDA, padded
                       on CPU), pinned
  packed               the package's Trainer (python -m stacked_rnn.train's), model.pack=always, batches from the
                       DataLoader as training reads them (collated on the host each step, pinned, copied)
  unpacked             the same with model.pack=never: padded input, the last state gathered on the device
  unpacked+on_device   the same with data.on_device=true: the split moved to the device once, each batch cut there

Ratios are samples/s over the bare loop's. One run each: a first look, not a distribution (throughput.py repeats).
--fastest FILE writes the overrides of the fastest package variant of the first model (for time_to_accuracy.py).

    python benchmarks/gpu_paths.py --archive .data/aclImdb_labelled.tar.gz --device cuda --json paths.json
    python benchmarks/gpu_paths.py --quick      # a generated archive, a few batches (CI-sized, the CPU)
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from stacked_rnn.train import build_trainer
from throughput import MODELS, BareRNN, EpochTimer, bare_epoch, training_only

VARIANTS = {  # name: overrides of the package's config
    "packed": ["model.pack=always", "data.on_device=false"],
    "unpacked": ["model.pack=never", "data.on_device=false"],
    "unpacked+on_device": ["model.pack=never", "data.on_device=true"],
}


def package_pass(cfg, state: dict, datamodule, output_dir: Path) -> float:
    """One pass over the first trainer.limit_train_batches batches with the package's own Trainer, starting from
    the weights in `state`; its seconds, from the epoch's start (the loader's iterator or the on-device epoch order
    included) to the end of its last step."""
    model = instantiate(cfg.model, num_tokens=datamodule.num_tokens)
    model.load_state_dict(state)
    timer = EpochTimer()
    trainer = build_trainer(cfg, output_dir)
    trainer.callbacks.append(timer)
    trainer.fit(model, datamodule=datamodule)
    return timer.seconds


def compare(name: str, archive: Path, cache, device: str, n_batches: int, tmp: Path, extra: list[str],
            passes: int = 2) -> list[dict]:
    """Rows (model, variant, samples/s, ratio to bare) for one model."""
    overrides, default_batches = MODELS[name]
    n_batches = n_batches or default_batches
    base = [*overrides, f"data.archive={archive}", f"data.cache_dir={cache}", f"output_dir={tmp / name}",
            *training_only(device), "trainer.precision=32-true", f"+trainer.limit_train_batches={n_batches}", *extra]
    with initialize_config_module("stacked_rnn.conf", version_base="1.3"):
        configs = {v: compose("train", overrides=[*base, *o]) for v, o in VARIANTS.items()}
    torch.set_flush_denormal(True)  # as stacked_rnn.train.run does
    L.seed_everything(0, verbose=False)
    modules = {}
    for variant, cfg in configs.items():
        on_device = cfg.data.on_device
        if on_device not in modules:
            modules[on_device] = instantiate(cfg.data)
            modules[on_device].prepare_data()
            modules[on_device].setup("fit")
    host = modules[False]
    batches = [b for _, b in zip(range(n_batches), host.train_dataloader())]  # epoch 0's first batches, as trained
    samples = sum(len(b[2]) for b in batches)
    cfg = configs["packed"]
    state = instantiate(cfg.model, num_tokens=host.num_tokens).state_dict()  # every variant starts here
    seconds = {}
    for _ in range(passes):  # a warm-up pass of every variant (cuDNN plans, allocator, lazy init), then the timed one
        bare = BareRNN(host.num_tokens, **cfg.model).to(device)
        bare.load_state_dict(state)
        seconds["bare"] = bare_epoch(bare, batches, torch.device(device), cfg)
        for variant, vcfg in configs.items():
            seconds[variant] = package_pass(vcfg, state, modules[vcfg.data.on_device], tmp / name)
    rows = []
    for variant in ("bare", *VARIANTS):
        rate = samples / seconds[variant]
        rows.append(dict(model=name, variant=variant, batches=len(batches), samples=samples, device=device,
                         seconds=seconds[variant], samples_per_s=rate, ratio=seconds["bare"] / seconds[variant],
                         overrides=VARIANTS.get(variant, [])))
        print(f"  {name} {variant}: {rate:.1f} samples/s, ratio to bare {rows[-1]['ratio']:.3f}", flush=True)
    return rows


def environment(device: str) -> str:
    line = f"torch {torch.__version__}, lightning {L.__version__}, device {device}"
    if device == "cuda":
        line += f" ({torch.cuda.get_device_name()}, cuDNN {torch.backends.cudnn.version()})"
    return line + f", {torch.get_num_threads()} CPU threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", type=Path, help="an aclImdb .tar.gz (default with --quick: generated)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    parser.add_argument("--models", default="default,seed", help=f"comma-separated, from {sorted(MODELS)}")
    parser.add_argument("--batches", type=int, help="batches per pass (default: throughput.py's per model)")
    parser.add_argument("--cache-dir", type=Path, help="token cache (default: the package's, or a temporary one)")
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--fastest", type=Path, help="write the fastest package variant's overrides here")
    parser.add_argument("--quick", action="store_true", help="a small generated archive, 6 batches, no warm-up pass")
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    names = args.models.split(",")
    if unknown := [n for n in names if n not in MODELS]:
        parser.error(f"--models: unknown {unknown}; choose from {sorted(MODELS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here")
    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        archive, cache, extra = args.archive, args.cache_dir or "null", []
        if args.quick or archive is None:
            from quick import quick_archive

            archive, cache = quick_archive(tmp, per_class=200), tmp / "cache"
            args.batches = args.batches or 6
            extra = ["data.val_size=100"]
        for name in names:  # results are written after each model: a run stopped at its cap keeps what it measured
            rows += compare(name, archive, cache, args.device, args.batches, tmp, extra, 1 if args.quick else 2)
            report(rows, names[0], args, time.perf_counter() - start)


def report(rows: list[dict], first_model: str, args, seconds: float) -> None:
    """The table so far, the fastest package variant of the first model, and the files asked for."""
    passes = "one timed pass per variant, no warm-up" if args.quick else "one warm-up and one timed pass per variant"
    print(f"\n{environment(args.device)}; precision 32-true; {passes} ({seconds:.0f} s so far)")
    print("| model | variant | batches | samples/s | ratio to bare |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['variant']} | {r['batches']} | {r['samples_per_s']:.1f} | {r['ratio']:.3f} |")
    fastest = max((r for r in rows if r["model"] == first_model and r["variant"] != "bare"),
                  key=lambda r: r["samples_per_s"])
    print(f"fastest package variant ({first_model}): {fastest['variant']} ({' '.join(fastest['overrides'])})",
          flush=True)
    if args.json:
        args.json.write_text(json.dumps({"environment": environment(args.device), "rows": rows}, indent=1))
    if args.fastest:
        args.fastest.write_text(" ".join(fastest["overrides"]) + "\n")

if __name__ == "__main__":
    main()
