"""Training speed of minGRU and minLSTM (each scan) against nn.GRU and nn.LSTM of the same width, in tokens/s.

One layer, Embedding(V, H) -> cell(H, H) -> linear head on the last step -> BCE on random labels, Adam; one timed
step is forward + backward + optimizer step on a random (B, T) batch of token ids. The models take turns within
each repeat (so drift in the machine's speed hits all of them alike); the table gives the median over repeats
and the ratio to nn.GRU's tokens/s at the same T, measured in the same run. Denormals are flushed, as
stacked_rnn.train does (a gradient that fades along 4096 steps otherwise runs through denormal floats).

    python benchmarks/minimal_cells_speed.py                       # CPU: T = 256, 1024, 4096, B = 16, H = 64
    python benchmarks/minimal_cells_speed.py --device cuda
    python benchmarks/minimal_cells_speed.py --lengths 4096 --batch 32 --hidden 128 --json speed.json
    python benchmarks/minimal_cells_speed.py --quick               # seconds: tiny sizes, a smoke test
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from stacked_rnn.cells import MinGRU, MinLSTM

MODELS = {  # name: (module class, extra constructor arguments)
    "gru": (nn.GRU, {}),
    "lstm": (nn.LSTM, {}),
    "mingru-chunked": (MinGRU, {"scan": "chunked"}),
    "mingru-log": (MinGRU, {"scan": "log"}),
    "minlstm-chunked": (MinLSTM, {"scan": "chunked"}),
    "minlstm-log": (MinLSTM, {"scan": "log"}),
}


class OneLayer(nn.Module):
    """Embedding -> one recurrent layer -> a linear head on the last step's output: logits (B,)."""

    def __init__(self, name: str, vocab: int, hidden: int):
        super().__init__()
        cell, extra = MODELS[name]
        self.embedding = nn.Embedding(vocab, hidden)
        self.rnn = cell(hidden, hidden, batch_first=True, **extra)
        self.head = nn.Linear(hidden, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embedding(ids))  # (B, T, H)
        return self.head(out[:, -1]).squeeze(-1)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def trainer(name: str, args, T: int, device: torch.device):
    """A closure running `steps` training steps of model `name` at length T; returns their seconds."""
    torch.manual_seed(0)
    model = OneLayer(name, args.vocab, args.hidden).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    ids = torch.randint(0, args.vocab, (args.batch, T), device=device)
    labels = torch.randint(0, 2, (args.batch,), device=device).float()

    def run(steps: int) -> float:
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            loss = F.binary_cross_entropy_with_logits(model(ids), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        sync(device)
        return time.perf_counter() - start

    return run


def measure(args, T: int, device: torch.device) -> list[dict]:
    """tokens/s of every model at length T: median over repeats, the models taking turns within a repeat."""
    runs = {name: trainer(name, args, T, device) for name in args.models}
    for run in runs.values():
        run(args.warmup)
    seconds = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            seconds[name].append(run(args.steps) / args.steps)
    tokens = args.batch * T
    rows = [dict(T=T, model=name, ms_per_step=1e3 * statistics.median(s), tokens_per_s=tokens / statistics.median(s))
            for name, s in seconds.items()]
    base = next((r["tokens_per_s"] for r in rows if r["model"] == "gru"), None)
    for r in rows:
        r["vs_gru"] = r["tokens_per_s"] / base if base else None
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--lengths", default="256,1024,4096", help="comma-separated sequence lengths T")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=64, help="H: embedding and hidden width")
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {list(MODELS)}")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per model and repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's, one per core)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--quick", action="store_true", help="T = 32, 64, B = 4, H = 16, one step: a smoke test")
    args = parser.parse_args()
    args.models = args.models.split(",")
    if unknown := [m for m in args.models if m not in MODELS]:
        parser.error(f"--models: unknown {unknown}; choose from {list(MODELS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here")
    if args.quick:
        args.lengths, args.batch, args.hidden, args.steps, args.repeats, args.warmup = "32,64", 4, 16, 1, 2, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    device = torch.device(args.device)
    rows = []
    for T in map(int, args.lengths.split(",")):
        rows += measure(args, T, device)
        print(f"  T={T}: " + ", ".join(f"{r['model']} {r['ms_per_step']:.1f} ms" for r in rows if r["T"] == T),
              flush=True)
    print(f"\ndevice {args.device} ({torch.get_num_threads()} threads), torch {torch.__version__}, B={args.batch}, "
          f"H={args.hidden}, V={args.vocab}, one layer; median of {args.repeats} repeats x {args.steps} steps")
    print("| T | model | ms/step | tokens/s | vs nn.GRU |\n|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['vs_gru']:.2f}x" if r["vs_gru"] else "-"
        print(f"| {r['T']} | {r['model']} | {r['ms_per_step']:.1f} | {r['tokens_per_s']:,.0f} | {ratio} |")
    if args.json:
        args.json.write_text(json.dumps(dict(device=args.device, threads=torch.get_num_threads(),
                                             torch=torch.__version__, batch=args.batch, hidden=args.hidden,
                                             vocab=args.vocab, rows=rows), indent=1))


if __name__ == "__main__":
    main()
