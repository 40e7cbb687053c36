"""Print the positive-sentiment probability of texts with a trained checkpoint (examples: EXAMPLES, or --help).

The checkpoint is loaded by stacked_rnn.checkpoint (weights only, never a class named inside the file); its
vocabulary and truncation settings are the ones used in training.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import numpy as np

from stacked_rnn.checkpoint import CheckpointError, RunParser, UsageError, at_least, find_checkpoint, load
from stacked_rnn.model import StackedRNNClassifier
from stacked_rnn.tasks.batches import collate, truncate_ids
from stacked_rnn.tasks.imdb_corpus import UNK_ID, decode_review, tokenise

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


def text_tokens(text: str, data_state: dict) -> list[str]:
    """The tokens of a text as the model's task tokenised its data: IMDB's words (lowercase, ! and ?), or, for the
    generated tasks (data_state tokenizer=whitespace), every whitespace-separated token, punctuation and markers
    included."""
    if data_state.get("tokenizer", "words") == "whitespace":
        return text.lower().split()
    return tokenise(text)


def encode_text(text: str, data_state: dict) -> np.ndarray:
    """Token ids (T,) of one text, cut as in training; unknown tokens map to id 1 (<unk>), an empty text to one."""
    stoi = {word: i for i, word in enumerate(data_state["vocab"])}
    ids = np.asarray([stoi.get(token, UNK_ID) for token in text_tokens(text, data_state)] or [UNK_ID], dtype=np.int64)
    return truncate_ids(ids, data_state["max_len"], data_state["truncate"])


@torch.no_grad()
def predict(model: StackedRNNClassifier, data_state: dict, texts: list[str], batch_size: int = 256) -> list:
    """Positive-class probability of each text (empty texts score as a single unknown word); for task=tag, the
    predicted class name at every step. data_state is what turns text into the training ids: a checkpoint's data
    module entry (stacked_rnn.checkpoint.data_state_of), or the data module's state_dict(). Runs in eval mode (no
    dropout) on the model's device, whatever mode the model was in (and leaves it so)."""
    if not data_state.get("vocab"):
        raise CheckpointError("this model reads real-valued features, not text (e.g. data=adding): predict has no "
                              "vocabulary to encode text with")
    encoded = [encode_text(t, data_state) for t in texts]
    was_training, out = model.training, []
    model.eval()
    try:
        for start in range(0, len(encoded), batch_size):
            ids, lengths, _ = collate([(x, 0) for x in encoded[start : start + batch_size]])
            scores = model(ids.to(model.device), lengths).float().cpu()
            if model.hparams.task == "tag":  # (B, T, C): the class named at each real step
                classes = data_state.get("classes") or [str(c) for c in range(scores.shape[-1])]
                out += [[classes[c] for c in row[:n].tolist()] for row, n in zip(scores.argmax(-1), lengths.tolist())]
            else:
                out += torch.sigmoid(scores).tolist()
    finally:
        model.train(was_training)
    return out


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
        print(f"{' '.join(prob)}\t{preview}" if isinstance(prob, list) else f"{prob:.4f}\t{preview}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
