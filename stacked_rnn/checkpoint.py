"""Loading a trained run: its checkpoint, the model, the vocabulary and data settings, and its results.json.

predict, probe and diagnostics name a run as ckpt=RUN_FOLDER (its best checkpoint, else last.ckpt) or
ckpt=FILE.ckpt. A checkpoint is read with torch.load(weights_only=True): only tensors and plain containers,
never a class named inside the file. RunParser is the command line those tools share: key=value or --key value.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from stacked_rnn.model import StackedRNNClassifier



def data_state_of(checkpoint: dict) -> dict:
    """What the task stored to turn text into ids (vocab, max_len, truncate, tokenizer; classes for task=tag): Lightning
    keeps LightningDataModule.state_dict() under the data module's class name. {} for a task without a vocabulary
    (data=adding reads real-valued features)."""
    return next((value for key, value in checkpoint.items() if key.endswith("DataModule") and isinstance(value, dict)
                 and "vocab" in value), {})


class CheckpointError(ValueError):
    """This run or checkpoint cannot be loaded (missing, unreadable, not a stacked_rnn run, or not this model)."""


def find_checkpoint(path: str) -> Path:
    """A .ckpt file, or a run folder whose checkpoints/ holds the best (else last) checkpoint."""
    p = Path(path).expanduser()
    if p.is_dir():
        found = sorted((p / "checkpoints").glob("best-*.ckpt")) or sorted((p / "checkpoints").glob("last*.ckpt"))
        if not found:
            raise CheckpointError(f"ckpt={path} is a folder without checkpoints/best-*.ckpt or last.ckpt")
        return found[-1]
    if not p.is_file():
        raise CheckpointError(f"ckpt={path} does not exist (give a .ckpt file or a run folder)")
    return p


def run_folder(checkpoint: Path) -> Path:
    """The run folder a checkpoint belongs to (RUN/checkpoints/x.ckpt -> RUN; a loose x.ckpt -> its folder)."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def load(path: Path) -> tuple[StackedRNNClassifier, dict]:
    """The model in eval mode and its data state (data_state_of), from a weights-only load."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and unpickler errors all mean: not a usable checkpoint
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from err
    if not isinstance(checkpoint, dict) or not {"state_dict", "hyper_parameters"} <= checkpoint.keys():
        raise CheckpointError(f"{path} is not a stacked_rnn checkpoint (needs state_dict and hyper_parameters)")
    try:
        model = StackedRNNClassifier(**checkpoint["hyper_parameters"])
        model.load_state_dict(checkpoint["state_dict"])
    except (TypeError, RuntimeError) as err:
        raise CheckpointError(f"checkpoint {path} does not fit this version of StackedRNNClassifier: {err}") from err
    return model.eval(), data_state_of(checkpoint)


def read_results(run_dir: Path) -> dict:
    """The run's results.json: test and validation metrics, history and the resolved config ("config")."""
    path = run_dir / "results.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as err:
        raise CheckpointError(f"{path} is missing: the run's config is read from it (a finished training run "
                              "writes it)") from err
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read {path}: {err}") from err


# ----------------------------------------------------------------------------------------------
# The command line of the tools that load a run


class UsageError(ValueError):
    """A mistake on the command line of a tool that loads a run (unknown argument, missing or bad value)."""


def at_least(low: int):
    """An argparse type: an integer >= low; any other value is named in the error."""

    def parse(value: str) -> int:
        if not value.isdigit() or int(value) < low:
            raise argparse.ArgumentTypeError(f"{value!r} is not allowed: expected an integer >= {low}")
        return int(value)

    return parse


class RunParser(argparse.ArgumentParser):
    """argparse for predict, probe and diagnostics. Every option is given as key=value (the documented form,
    split at the first '=' so a text keeps any '=' or quotes it holds) or as --key value; ckpt= is required.
    --help prints the usage, the description and the examples; a mistake raises UsageError instead of exiting,
    so main() returns 2 and the tests can call it. require_ckpt=False: the tool checks ckpt= itself (probe's sweep=)."""

    def __init__(self, prog: str, usage: str, description: str, examples: str, require_ckpt: bool = True):
        super().__init__(prog=prog, usage=usage, description=description, epilog=f"examples:\n{examples}",
                         formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
        self.keys: dict[str, str] = {}  # key -> its help
        self.required_keys: list[str] = []
        self.key_group = self.add_argument_group("arguments, each as key=VALUE or --key VALUE")
        self.add_key("ckpt", "a run folder (its best checkpoint, else last.ckpt) or a .ckpt file",
                     required=require_ckpt, metavar="PATH")

    def add_key(self, key: str, help: str, required: bool = False, **kwargs) -> None:
        """An option read from key=VALUE or --key VALUE; a required one is checked after parsing."""
        self.keys[key] = help
        if required:
            self.required_keys.append(key)
        self.key_group.add_argument(f"--{key}", help=help + (" (required)" if required else ""), **kwargs)

    def parse_args(self, args: list[str] | None = None, namespace=None) -> argparse.Namespace:
        """key=value tokens of known keys become --key=value for argparse; anything left over is unknown."""
        tokens, previous = [], ""
        for arg in sys.argv[1:] if args is None else args:
            key, sep, _ = arg.partition("=")
            is_value = previous.startswith("--") and "=" not in previous  # `--text "file=x"`: x is the text
            tokens.append(f"--{arg}" if sep and key in self.keys and not is_value else arg)
            previous = arg
        parsed, unknown = self.parse_known_args(tokens, namespace)
        if unknown:
            self.error(f"unknown argument {unknown[0]!r}: expected {', '.join(k + '=' for k in self.keys)} "
                       "(or --key value)")
        for key in self.required_keys:
            if getattr(parsed, key) is None:
                self.error(f"{key}= is required: {self.keys[key]}")
        return parsed

    def error(self, message: str):
        """argparse calls this for every command-line mistake."""
        raise UsageError(message)

    def fail(self, err: UsageError | CheckpointError) -> int:
        """Print a mistake as one line (after the usage, for a command-line mistake); the exit code, 2."""
        if isinstance(err, UsageError):
            self.print_usage(sys.stderr)
        print(f"error: {err}", file=sys.stderr)
        return 2
