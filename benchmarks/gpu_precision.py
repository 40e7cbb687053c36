"""Which dtype does the fused RNN really run in under `trainer=gpu` (bf16-mixed autocast), and what do bf16-mixed,
16-mixed and 32-true cost? Part of benchmarks/gpu_check.sh (issue 21).

1. One forward and backward of the default model under torch.autocast(bf16) and (fp16): the dtype of the RNN's
   output (a forward hook on model.rnn) and of its weight gradients. Autocast's RNN wrapper has cast to float16
   in some PyTorch versions whatever dtype was asked for, which under bf16-mixed would mean fp16 with no scaler.
2. The default model trained for --steps optimizer steps under each precision with a plain lightning.Trainer
   (same clipping, no validation, no logger): the mean training loss of the last 20 steps and steps/s after
   --warmup steps (CUDA-synchronised clock). 32-true runs with TF32 matmuls allowed.

    python benchmarks/gpu_precision.py --archive .data/aclImdb_labelled.tar.gz --out precision.json   # on a GPU
    python benchmarks/gpu_precision.py --quick            # CPU, generated archive, a few steps (the dry run)
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

from stacked_rnn.tasks.batches import to_device_keeping_lengths

QUICK = ["data.val_size=20", "data.vocab_size=100", "data.max_len=32", "model.units=16", "model.embed_dim=16",
         "data.batch_size=8"]


def rnn_dtypes(model, batch, device: torch.device, dtype: torch.dtype) -> dict:
    """Output and weight-gradient dtypes of model.rnn for one step under autocast(dtype)."""
    seen = {}

    def hook(module, inputs, output):
        seen["rnn_output"] = str(output[0].data.dtype)  # a PackedSequence's .data, or the tensor's own

    handle = model.rnn.register_forward_hook(hook)
    model.zero_grad(set_to_none=True)
    ids, lengths, labels = to_device_keeping_lengths(batch, device)
    with torch.autocast(device.type, dtype=dtype):
        logits = model(ids, lengths)  # (B,)
        loss = model.loss(logits, labels)
    loss.backward()
    handle.remove()
    grads = {name: str(p.grad.dtype) for name, p in model.rnn.named_parameters() if p.grad is not None}
    return {"autocast": str(dtype), "rnn_output": seen.get("rnn_output"), "logits": str(logits.dtype),
            "weight_grads": sorted(set(grads.values())), "param_dtype": str(next(model.rnn.parameters()).dtype)}


class StepClock(L.Callback):
    """Losses of every step (kept on the device: no sync per step) and a synchronised clock after the warm-up."""

    def __init__(self, warmup: int):
        self.warmup, self.losses, self.start, self.timed_steps = warmup, [], None, 0

    def _sync(self, module):
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].detach().float())
        if trainer.global_step == self.warmup:
            self._sync(module)
            self.start = time.perf_counter()
        elif self.start is not None:
            self.timed_steps += 1

    def on_train_end(self, trainer, module):
        self._sync(module)
        self.seconds = time.perf_counter() - self.start if self.start else float("nan")


def train_steps(cfg, dm, precision: str, steps: int, warmup: int, accelerator: str) -> dict:
    L.seed_everything(cfg.seed, verbose=False)
    model = instantiate(cfg.model, num_tokens=dm.num_tokens)
    clock = StepClock(warmup)
    trainer = L.Trainer(accelerator=accelerator, devices=1, precision=precision, max_steps=steps,
                        gradient_clip_val=cfg.trainer.gradient_clip_val, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[clock])
    trainer.fit(model, datamodule=dm)
    losses = torch.stack(clock.losses).cpu()
    return {"precision": precision, "steps": len(losses), "final_loss": float(losses[-20:].mean()),
            "first_loss": float(losses[:20].mean()), "finite": bool(torch.isfinite(losses).all()),
            "steps_per_s": clock.timed_steps / clock.seconds if clock.seconds else float("nan"),
            "timed_steps": clock.timed_steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", type=Path, help="an aclImdb .tar.gz")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per precision")
    parser.add_argument("--warmup", type=int, default=30, help="steps before the clock starts")
    parser.add_argument("--precisions", default="bf16-mixed,16-mixed,32-true")
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    parser.add_argument("--quick", action="store_true", help="CPU, a generated archive, 12 steps (a dry run)")
    parser.add_argument("overrides", nargs="*", help="config overrides, as for python -m stacked_rnn.train")
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    cuda = torch.cuda.is_available() and not args.quick
    device, accelerator = torch.device("cuda" if cuda else "cpu"), "gpu" if cuda else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # TF32 allowed for 32-true
    with tempfile.TemporaryDirectory() as tmp:
        overrides = list(args.overrides)
        if args.quick:
            from quick import quick_overrides

            overrides = [*quick_overrides(Path(tmp), per_class=60), *QUICK, *overrides]
            args.steps, args.warmup = 12, 2
            args.precisions = "bf16-mixed,32-true"  # 16-mixed (a GradScaler) needs CUDA
        elif args.archive:
            overrides.append(f"data.archive={args.archive}")
        with initialize_config_module("stacked_rnn.conf", version_base="1.3"):
            cfg = compose("train", overrides=overrides)
        dm = instantiate(cfg.data)
        start = time.perf_counter()
        dm.prepare_data()
        dm.setup("fit")
        prepare_seconds = time.perf_counter() - start
        model = instantiate(cfg.model, num_tokens=dm.num_tokens).to(device)
        batch = next(iter(dm.train_dataloader()))
        dtypes = [rnn_dtypes(model, batch, device, dtype) for dtype in (torch.bfloat16, torch.float16)
                  if cuda or dtype == torch.bfloat16]
        runs = [train_steps(cfg, dm, p, args.steps, args.warmup, accelerator) for p in args.precisions.split(",")]
    result = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
              "cudnn": torch.backends.cudnn.version() if cuda else None, "data_prepare_seconds": prepare_seconds,
              "model": f"{cfg.model.cell} x {cfg.model.layers}, {cfg.model.units} units, batch {cfg.data.batch_size}",
              "dtypes": dtypes, "runs": runs}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    print(f"device {result['device']}, torch {result['torch']}, cuDNN {result['cudnn']}, model {result['model']}, "
          f"data ready in {prepare_seconds:.1f} s")
    for d in dtypes:
        print(f"autocast {d['autocast']}: rnn output {d['rnn_output']}, logits {d['logits']}, "
              f"weight grads {d['weight_grads']}, params {d['param_dtype']}")
    print("| precision | steps | first loss | final loss | steps/s |")
    print("|---|---|---|---|---|")
    for r in runs:
        print(f"| {r['precision']} | {r['steps']} | {r['first_loss']:.4f} | {r['final_loss']:.4f} | {r['steps_per_s']:.1f} |")


if __name__ == "__main__":
    main()
