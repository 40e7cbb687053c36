"""Print the positive-sentiment probability of texts with a trained checkpoint (examples: EXAMPLES, or --help).

The checkpoint is loaded by stacked_rnn.checkpoint (weights only, never a class named inside the file); its
vocabulary and truncation settings are the ones used in training.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from stacked_rnn.checkpoint import CheckpointError, RunParser, UsageError, at_least, find_checkpoint, load
from stacked_rnn.data import collate, truncate_ids
from stacked_rnn.imdb import decode_review, encode
from stacked_rnn.model import StackedRNNClassifier

USAGE = '%(prog)s ckpt=PATH [text="..." | file=PATH | (lines on stdin)] [batch_size=256]'
EXAMPLES = """\
  python -m stacked_rnn.predict ckpt=outputs/2026-11-24/15-13-02 text="A moving, wonderful film."
  python -m stacked_rnn.predict ckpt=RUN_DIR file=reviews.txt      # one review per line
  cat reviews.txt | python -m stacked_rnn.predict ckpt=PATH         # lines from stdin"""


def build_parser() -> RunParser:
    parser = RunParser("python -m stacked_rnn.predict", USAGE, "Print the positive-sentiment probability of each "
                       "text (a tab, then the text) with a trained checkpoint.", EXAMPLES)
    parser.add_key("text", "one text to score", metavar='"..."')
    parser.add_key("file", "a file of texts, one per line (without text= or file=: lines on stdin)", metavar="PATH")
    parser.add_key("batch_size", "texts per forward pass (default: %(default)s)", type=at_least(1), default=256,
                   metavar="N")
    return parser


@torch.no_grad()
def predict(model: StackedRNNClassifier, data_state: dict, texts: list[str], batch_size: int = 256) -> list[float]:
    """Positive-class probability of each text (empty texts score as a single unknown word). data_state is what
    turns text into the training ids: a checkpoint's "IMDBDataModule" entry, or IMDBDataModule.state_dict().
    Runs in eval mode (no dropout) on the model's device, whatever mode the model was in (and leaves it so)."""
    stoi = {word: i for i, word in enumerate(data_state["vocab"])}
    encoded = [truncate_ids(encode(t, stoi), data_state["max_len"], data_state["truncate"]) for t in texts]
    was_training, probs = model.training, []
    model.eval()
    try:
        for start in range(0, len(encoded), batch_size):
            ids, lengths, _ = collate([(x, 0) for x in encoded[start : start + batch_size]])
            probs += torch.sigmoid(model(ids.to(model.device), lengths).float()).tolist()
    finally:
        model.train(was_training)
    return probs


def read_texts(args: argparse.Namespace) -> list[str]:
    if args.text is not None:
        return [args.text]
    if args.file is not None:
        path = Path(args.file).expanduser()
        if not path.is_file():
            raise UsageError(f"file={args.file} does not exist")
        return decode_review(path.read_bytes()).splitlines()
    if sys.stdin.isatty():
        raise UsageError("give text=..., file=PATH, or pipe lines into stdin")
    return sys.stdin.read().splitlines()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        model, data_state = load(find_checkpoint(args.ckpt))
        texts = read_texts(args)
        probs = predict(model, data_state, texts, args.batch_size)
    except (UsageError, CheckpointError) as err:
        return parser.fail(err)
    for prob, text in zip(probs, texts):
        preview = text if len(text) <= 70 else text[:67] + "..."
        print(f"{prob:.4f}\t{preview}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
