"""Print what a trained checkpoint makes of texts (examples: EXAMPLES, or --help): the positive-sentiment
probability (classify), the class at every step (tag), or the bits per character a language model needs for each
text (lm: every character predicted from the ones before it).

The checkpoint is loaded by stacked_rnn.checkpoint (weights only, never a class named inside the file); its
vocabulary and truncation settings are the ones used in training.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from stacked_rnn.checkpoint import CheckpointError, RunParser, UsageError, at_least, find_checkpoint, load
from stacked_rnn.encoding import encode_text, text_tokens  # noqa: F401 (text_tokens: its old public home)
from stacked_rnn.model import StackedRNNClassifier
from stacked_rnn.tasks.batches import IGNORE, collate
from stacked_rnn.tasks.imdb_corpus import decode_review

USAGE = '%(prog)s ckpt=PATH [text="..." | file=PATH | (lines on stdin)] [batch_size=256]'
EXAMPLES = """\
  python -m stacked_rnn.predict ckpt=outputs/2026-11-24/15-13-02 text="A moving, wonderful film."
  python -m stacked_rnn.predict ckpt=RUN_DIR file=reviews.txt      # one review per line
  cat reviews.txt | python -m stacked_rnn.predict ckpt=PATH         # lines from stdin"""


def build_parser() -> RunParser:
    parser = RunParser("python -m stacked_rnn.predict", USAGE, "Print the positive-sentiment probability of each "
                       "text (a tab, then the text) with a trained checkpoint; for a language model, the bits per "
                       "character of each text (python -m stacked_rnn.generate writes text).", EXAMPLES)
    parser.add_key("text", "one text to score", metavar='"..."')
    parser.add_key("file", "a file of texts, one per line (without text= or file=: lines on stdin)", metavar="PATH")
    parser.add_key("batch_size", "texts per forward pass (default: %(default)s)", type=at_least(1), default=256,
                   metavar="N")
    return parser


@torch.no_grad()
def predict(model: StackedRNNClassifier, data_state: dict, texts: list[str], batch_size: int = 256) -> list:
    """Positive-class probability of each text (empty texts score as a single unknown word); for task=tag, the
    predicted class name at every step; for task=lm, bits per character of each text (its characters from the second
    on, each predicted from those before it; nan for a text of one character). data_state is what turns text into the training ids: a checkpoint's data
    module entry (stacked_rnn.checkpoint.data_state_of), or the data module's state_dict(). Runs in eval mode (no
    dropout) on the model's device, whatever mode the model was in (and leaves it so)."""
    if not data_state.get("vocab"):
        raise CheckpointError("this model reads real-valued features, not text (e.g. data=adding): predict has no "
                              "vocabulary to encode text with")
    lm = model.kind.causal  # a language model scores each text by its own next characters
    encoded = [encode_text(t, data_state, truncate=not lm) for t in texts]  # a language model reads texts whole
    was_training, out = model.training, []
    model.eval()
    try:
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start : start + batch_size]
            ids, lengths, _ = collate([(x[:-1] if lm and len(x) > 1 else x, 0) for x in chunk])
            targets = None
            if lm:  # the next character at every real step, IGNORE on padding (and for a one-character text)
                targets = torch.full_like(ids, IGNORE)
                for row, x in enumerate(chunk):
                    targets[row, : len(x) - 1] = torch.from_numpy(x[1:])
                targets = targets.to(model.device)
            scores = model.kind.predict(model(ids.to(model.device), lengths).float(), targets).cpu()
            if model.hparams.task == "tag":  # (B, T): the class named at each real step
                classes = data_state.get("classes") or [str(c) for c in range(model.hparams.num_classes)]
                out += [[classes[c] for c in row[:n].tolist()] for row, n in zip(scores, lengths.tolist())]
            else:
                out += [float("nan") if lm and len(x) < 2 else value for x, value in zip(chunk, scores.tolist())]
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
