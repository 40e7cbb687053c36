"""Print the positive-sentiment probability of texts with a trained checkpoint.

    python -m stacked_rnn.predict ckpt=PATH text="A wonderful, moving film."
    python -m stacked_rnn.predict ckpt=RUN_DIR file=reviews.txt      # one review per line
    cat reviews.txt | python -m stacked_rnn.predict ckpt=PATH         # lines from stdin

The checkpoint is read with torch.load(weights_only=True): only tensors and plain containers, never
a class named inside the file. Its vocabulary and truncation settings are the ones used in training.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from stacked_rnn.data import collate, decode_review, encode, truncate_ids
from stacked_rnn.model import StackedRNNClassifier

USAGE = 'usage: python -m stacked_rnn.predict ckpt=PATH [text="..." | file=PATH | (lines on stdin)] [batch_size=256]'
KEYS = ("ckpt", "text", "file", "batch_size")
DATA_STATE_KEY = "IMDBDataModule"  # Lightning stores LightningDataModule.state_dict() under the class name


class PredictError(ValueError):
    """A mistake in the predict arguments or checkpoint, reported without a traceback."""


def parse_kv(argv: list[str], keys: tuple[str, ...], usage: str) -> dict[str, str]:
    """key=value arguments, split at the first '=' so texts keep any '=' or quotes they contain; ckpt= is required.
    Shared by the checkpoint tools (predict, diagnostics, probe)."""
    args = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in keys:
            raise PredictError(f"unknown argument {arg!r}: expected one of {', '.join(k + '=' for k in keys)}\n{usage}")
        args[key] = value
    if "ckpt" not in args:
        raise PredictError(f"ckpt= is required\n{usage}")
    return args


def parse_args(argv: list[str]) -> dict[str, str]:
    return parse_kv(argv, KEYS, USAGE)


def find_checkpoint(path: str) -> Path:
    """A .ckpt file, or a run folder whose checkpoints/ holds the best (else last) checkpoint."""
    p = Path(path).expanduser()
    if p.is_dir():
        found = sorted((p / "checkpoints").glob("best-*.ckpt")) or sorted((p / "checkpoints").glob("last*.ckpt"))
        if not found:
            raise PredictError(f"ckpt={path} is a folder without checkpoints/best-*.ckpt or last.ckpt")
        return found[-1]
    if not p.is_file():
        raise PredictError(f"ckpt={path} does not exist (give a .ckpt file or a run folder)")
    return p


def run_folder(checkpoint: Path) -> Path:
    """The run folder a checkpoint belongs to (RUN/checkpoints/x.ckpt -> RUN; a loose x.ckpt -> its folder)."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def load(path: Path) -> tuple[StackedRNNClassifier, dict]:
    """The model in eval mode and its data state (vocab, max_len, truncate), from a weights-only load."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and unpickler errors all mean: not a usable checkpoint
        raise PredictError(f"cannot read checkpoint {path}: {err}") from err
    if not isinstance(checkpoint, dict) or not {"state_dict", "hyper_parameters", DATA_STATE_KEY} <= checkpoint.keys():
        raise PredictError(f"{path} is not a stacked_rnn checkpoint (needs state_dict, hyper_parameters and the "
                           f"{DATA_STATE_KEY} vocabulary)")
    try:
        model = StackedRNNClassifier(**checkpoint["hyper_parameters"])
        model.load_state_dict(checkpoint["state_dict"])
    except (TypeError, RuntimeError) as err:
        raise PredictError(f"checkpoint {path} does not fit this version of StackedRNNClassifier: {err}") from err
    return model.eval(), checkpoint[DATA_STATE_KEY]


@torch.no_grad()
def predict(model: StackedRNNClassifier, data_state: dict, texts: list[str], batch_size: int = 256) -> list[float]:
    """Positive-class probability of each text (empty texts score as a single unknown word)."""
    stoi = {word: i for i, word in enumerate(data_state["vocab"])}
    encoded = [truncate_ids(encode(t, stoi), data_state["max_len"], data_state["truncate"]) for t in texts]
    probs = []
    for start in range(0, len(encoded), batch_size):
        ids, lengths, _ = collate([(x, 0) for x in encoded[start : start + batch_size]])
        probs += torch.sigmoid(model(ids, lengths).float()).tolist()
    return probs


def read_texts(args: dict[str, str]) -> list[str]:
    if "text" in args:
        return [args["text"]]
    if "file" in args:
        path = Path(args["file"]).expanduser()
        if not path.is_file():
            raise PredictError(f"file={args['file']} does not exist")
        return decode_review(path.read_bytes()).splitlines()
    if sys.stdin.isatty():
        raise PredictError(f"give text=..., file=PATH, or pipe lines into stdin\n{USAGE}")
    return sys.stdin.read().splitlines()


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        if not args.get("batch_size", "1").isdigit() or int(args.get("batch_size", "1")) < 1:
            raise PredictError(f"batch_size={args['batch_size']} must be an integer >= 1")
        model, data_state = load(find_checkpoint(args["ckpt"]))
        texts = read_texts(args)
        probs = predict(model, data_state, texts, int(args.get("batch_size", 256)))
    except PredictError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for prob, text in zip(probs, texts):
        preview = text if len(text) <= 70 else text[:67] + "..."
        print(f"{prob:.4f}\t{preview}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
