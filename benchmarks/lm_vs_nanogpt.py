"""Stacked RNNs beside nanoGPT's CPU "baby GPT" on tiny Shakespeare, at the same wall-clock.

nanoGPT's README (karpathy/nanoGPT, "I only have a macbook"): a 4-layer, 4-head, 128-d transformer, block 64,
batch 12, 2,000 iterations, about 0.8M parameters, reaches a validation loss of about 1.88 nats "in about 3 minutes"
on a laptop CPU; its loss is the mean cross-entropy over random 64-character windows of the held-out 10%. Each
candidate here trains for the same 3 minutes of wall-clock (trainer.max_time) on this machine, validating every
`--val-every` steps; the best checkpoint on validation bpc is scored on nanoGPT's measure (data.nano_block=64, each
window from a fresh state) on the validation half and the test half of that 10%.

    python benchmarks/lm_vs_nanogpt.py --data ../shared/data/tinyshakespeare.txt              # 5 x 3 min
    python benchmarks/lm_vs_nanogpt.py --data ... --minutes 1 --only lstm2                  # one candidate
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

NANOGPT_VAL_NATS = 1.88  # nanoGPT README, baby GPT on a laptop CPU, iteration 2000, ~3 minutes
NANOGPT_PARAMS = 0.8e6

# name: model overrides; every candidate stays under 0.8M parameters (checked from results.json)
CANDIDATES = {
    "lstm1": ["model.cell=lstm", "model.layers=1", "model.units=384"],
    "lstm2": ["model.cell=lstm", "model.layers=2", "model.units=224"],
    "lstm3": ["model.cell=lstm", "model.layers=3", "model.units=180"],
    "lstm2_small": ["model.cell=lstm", "model.layers=2", "model.units=128"],  # 230k: more steps in the same time
    "mingru3": ["model.cell=mingru", "model.layers=3", "model.units=384", "model.norm=layer", "model.residual=true"],
}


def run(name: str, overrides: list[str], data: str, minutes: float, val_every: int, out: Path,
        extra: tuple[str, ...] = ()) -> dict:
    folder = out / name
    command = [sys.executable, "-m", "stacked_rnn.train", "data=text_lm", f"data.path={data}", "data.window=64",
               "data.batch_size=32", f"data.windows_per_epoch={val_every * 32}", "data.nano_block=64",
               "model.embed_dim=64", "model.init=torch", "model.dropout=0.0", "model.embed_dropout=0.0",
               "model.head_dropout=0.0", "model.lr=2e-3", "model.lr_schedule=constant", "trainer.max_epochs=-1",
               f"+trainer.max_time=00:00:{int(minutes):02d}:{int(minutes % 1 * 60):02d}",
               "trainer.enable_progress_bar=false", "callbacks.gradient_flow=null", f"hydra.run.dir={folder}",
               *overrides, *extra]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    results = json.loads((folder / "results.json").read_text())
    best = min(results["history"], key=lambda h: h["val/bpc"])
    return {"name": name, "params": results["num_params"], "steps": results["epochs"] * val_every,
            "train_seconds": results["train_seconds"], "wall_seconds": round(time.perf_counter() - start, 1),
            "val_bpc": results["best_val_bpc"], "val_window_nats": best["val/window_nats"],
            "test_bpc": results["test_bpc"], "test_window_nats": results["test_window_nats"],
            "overrides": overrides}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="tiny Shakespeare (input.txt of char-rnn)")
    parser.add_argument("--minutes", type=float, default=3.0, help="training wall-clock per candidate")
    parser.add_argument("--val-every", type=int, default=250, help="steps between validations")
    parser.add_argument("--only", nargs="*", choices=sorted(CANDIDATES), help="candidates to run (default: all)")
    parser.add_argument("--out", default="outputs/lm_vs_nanogpt", help="run folders and lm_vs_nanogpt.json")
    parser.add_argument("--quick", action="store_true", help="CI size: one small candidate, seconds, 20k characters")
    args = parser.parse_args()
    extra = ()
    if args.quick:
        args.minutes, args.val_every, args.only = 0.1, 5, ["lstm2_small"]
        extra = ("data.limit=20000", "data.nano_windows=50")
    out = Path(args.out)
    rows = []
    for name in args.only or CANDIDATES:
        row = run(name, CANDIDATES[name], args.data, args.minutes, args.val_every, out, extra)
        if row["params"] > NANOGPT_PARAMS:
            raise SystemExit(f"{name} has {row['params']:,} parameters, more than nanoGPT's 0.8M: shrink it")
        rows.append(row)
        print(f"{name:8s} {row['params']:>8,} params {row['steps']:>6} steps {row['train_seconds']:6.0f} s  "
              f"val {row['val_bpc']:.3f} bpc {row['val_window_nats']:.3f} nats  test {row['test_bpc']:.3f} bpc "
              f"{row['test_window_nats']:.3f} nats", flush=True)
    best = min(rows, key=lambda r: r["val_bpc"])  # chosen on validation
    print(f"\nbest on validation: {best['name']}: {best['val_window_nats']:.3f} nats (val), "
          f"{best['test_window_nats']:.3f} (test) against nanoGPT's {NANOGPT_VAL_NATS} "
          f"({best['val_window_nats'] - NANOGPT_VAL_NATS:+.3f} nats)")
    out.mkdir(parents=True, exist_ok=True)
    (out / "lm_vs_nanogpt.json").write_text(json.dumps({"nanogpt_val_nats": NANOGPT_VAL_NATS, "minutes": args.minutes,
                                                        "rows": rows, "best": best["name"]}, indent=2))


if __name__ == "__main__":
    main()
