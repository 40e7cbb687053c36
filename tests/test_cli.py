"""Every command answers --help (the usage, exit 0), meets a mistake with the usage and a one-line error (exit 2),
and keeps its documented key=value forms."""

from __future__ import annotations

import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

from stacked_rnn import diagnostics, predict, probe, report

REPO = Path(__file__).resolve().parents[1]
MAINS = {"predict": predict.main, "probe": probe.main, "diagnostics": diagnostics.grid_main, "report": report.main}
RUN_TOOLS = ("predict", "probe", "diagnostics")  # the tools that load a trained run: key=value or --key value


@pytest.mark.parametrize("name", MAINS)
def test_help_prints_the_usage_and_examples_and_exits_0(name, capsys):
    with pytest.raises(SystemExit) as done:
        MAINS[name](["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m stacked_rnn.{name} ")
    assert f"examples:\n  python -m stacked_rnn.{name} " in out


@pytest.mark.parametrize("name", RUN_TOOLS)
def test_an_unknown_argument_exits_2_with_the_usage_and_the_allowed_keys(name, capsys):
    assert MAINS[name](["ckpt=run", "colour=blue"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: python -m stacked_rnn.{name} ")
    assert "\nerror: unknown argument 'colour=blue': expected ckpt=, " in err
    assert MAINS[name](["ckpt=run", "--colour", "blue"]) == 2
    assert "error: unknown argument '--colour'" in capsys.readouterr().err


@pytest.mark.parametrize("name, argv, message", [
    ("predict", ["text=hi"], "error: ckpt= is required: a run folder"),
    ("predict", ["ckpt=run", "batch_size=0"], "error: argument --batch_size: '0' is not allowed: expected an integer >= 1"),
    ("predict", ["ckpt=run", "--text"], "error: argument --text: expected one argument"),
    ("probe", ["ckpt=run", "max_reviews=lots"], "error: argument --max_reviews: 'lots' is not allowed: expected an "
                                                "integer >= 10"),
    ("probe", ["ckpt=run", "scales=0"], "error: argument --scales: '0' is not allowed: expected distinct integers "
                                        ">= 1"),
    ("probe", ["max_reviews=100"], "error: give ckpt=RUN_OR_CKPT (one run) or sweep=SWEEP_DIR (every job of a sweep)"),
    ("diagnostics", ["ckpt=run"], "error: text= is required"),
    ("diagnostics", ["ckpt=run", "text=hi", "value=colour"], "error: argument --value: invalid choice: 'colour' "
                                                             "(choose from 'norm', 'readout')"),
])
def test_a_missing_or_bad_value_is_named_with_what_is_allowed(name, argv, message, capsys):
    assert MAINS[name](argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: ") and message in err and "Traceback" not in err


def test_documented_key_value_forms_parse_like_the_options():
    parser = predict.build_parser()
    text = 'a "great" film: 10/10 = must see'  # split at the first '=' only
    documented = parser.parse_args(["ckpt=outputs/2026-11-24/15-13-02", f"text={text}", "batch_size=8"])
    assert documented == Namespace(ckpt="outputs/2026-11-24/15-13-02", text=text, file=None, batch_size=8)
    assert parser.parse_args(["--ckpt", "outputs/2026-11-24/15-13-02", "--text", text, "--batch_size=8"]) == documented
    assert parser.parse_args(["ckpt=run", "text="]).text == ""
    assert parser.parse_args(["ckpt=run", "--text", "file=x"]).text == "file=x"  # a value is never read as a key
    assert parser.parse_args(["ckpt=run", "file=reviews.txt"]).file == "reviews.txt"

    assert probe.build_parser().parse_args(["ckpt=RUN", "max_reviews=100", "archive=a.tar.gz", "cache_dir=c",
                                            "scales=16,1,4", "layers=0,2"]) == \
        Namespace(ckpt="RUN", sweep=None, jobs="*", scales=[1, 4, 16], steps_per_review=8, max_reviews=100,
                  layers=[0, 2], sample_seed=0, out=None, archive="a.tar.gz", root=None, cache_dir="c")
    assert diagnostics.grid_parser().parse_args(["ckpt=RUN", "text=This movie was a waste.", "value=readout",
                                                 "out=r.png", "max_tokens=5"]) == \
        Namespace(ckpt="RUN", text="This movie was a waste.", value="readout", out="r.png", max_tokens=5)


def test_report_rejects_an_unknown_argument_with_its_usage(capsys):
    with pytest.raises(SystemExit) as done:
        report.main(["outputs/multirun/x", "--colour", "blue"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m stacked_rnn.report ") and "unrecognized arguments: --colour blue" in err


def test_train_help_shows_the_config_groups_and_an_unknown_flag_exits_2():
    def train(*args):
        return subprocess.run([sys.executable, "-m", "stacked_rnn.train", *args], cwd=REPO, capture_output=True,
                              text=True, timeout=300)

    shown = train("--help")
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "== Configuration groups ==" in shown.stdout and "model: stacked_rnn" in shown.stdout
    assert "\n  cell: gru\n" in shown.stdout  # the composed config, to override with key=value
    wrong = train("--colour")
    assert wrong.returncode == 2
    assert wrong.stderr.startswith("usage: ") and "unrecognized arguments: --colour" in wrong.stderr
