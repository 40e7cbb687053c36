"""Write text with a trained character-level language model (data=text_lm):
`python -m stacked_rnn.generate ckpt=RUN prompt="ROMEO:" length=500 temperature=0.8 seed=0`.

The prompt is read once through the stack, then one character at a time is drawn from the softmax of the logits
divided by the temperature (top_k keeps only the k likeliest), fed back, and the state carried on: the same loop as
char-rnn's sample.lua. A seed fixes the draw, so the same command writes the same text.
"""

from __future__ import annotations

import argparse
import sys

import torch

from stacked_rnn.checkpoint import CheckpointError, RunParser, UsageError, at_least, find_checkpoint, load
from stacked_rnn.encoding import decode_ids, encode_text
from stacked_rnn.model import StackedRNNClassifier

USAGE = '%(prog)s ckpt=PATH [prompt="..." | (prompt on stdin)] [length=500] [temperature=0.8] [top_k=0] [seed=0]'
EXAMPLES = """\
  python -m stacked_rnn.generate ckpt=outputs/2026-12-07/01-02-03 prompt="ROMEO:" length=500 temperature=0.8
  echo "KING HENRY:" | python -m stacked_rnn.generate ckpt=RUN_DIR seed=1     # the prompt from stdin
  python -m stacked_rnn.generate ckpt=RUN_DIR prompt="The " temperature=0.5 top_k=5"""


def positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not number > 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not allowed: expected a number > 0")
    return number


def build_parser() -> RunParser:
    parser = RunParser("python -m stacked_rnn.generate", USAGE, "Continue a prompt with a trained character-level "
                       "language model (data=text_lm), one sampled character at a time; prints prompt + continuation.",
                       EXAMPLES)
    parser.add_key("prompt", "the text to continue (without prompt=: stdin; empty: a newline)", metavar='"..."')
    parser.add_key("length", "characters to write (default: %(default)s)", type=at_least(1), default=500,
                   metavar="N")
    parser.add_key("temperature", "divides the logits: < 1 safer, > 1 wilder (default: %(default)s)",
                   type=positive_float, default=0.8, metavar="T")
    parser.add_key("top_k", "draw among the k likeliest characters only; 0: all (default: %(default)s)",
                   type=at_least(0), default=0, metavar="K")
    parser.add_key("seed", "seed of the draw: the same seed writes the same text (default: %(default)s)",
                   type=at_least(0), default=0, metavar="N")
    return parser


@torch.no_grad()
def generate(model: StackedRNNClassifier, data_state: dict, prompt: str, length: int = 500, temperature: float = 0.8,
             top_k: int = 0, seed: int = 0) -> str:
    """The continuation (without the prompt) of `length` characters. Runs in eval mode on the model's device and
    leaves the model's mode as it was; the draw uses its own generator, so the global RNG is untouched."""
    if not model.kind.causal or data_state.get("tokenizer") != "chars":
        raise CheckpointError(f"this checkpoint is not a character-level language model (task={model.hparams.task}): "
                              "train one with data=text_lm")
    generator = torch.Generator(device=model.device).manual_seed(seed)
    ids = torch.from_numpy(encode_text(prompt or "\n", data_state, truncate=False))[None].to(model.device)  # (1, P)
    was_training, written = model.training, []
    model.eval()
    try:
        logits, state = model.forward_with_state(ids)  # (1, P, V): the whole prompt in one pass
        for _ in range(length):
            scores = logits[0, -1].float() / temperature  # (V,)
            scores[:2] = float("-inf")  # never <pad> or <unk>
            if top_k:
                kth = scores.topk(min(top_k, len(scores))).values[-1]
                scores[scores < kth] = float("-inf")
            char = torch.multinomial(torch.softmax(scores, -1), 1, generator=generator)  # (1,)
            written.append(int(char))
            logits, state = model.forward_with_state(char.view(1, 1), state)  # (1, 1, V)
    finally:
        model.train(was_training)
    return decode_ids(written, data_state)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.prompt is None:
            if sys.stdin.isatty():
                raise UsageError('give prompt="...", or pipe the prompt into stdin')
            args.prompt = sys.stdin.read()
        model, data_state = load(find_checkpoint(args.ckpt))
        text = generate(model, data_state, args.prompt, args.length, args.temperature, args.top_k, args.seed)
    except (UsageError, CheckpointError) as err:
        return parser.fail(err)
    print(args.prompt + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
