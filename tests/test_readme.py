"""The README's commands work, on a tiny generated archive: the quick start runs end to end as written (the
real archive swapped for the tiny one, small sizes added), every other `stacked_rnn.train` command in the README
trains (one job of a sweep) or at least composes where it needs Slurm, a GPU or several processes, each
`stacked_rnn.tune` command runs one trial per study and one final seed, the README's
test commands are the ones .ci/run runs, and every relative link and image in README.md and docs/ resolves."""

from __future__ import annotations

import json
import os
import re
import runpy
import shlex
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import compose_config
import stacked_rnn
from stacked_rnn import train

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RUN_FOLDER = re.compile(r"outputs/\d{4}-\d{2}-\d{2}/\d{2}-\d{2}-\d{2}")  # the README's example run folder
SWEEP_FOLDER = "outputs/multirun/<date>/<time>"

# What the test does not run, and why. Train commands among these are still composed and checked.
SKIPPED = {
    "pip": "installs packages (network)",
    "pytest": "the test suite itself (test_readme_test_commands_are_the_ones_ci_runs checks them against .ci/run)",
    "tensorboard": "a server that runs until stopped",
    "mlflow": "the MLflow UI, a server that runs until stopped (tests/test_loggers.py reads the store with MLflow's client)",
}
NOT_TRAINED = {  # an override -> what the command needs that a test machine may not have
    "hydra/launcher=slurm": "Slurm",
    "trainer=gpu": "a GPU",
    "trainer=ddp": "several processes (DDP; tests/test_sweep.py and -m slow cover it)",
    "--cfg": "no training: it only prints the config, so composing it is the whole check",
}
# The quick start, in order: the test fails when a command is added, dropped or renamed, so that it is updated.
QUICK_START = ["train", "predict", "probe", "diagnostics", "train -m", "report", "tensorboard"]

IMDB_TINY = {"data.limit": "40", "data.val_size": "20", "data.batch_size": "8", "data.vocab_size": "100",
             "data.max_len": "32", "model.units": "8", "model.embed_dim": "8"}
ADDING_TINY = {"data.length": "10", "data.train_size": "64", "data.val_size": "32", "data.test_size": "32",
               "data.batch_size": "16", "model.units": "8"}
HIERARCHY_TINY = {"data.train_size": "64", "data.val_size": "32", "data.test_size": "32", "data.batch_size": "16",
                  "model.units": "8"}
COPY_TINY = {"data.length": "10", "data.num_tokens_to_copy": "2", "data.train_size": "64", "data.val_size": "32",
             "data.test_size": "32", "data.batch_size": "16", "model.units": "8"}
TINY_TEXT = Path(tempfile.gettempdir()) / "stacked_rnn_readme_verse.txt"  # the README's tiny Shakespeare, tiny
TINY_TEXT.write_text("ROMEO: the cat sat on the mat.\nJULIET: the dog sat on the log.\n" * 40)
LM_TINY = {"data.corpus": "file", "data.path": str(TINY_TEXT), "data.window": "16", "data.batch_size": "8",
           "data.windows_per_epoch": "32", "data.eval_rows": "2", "data.eval_window": "32", "data.nano_windows": "8",
           "data.nano_block": "8", "model.units": "8"}
GENERATED = {"adding": ADDING_TINY, "adding_sweep": ADDING_TINY, "synthetic_reviews": HIERARCHY_TINY,
             "hierarchy_study": HIERARCHY_TINY, "selective_copy": COPY_TINY, "copy_study": COPY_TINY,
             "text_lm": LM_TINY, "lm_study": LM_TINY}
TUNE_TINY = {"tune.depths": "[1]", "tune.trials": "1", "tune.final_seeds": "1", "tune.n_jobs": "1"}
TRAINER_TINY = {"trainer.max_epochs": "1", "trainer.accelerator": "cpu", "trainer.enable_progress_bar": "false",
                "trainer.enable_model_summary": "false", "trainer.log_every_n_steps": "1"}


def readme_commands(text: str) -> list[tuple[str, str]]:
    """(section heading, command) for every command line of every ```bash block, continuation lines joined."""
    commands, heading, block, pending = [], "", False, ""
    for line in text.splitlines():
        if block and line.strip() == "```":
            block = False
        elif block:
            pending += line.rstrip()
            if pending.endswith("\\"):
                pending = pending[:-1] + " "
            else:
                if pending.strip():
                    commands.append((heading, pending.strip()))
                pending = ""
        elif line.strip() == "```bash":
            block = True
        elif line.startswith("#"):
            heading = line.lstrip("#").strip()
    return commands


def name_of(argv: list[str]) -> str:
    """train, train -m, predict, probe, diagnostics, report, or the program (pip, pytest, tensorboard, ...)."""
    if argv[:2] == ["python", "-m"] and argv[2].startswith("stacked_rnn."):
        name = argv[2].split(".", 1)[1]
        return "train -m" if name == "train" and "-m" in argv[3:] else name
    return argv[0]


def split(command: str, run_dir: Path, sweep_dir: Path) -> list[str]:
    """The command as argv, with the README's example folders replaced by the test's."""
    command = RUN_FOLDER.sub(shlex.quote(str(run_dir)), command).replace(SWEEP_FOLDER, shlex.quote(str(sweep_dir)))
    return shlex.split(command, comments=True)


def tiny(args: list[str], archive: Path, cache: Path, first_job: bool = False) -> list[str]:
    """Train overrides made small: the tiny archive instead of the download or a local copy, tiny sizes instead of
    the README's (a swept size is kept), one epoch on the CPU; first_job=True keeps the first value of each sweep."""
    generated = next((GENERATED[a.partition("=")[2]] for a in args if a.startswith(("data=", "experiment="))
                      and a.partition("=")[2] in GENERATED), None)  # a generated task: no archive, its own sizes
    sizes = {**(generated or IMDB_TINY), **TRAINER_TINY}
    data = [] if generated else [f"data.archive={archive}", f"data.cache_dir={cache}"]
    kept = []
    for arg in args:
        key, _, value = arg.partition("=")
        swept = "," in value and not key.startswith("hydra") and not value.startswith("[")
        if key in ("data.archive", "data.root", "data.cache_dir") or (key in sizes and not swept):
            continue
        if key in sizes:
            del sizes[key]
        kept.append(f"{key}={value.split(',')[0]}" if swept and first_job else arg)
    return kept + data + [f"{k}={v}" for k, v in sizes.items()]


def code_env() -> dict[str, str]:
    """Subprocesses import the same stacked_rnn as this test process."""
    src = str(Path(stacked_rnn.__file__).resolve().parent.parent)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)}


def start_cli(argv: list[str], cwd: Path) -> subprocess.Popen:
    assert argv[0] == "python"
    return subprocess.Popen([sys.executable, *argv[1:]], cwd=cwd, env=code_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish_cli(argv: list[str], process: subprocess.Popen) -> None:
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, f"{shlex.join(argv)}\n{stderr[-3000:]}"


def run_module(argv: list[str], capsys) -> str:
    """`python -m MODULE ARGS` in this process (no new interpreter: seconds saved per command); its stdout."""
    assert argv[:2] == ["python", "-m"]
    saved = sys.argv
    sys.argv = [argv[2], *argv[3:]]
    code = 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # "found in sys.modules": it is, and that is fine
            runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
    except SystemExit as exit:
        code = exit.code or 0
    finally:
        sys.argv = saved
    out, err = capsys.readouterr()
    assert code == 0, f"{shlex.join(argv)} exited with {code}\n{err[-3000:]}"
    return out


def run_tune_tiny(argv: list[str], archive: Path, cache: Path, run_dir: Path) -> None:
    """A README tune command at the tiny size, in this process: the first depth, one trial per study, one final seed."""
    from hydra import compose, initialize_config_module

    from stacked_rnn import tune

    overrides = [a for a in tiny(argv[3:], archive, cache) if a.partition("=")[0] not in TUNE_TINY]
    with initialize_config_module("stacked_rnn.conf", version_base="1.3"):
        cfg = compose("tune", overrides=[*overrides, *(f"{k}={v}" for k, v in TUNE_TINY.items())])
    tune.run_tune(cfg, run_dir)
    assert (run_dir / "tune_summary.md").exists() and (run_dir / "final" / "report.md").exists()


def test_readme_quick_start_runs_end_to_end(tiny_archive, tmp_path, capsys):
    run_dir, sweep_dir, cache = tmp_path / "run", tmp_path / "sweep", tmp_path / "cache"
    commands = [split(c, run_dir, sweep_dir) for section, c in readme_commands(README.read_text())
                if section == "Quick start"]
    assert [name_of(argv) for argv in commands] == QUICK_START

    sweep = [*commands[4][:3], *tiny(commands[4][3:], tiny_archive, cache), f"hydra.sweep.dir={sweep_dir}"]
    sweeping = start_cli(sweep, cwd=tmp_path)  # it needs nothing from the commands before it: start it now
    try:
        for argv in commands:
            name = name_of(argv)
            if name in SKIPPED:
                continue
            if name == "train":
                argv = [*argv[:3], *tiny(argv[3:], tiny_archive, cache), f"hydra.run.dir={run_dir}"]
                finish_cli(argv, start_cli(argv, cwd=tmp_path))
                results = json.loads((run_dir / "results.json").read_text())
                assert results["status"] == "ok" and results["epochs"] == 1
                assert list((run_dir / "checkpoints").glob("best-*.ckpt"))
                for written in ("checkpoints/last.ckpt", "grad_flow.json", "grad_flow.png", "splits.json",
                                ".hydra/overrides.yaml"):
                    assert (run_dir / written).exists(), written
                assert list(run_dir.glob("events.out.tfevents.*"))
            elif name == "train -m":
                finish_cli(sweep, sweeping)
                jobs = [json.loads(p.read_text()) for p in sweep_dir.glob("*/results.json")]
                assert len(jobs) == 4 and all(job["status"] == "ok" for job in jobs)
                assert (sweep_dir / "report.md").exists()
                (sweep_dir / "report.md").unlink()  # the report command below must write it again
            elif name == "predict":
                lines = run_module(argv, capsys).splitlines()
                assert len(lines) == 1 and 0 <= float(lines[0].split("\t")[0]) <= 1
            elif name == "probe":
                run_module(argv, capsys)
                assert len(json.loads((run_dir / "probe.json").read_text())["accuracy"]) == 3  # embeddings + 2 layers
                scales = json.loads((run_dir / "probe_scales.json").read_text())
                assert [len(row) for row in scales["difference"]] == [5, 5, 5]  # layers 0-2 x scales 1-64 and doc
                assert (run_dir / "probe.png").exists() and (run_dir / "probe_scales.png").exists()
            elif name == "diagnostics":
                run_module(argv, capsys)
                assert (run_dir / "depth_time_norm.png").stat().st_size > 1000
            elif name == "report":
                run_module(argv, capsys)
                for written in ("report.md", "report.csv", "report_by_config.csv", "accuracy_vs_depth.png"):
                    assert (sweep_dir / written).exists(), written
            else:
                pytest.fail(f"no check for README quick-start command {shlex.join(argv)}")
    finally:
        if sweeping.poll() is None:  # a check above failed: stop the sweep this test started
            sweeping.kill()
            sweeping.communicate()


def test_every_other_readme_train_command_trains_or_composes(tiny_archive, tmp_path, capsys, monkeypatch):
    """Outside the quick start: each train command (the first job of a sweep) trains in-process on the tiny
    archive, after a tiny run for the resume command to resume; commands that need Slurm, a GPU or several
    processes are composed and checked only, and so are those whose tiny config already trained. The checkpoint
    tools run on that tiny run, the report on the sweeps' first jobs."""
    monkeypatch.chdir(tmp_path)  # logger=mlflow's default store, outputs/mlflow.db, is taken from the working directory
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir, sweep_dir, cache = tmp_path / "run", tmp_path / "sweep", tmp_path / "cache"
    train.run(compose_config([*tiny([], tiny_archive, cache), f"output_dir={run_dir}"]))
    commands = [(section, split(c, run_dir, sweep_dir)) for section, c in readme_commands(README.read_text())
                if section != "Quick start"]
    trained, checked, tools, seen, lm_run = [], [], [], set(), None
    for i, (section, argv) in enumerate(commands):
        name = name_of(argv)
        if name in SKIPPED:
            continue
        if name == "generate":  # on the README's language model, trained by the text_lm command above it
            assert lm_run is not None, "the README shows generate before any data=text_lm run"
            argv = [f"ckpt={lm_run}" if a.startswith("ckpt=") else a for a in argv]
            capsys.readouterr()  # what the runs before it printed
            written = run_module(argv, capsys)
            assert written.startswith("ROMEO:") and len(written) > len("ROMEO:") + 300
            tools.append(name)
            continue
        if name in ("predict", "probe", "diagnostics", "report"):
            run_module(argv, capsys)
            tools.append(name)
            continue
        if name == "tune":
            run_tune_tiny(argv, tiny_archive, cache, tmp_path / f"tune{i}")
            tools.append(name)
            continue
        assert name in ("train", "train -m"), f"README section {section!r}: no check for {shlex.join(argv)}"
        overrides = [a for a in argv[3:] if a != "-m" and not a.startswith("hydra.sweep.dir=")]
        overrides = [f"output_dir={a.partition('=')[2]}" if a.startswith("hydra.run.dir=") else a for a in overrides]
        generated = any(a.partition("=")[2] in GENERATED for a in overrides if a.startswith(("data=", "experiment=")))
        if not any(a.startswith("output_dir=") for a in overrides):  # IMDB sweeps' first jobs: one folder to report on
            folder = sweep_dir if name == "train -m" and not generated else tmp_path  # a report holds one task
            overrides.append(f"output_dir={folder / f'job{i}'}")
        needs = [why for flag, why in NOT_TRAINED.items() if any(a.startswith(flag) for a in overrides)]
        if "--cfg" in overrides:  # --cfg job|hydra|all: a flag and its value, not overrides
            at = overrides.index("--cfg")
            overrides = overrides[:at] + overrides[at + 2:]
        assert not [a for a in overrides if a.startswith("-")], f"unexpected flags in {shlex.join(argv)}"
        cfg = compose_config(tiny(overrides, tiny_archive, cache, first_job=True))
        train.check_config(cfg)
        same = OmegaConf.to_yaml({k: v for k, v in cfg.items() if k != "output_dir"})
        if needs or same in seen:  # what it needs is missing here, or the same tiny config already trained
            checked.append(shlex.join(argv))
            continue
        seen.add(same)
        results = train.run(cfg)
        assert results["status"] == "ok", shlex.join(argv)
        if results["metric"] == "bpc":
            lm_run = cfg.output_dir
        assert (Path(cfg.output_dir) / "results.json").exists()
        trained.append(shlex.join(argv))
    capsys.readouterr()
    assert len(trained) >= 10 and len(trained) + len(checked) >= 20, (trained, checked)
    assert any("ckpt_path=last" in c for c in trained), "the resume command"
    assert any("experiment=adding" in c and "model.residual=true" in c for c in trained), "a residual adding run"
    assert any("experiment=depth_study" in c for c in trained + checked), "the headline's depth study"
    assert any("hydra/launcher=slurm" in c for c in checked) and any("--cfg" in c for c in checked)
    assert {"diagnostics", "report", "tune", "generate"} <= set(tools) and (sweep_dir / "report.md").exists()
    assert any("logger=csv" in c for c in trained) and any("logger=mlflow" in c for c in trained)
    assert (tmp_path / "outputs" / "mlflow.db").exists(), "the README's logger=mlflow run wrote to the default store"


def test_readme_test_commands_are_the_ones_ci_runs():
    """.ci/run does not read the README: it runs `python3 -m pytest -q` with the same marker selections."""
    readme = {shlex.join(shlex.split(c, comments=True)[1:]) for _, c in readme_commands(README.read_text())
              if c.startswith("pytest")}
    ci = {shlex.join([a for a in shlex.split(line, comments=True)[3:] if a != "-q"])
          for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("python3 -m pytest")}
    assert readme == ci == {"", "-m slow"}


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(line.lstrip("#")) for line in page.read_text().splitlines() if re.match(r"#{1,6} ", line)}


def test_every_relative_link_and_image_resolves():
    pages = [README, *sorted((ROOT / "docs").glob("*.md"))]
    broken, used = [], set()
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # links inside code blocks are not links
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            used.add(resolved)
            if not resolved.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, "\n".join(broken)
    unused = [p.name for p in (ROOT / "docs").glob("*.png") if p.resolve() not in used]
    assert not unused, f"figures in docs/ that no page shows: {unused}"
