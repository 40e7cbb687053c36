"""Equal tuning budgets per depth: `python -m stacked_rnn.tune experiment=depth_study tune.cells=[gru,lstm]`.

One Optuna study per cell and depth, all in one sqlite file in the run folder, each driven to exactly tune.trials
trials (pruned and failed ones count) with the same search space, a seeded TPE sampler and a median pruner on the
task's own validation metric. Every trial is a normal stacked_rnn.train run in its own folder. Then each depth's best
configuration (chosen on validation only) is retrained with fresh seeds into final/, laid out like a sweep, where
stacked_rnn.report compares the depths. A rerun in the same folder (hydra.run.dir=...) resumes: it completes each study
to tune.trials and adds none past it. The summary table and figures: stacked_rnn.tune_report.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import shlex
import shutil
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from stacked_rnn import train
from stacked_rnn.callbacks import History, is_int
from stacked_rnn.report import write_report
from stacked_rnn.model import CELLS
from stacked_rnn.tasks.imdb_corpus import DataError
from stacked_rnn.train import ConfigError, is_number
from stacked_rnn.tune_report import short_params, write_tune_report

TUNE_INSTALL = 'pip install -e ".[tune]"   (optuna>=4 and optuna-integration>=4)'
try:
    import optuna
    from optuna.trial import TrialState
    # optuna-integration 5.0's callback subclasses lightning.pytorch.Callback (it imports lightning.pytorch, not the old
    # pytorch_lightning namespace; checked with lightning 2.6), so it is used as it is, subclassed only to keep a record
    from optuna_integration.pytorch_lightning import PyTorchLightningPruningCallback
except ImportError as err:
    raise ImportError(f"python -m stacked_rnn.tune needs Optuna and optuna-integration: {TUNE_INSTALL}") from err

log = logging.getLogger("stacked_rnn.tune")
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "none")
SPENT = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)  # what counts towards a study's budget
FIXED_KEYS = ("model.cell", "model.layers", "model.units", "seed", "output_dir")  # set per study or run, never searched


# ----------------------------------------------------------------------------------------------
# Checks: every tune.* value, each study's train config at every bound of the space, then the storage


def search_space(node: dict, prefix: str = "") -> dict[str, dict]:
    """tune.space flattened: {'model.lr': {'low': 1e-4, 'high': 3e-2, 'log': True}, 'model.weight_decay': {'choices':
    [...]}}; a leaf is a dict with low/high or choices, any other dict nests keys."""
    space = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and not {"low", "high", "choices"} & value.keys():
            space |= search_space(value, f"{name}.")
        else:
            space[name] = value
    return space


def check_spec(name: str, spec) -> None:
    allowed = "{low: A, high: B} with A < B (log: true for a log scale, A > 0) or {choices: [a, b, ...]}"
    if isinstance(spec, dict) and "choices" in spec:
        ok = set(spec) == {"choices"} and isinstance(spec["choices"], list) and len(spec["choices"]) > 0
    elif isinstance(spec, dict):
        low, high, use_log = spec.get("low"), spec.get("high"), spec.get("log", False)
        ok = (set(spec) <= {"low", "high", "log"} and is_number(low) and is_number(high) and low < high
              and use_log in (True, False) and (not use_log or low > 0))
    else:
        ok = False
    if not ok:
        raise ConfigError(f"tune.space.{name}={spec!r} is not allowed: expected {allowed}")


def final_seeds(tune: dict) -> list[int]:
    """The seeds of the final runs: tune.final_seed_start, +1, ... (the search trains every trial with `seed`)."""
    return [tune["final_seed_start"] + i for i in range(tune["final_seeds"])]


def check_tune(cfg: DictConfig, tune: dict) -> dict[str, dict]:
    """Reject bad tune.* values before any work, naming the key; returns the flattened search space."""
    t = tune
    cells, depths = t.get("cells"), t.get("depths")
    rules = [
        ("tune.cells", cells, isinstance(cells, list) and len(cells) > 0 and all(c in CELLS for c in cells)
         and len(set(cells)) == len(cells), f"a non-empty list of distinct cells from {CELLS}, e.g. [gru,lstm]"),
        ("tune.depths", depths, isinstance(depths, list) and len(depths) > 0
         and all(is_int(d) and d >= 1 for d in depths)
         and len(set(depths)) == len(depths), "a non-empty list of distinct integers >= 1, e.g. [1,2,3,4]"),
        ("tune.trials", t["trials"], is_int(t["trials"]) and t["trials"] >= 1,
         "an integer >= 1: trials per cell and depth, pruned and failed ones included"),
        ("tune.sampler", t["sampler"], t["sampler"] in SAMPLERS, f"one of {SAMPLERS}"),
        ("tune.sampler_seed", t["sampler_seed"], is_int(t["sampler_seed"]), "an integer"),
        ("tune.startup_trials", t["startup_trials"], is_int(t["startup_trials"]) and t["startup_trials"] >= 0,
         "an integer >= 0"),
        ("tune.pruner", t["pruner"], t["pruner"] in PRUNERS, f"one of {PRUNERS}"),
        ("tune.pruner_startup_trials", t["pruner_startup_trials"],
         is_int(t["pruner_startup_trials"]) and t["pruner_startup_trials"] >= 0, "an integer >= 0"),
        ("tune.pruner_warmup_epochs", t["pruner_warmup_epochs"],
         is_int(t["pruner_warmup_epochs"]) and t["pruner_warmup_epochs"] >= 0, "an integer >= 0"),
        ("tune.n_jobs", t["n_jobs"], is_int(t["n_jobs"]) and t["n_jobs"] >= 1, "an integer >= 1"),
        ("tune.test_trials", t["test_trials"], isinstance(t["test_trials"], bool), "true or false"),
        ("tune.final_seeds", t["final_seeds"], is_int(t["final_seeds"]) and t["final_seeds"] >= 0,
         "an integer >= 0 (0: no final runs)"),
        ("tune.final_seed_start", t["final_seed_start"], is_int(t["final_seed_start"]), "an integer"),
        ("tune.storage", t["storage"], t["storage"] is None or (isinstance(t["storage"], str) and t["storage"]),
         "null (RUN_FOLDER/optuna.db), a .db path or an Optuna storage URL"),
        ("tune.space", t.get("space"), isinstance(t.get("space"), dict) and len(t["space"]) > 0,
         "a dict of config keys to search, e.g. {model: {lr: {low: 1e-4, high: 3e-2, log: true}}}"),
    ]
    for key, value, ok, allowed in rules:
        if not ok:
            raise ConfigError(f"{key}={value!r} is not allowed: expected {allowed}")
    space = search_space(t["space"])
    for name, spec in space.items():
        if name in FIXED_KEYS:
            raise ConfigError(f"tune.space.{name} is not allowed: {', '.join(FIXED_KEYS)} are fixed per study and run "
                              "(depths: tune.depths, cells: tune.cells, width: model.param_budget)")
        if OmegaConf.select(cfg, name, default="<absent>") == "<absent>":
            raise ConfigError(f"tune.space.{name}: the config has no key {name} to search")
        check_spec(name, spec)
    if cfg.seed in final_seeds(t):
        raise ConfigError(f"tune.final_seed_start={t['final_seed_start']} is not allowed: the final seeds "
                          f"{final_seeds(t)} include seed={cfg.seed}, which trains every search trial; final runs "
                          "need seeds the search never used")
    if cfg.data.get("metric_mode", "max") not in ("max", "min"):
        raise ConfigError(f"data.metric_mode={cfg.data.metric_mode!r} is not allowed: expected max or min")
    if cfg.model.get("param_budget") is None:
        log.warning(f"model.param_budget is null: every depth gets model.units={cfg.model.units}, so deeper models are "
                    "also bigger; set model.param_budget=N to tune depths at equal parameters")
    return space


def base_config(cfg: DictConfig) -> dict:
    """The composed train config without tune.*, unresolved (a run's ${seed} must follow the seed it is given)."""
    base = OmegaConf.to_container(cfg, resolve=False)
    base.pop("tune")
    return base


def run_config(base: dict, settings: dict) -> DictConfig:
    """One run's train config: the base with `settings` ({dotted key: value}) set, in struct mode as Hydra gives it."""
    cfg = OmegaConf.create(base)
    for key, value in settings.items():
        OmegaConf.update(cfg, key, value, merge=False)
    OmegaConf.set_struct(cfg, True)
    return cfg


def check_studies(base: dict, tune: dict, space: dict, run_dir: Path) -> None:
    """train.check_config on every study's config, and on each bound or choice of the space: a value no run could
    train with is refused now, not as failed trials."""
    probe = {"output_dir": str(run_dir / "check")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. model.dropout at depth 1: the same space at every depth, on purpose
        for cell in tune["cells"]:
            for depth in tune["depths"]:
                study = {"model.cell": cell, "model.layers": depth, **probe}
                train.check_config(run_config(base, study))
                for name, spec in space.items():
                    for value in spec.get("choices") or (spec["low"], spec["high"]):
                        try:
                            train.check_config(run_config(base, {**study, name: value}))
                        except ConfigError as err:
                            raise ConfigError(f"tune.space.{name}: {err}") from err


def storage_url(tune: dict, run_dir: Path) -> str:
    """tune.storage as an Optuna URL: a URL as given, or a sqlite file (default RUN_FOLDER/optuna.db) that must be
    writable; checked before any work, so that a rerun pointed at a bad path changes nothing."""
    value = tune["storage"]
    if value and "://" in value:
        return value
    path = Path(value).expanduser() if value else run_dir / "optuna.db"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir() or not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise PermissionError(f"{path} is not a writable file")
    except OSError as err:
        raise ConfigError(f"tune.storage={value!r}: cannot write the study file {path} ({err}); expected a writable "
                          ".db path or an Optuna storage URL") from err
    return f"sqlite:///{path.resolve()}"


def open_storage(url: str):
    """Optuna's RDB storage; sqlite waits up to 60 s for a lock (parallel studies share the file)."""
    kwargs = {"engine_kwargs": {"connect_args": {"timeout": 60}}} if url.startswith("sqlite") else {}
    try:
        return optuna.storages.RDBStorage(url, **kwargs)
    except Exception as err:
        raise ConfigError(f"tune.storage: cannot open {url}: {' '.join(str(err).split())[:300]}") from err


# ----------------------------------------------------------------------------------------------
# One study per cell and depth: samplers, pruners, trials


def study_name(cell: str, depth: int) -> str:
    return f"cell={cell},layers={depth}"


def make_sampler(tune: dict, spent: int):
    """The seeded sampler; offset by the trials already spent so that a resumed study draws new configurations
    instead of its first ones again (a fresh study at every depth starts from the same draws)."""
    seed = tune["sampler_seed"] + spent
    if tune["sampler"] == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=tune["startup_trials"])


def make_pruner(tune: dict):
    if tune["pruner"] == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=tune["pruner_startup_trials"],
                                       n_warmup_steps=tune["pruner_warmup_epochs"])  # steps are epochs, from 0


def open_study(storage, tune: dict, cell: str, depth: int, direction: str):
    """This cell and depth's study in the storage, created or loaded."""
    study = optuna.create_study(storage=storage, study_name=study_name(cell, depth), direction=direction,
                                load_if_exists=True, pruner=make_pruner(tune))
    if study.direction.name.lower() != direction:
        raise ConfigError(f"the study {study.study_name} in this folder was made to {study.direction.name.lower()} "
                          f"and this config's metric wants to {direction} (data.metric_mode): a different task; "
                          "use a new run folder")
    study.sampler = make_sampler(tune, len(spent_trials(study)))
    return study


def spent_trials(study) -> list:
    return study.get_trials(deepcopy=False, states=SPENT)


def recover_killed(study) -> list[int]:
    """Trials left RUNNING by a killed process are marked FAIL: they count towards the budget and are not retried."""
    stale = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    for number in stale:
        study.tell(number, state=TrialState.FAIL)
    return stale


class PruneOnMetric(PyTorchLightningPruningCallback):
    """Reports the validation metric to the trial after every validation epoch and raises optuna.TrialPruned when the
    pruner says so; Lightning re-raises it out of trainer.fit (after on_exception and the loggers' finalize), and
    train.run lets it through. Also keeps what the trial spent, for the record of a pruned or failed trial."""

    def __init__(self, trial, monitor: str):
        super().__init__(trial, monitor)
        self.start, self.seconds, self.epochs, self.history, self.units = None, 0.0, 0, [], None

    def on_fit_start(self, trainer, pl_module):
        super().on_fit_start(trainer, pl_module)
        self.start, self.units = time.perf_counter(), pl_module.hparams.get("units")

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.epochs = trainer.current_epoch + 1
            self.seconds = time.perf_counter() - self.start
            self.history = list(next(c for c in trainer.callbacks if isinstance(c, History)).epochs)
        super().on_validation_end(trainer, pl_module)


def suggest(trial, name: str, spec: dict):
    if "choices" in spec:
        return trial.suggest_categorical(name, spec["choices"])
    if is_int(spec["low"]) and is_int(spec["high"]):
        return trial.suggest_int(name, spec["low"], spec["high"], log=spec.get("log", False))
    return trial.suggest_float(name, spec["low"], spec["high"], log=spec.get("log", False))


def write_record(folder: Path, status: str, reason: str, metric: str, pruning: PruneOnMetric, params: dict,
                 cfg: DictConfig) -> None:
    """results.json of a pruned or failed trial: why, what it spent and its validation scores so far."""
    scores = [h[f"val/{metric}"] for h in pruning.history if f"val/{metric}" in h]
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
    except Exception:
        config = OmegaConf.to_container(cfg, resolve=False)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(
        {"status": status, "reason": reason, "metric": metric, f"val_{metric}_per_epoch": scores,
         "epochs": pruning.epochs, "train_seconds": round(pruning.seconds, 2), "params": params,
         "history": pruning.history, "config": config}, indent=2))


def run_trial(study, job: dict) -> None:
    """Ask the study for a configuration, train it as a normal run in trials/<study>/trial_NNN/, tell the outcome:
    COMPLETE with the best validation score, PRUNED, or FAIL (any exception; the study goes on). Ctrl-C or SIGTERM
    marks the trial FAIL and stops the tune."""
    tune, metric = job["tune"], job["metric"]
    trial = study.ask()
    params = {name: suggest(trial, name, spec) for name, spec in job["space"].items()}
    folder = Path(job["run_dir"]) / "trials" / study.study_name / f"trial_{trial.number:03d}"
    cfg = run_config(job["base"], {"model.cell": job["cell"], "model.layers": job["depth"], **params,
                                   "output_dir": str(folder), "test_after_fit": tune["test_trials"]})
    pruning = PruneOnMetric(trial, f"val/{metric}")
    state, score, reason, results = TrialState.COMPLETE, None, "", {}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"model\.dropout=.* has no effect")  # depth 1, same space
            results = train.run(cfg, extra_callbacks=[pruning])
        score = results.get(f"best_val_{metric}")
        if score is None or not math.isfinite(score):
            state, reason = TrialState.FAIL, f"no finite best validation {metric}"
    except optuna.TrialPruned as err:
        state, reason = TrialState.PRUNED, str(err)
    except (train.Interrupted, KeyboardInterrupt):
        study.tell(trial, state=TrialState.FAIL)
        raise
    except Exception as err:
        state, reason = TrialState.FAIL, f"{type(err).__name__}: {err}".splitlines()[0][:300]
    epochs = results.get("epochs", pruning.epochs)
    seconds = results.get("train_seconds", round(pruning.seconds, 2))
    for key, value in {"epochs": epochs, "train_seconds": seconds, "units": results.get("units", pruning.units),
                       "folder": str(folder), "reason": reason}.items():
        trial.set_user_attr(key, value)
    if state != TrialState.COMPLETE:
        write_record(folder, "pruned" if state == TrialState.PRUNED else "failed", reason, metric, pruning, params, cfg)
    study.tell(trial, score if state == TrialState.COMPLETE else None, state=state)
    outcome = f"val {metric} {score:.4f}" if state == TrialState.COMPLETE else reason
    log.info(f"[{study.study_name}] trial {trial.number} ({len(spent_trials(study))}/{tune['trials']}) "
             f"{state.name}: {outcome} | {short_params(params)} | {epochs} epochs, {seconds:.1f} s")


def drive_study(job: dict) -> None:
    """Run one study until tune.trials trials are spent (none when it already has them); in a worker process of its
    own when tune.n_jobs > 1, so that each study is driven by one process."""
    study = open_study(open_storage(job["url"]), job["tune"], job["cell"], job["depth"], job["direction"])
    while len(spent_trials(study)) < job["tune"]["trials"]:
        run_trial(study, job)


# ----------------------------------------------------------------------------------------------
# Final runs: each depth's best configuration with fresh seeds, laid out like a sweep


def run_final(job: dict) -> None:
    """One final run in final/cell=C,layers=L,seed=S/; skipped when it already finished with these parameters (a
    rerun), started again when it did not finish or an earlier best trained it."""
    folder, params = Path(job["folder"]), job["params"]
    done = folder / "results.json"
    if done.is_file():
        old = json.loads(done.read_text())
        config = OmegaConf.create(old.get("config") or {})
        if old.get("status") == "ok" and all(OmegaConf.select(config, k) == v for k, v in params.items()):
            log.info(f"[final] {folder.name}: already trained with these parameters")
            return
    if folder.exists():
        shutil.rmtree(folder)
    cfg = run_config(job["base"], {"model.cell": job["cell"], "model.layers": job["depth"], **params,
                                   "seed": job["seed"], "output_dir": str(folder), "test_after_fit": True})
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"model\.dropout=.* has no effect")
            results = train.run(cfg)
        log.info(f"[final] {folder.name}: test {job['metric']} {results.get('test_' + job['metric'])}")
    except (train.Interrupted, KeyboardInterrupt):
        raise
    except Exception as err:  # recorded like a failed sweep job; the report lists it
        reason = f"{type(err).__name__}: {err}".splitlines()[0][:300]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "results.json").write_text(json.dumps({"status": "failed", "reason": reason,
                                                         "config": OmegaConf.to_container(cfg)}, indent=2))
        log.error(f"[final] {folder.name} failed: {reason}")


def best_trial(study, sign: int):
    """The COMPLETE trial with the best validation score (pruned trials hold partial scores and never win)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(complete, key=lambda t: sign * t.value) if complete else None


# ----------------------------------------------------------------------------------------------
# Running jobs one after another, or n_jobs at a time in their own processes


def init_worker(threads: int, log_file: str) -> None:
    """A worker process: its share of the cores, and the tune's log lines on the console and in tune.log."""
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s",
                        handlers=[logging.StreamHandler(), logging.FileHandler(log_file)])


def run_jobs(fn, jobs: list[dict], n_jobs: int, log_file: Path) -> None:
    """fn(job) for every job: here, one after another (n_jobs=1), or in n_jobs spawned processes with cores/n_jobs
    torch threads each (spawned, not forked: a fork would copy this process's torch thread pool)."""
    if n_jobs == 1 or len(jobs) <= 1:
        for job in jobs:
            fn(job)
        return
    threads = max(1, (os.cpu_count() or 1) // n_jobs)
    pool = ProcessPoolExecutor(min(n_jobs, len(jobs)), mp_context=multiprocessing.get_context("spawn"),
                               initializer=init_worker, initargs=(threads, str(log_file)))
    try:
        for future in as_completed([pool.submit(fn, job) for job in jobs]):
            future.result()
    finally:
        pool.shutdown(cancel_futures=True)


# ----------------------------------------------------------------------------------------------
# The whole tune


def resume_command(run_dir: Path, overrides) -> str:
    overrides = [o for o in overrides if not o.startswith("hydra.run.dir=")]
    return shlex.join(["python", "-m", "stacked_rnn.tune", *overrides, train.hydra_override("hydra.run.dir", run_dir)])


def run_tune(cfg: DictConfig, run_dir: Path, overrides=("<same overrides>",)) -> Path:
    """Check, search every study to its budget, retrain each best with fresh seeds, write the summary and the
    report into run_dir (`overrides`: the command line's, for the resume command). Returns run_dir."""
    run_dir = Path(run_dir)
    tune = OmegaConf.to_container(cfg.tune, resolve=True)
    space = check_tune(cfg, tune)
    base = base_config(cfg)
    check_studies(base, tune, space, run_dir)
    url = storage_url(tune, run_dir)
    storage = open_storage(url)
    metric = cfg.get("metric", "acc")
    sign = 1 if cfg.data.get("metric_mode", "max") == "max" else -1
    direction = "maximize" if sign > 0 else "minimize"
    train.build_datamodule(run_config(base, {"output_dir": str(run_dir)})).prepare_data()  # once, before any worker

    log.info(f"tuning {len(tune['cells']) * len(tune['depths'])} studies x {tune['trials']} trials in {run_dir} "
             f"(storage {url}); resume or extend with:\n  {resume_command(run_dir, overrides)}")
    jobs = []
    for cell in tune["cells"]:
        for depth in tune["depths"]:
            study = open_study(storage, tune, cell, depth, direction)
            stale = recover_killed(study)
            if stale:
                log.warning(f"[{study.study_name}] trials {stale} were left running by a killed process: marked FAIL "
                            "(they count towards the budget)")
            spent = len(spent_trials(study))
            log.info(f"[{study.study_name}] {spent} of {tune['trials']} trials spent, {max(tune['trials'] - spent, 0)} "
                     "to run")
            jobs.append({"base": base, "tune": tune, "space": space, "cell": cell, "depth": depth, "url": url,
                         "run_dir": str(run_dir), "metric": metric, "direction": direction})
    log_file = run_dir / "tune.log"
    if tune["n_jobs"] > 1:  # deepest (slowest) first, so that the studies left running at the end are short ones
        jobs.sort(key=lambda job: -job["depth"])
    run_jobs(drive_study, jobs, tune["n_jobs"], log_file)

    storage = open_storage(url)  # fresh: the workers' trials, not this process's cache
    studies = {(c, d): optuna.load_study(study_name=study_name(c, d), storage=storage)
               for c in tune["cells"] for d in tune["depths"]}
    finals = []
    for (cell, depth), study in studies.items():
        best = best_trial(study, sign)
        if best is None:
            log.warning(f"[{study.study_name}] no trial completed: no final runs")
            continue
        finals += [{"base": base, "cell": cell, "depth": depth, "params": best.params, "seed": seed, "metric": metric,
                    "folder": str(run_dir / "final" / f"cell={cell},layers={depth},seed={seed}")}
                   for seed in final_seeds(tune)]
    run_jobs(run_final, finals, tune["n_jobs"], log_file)

    note = (f"Tuned with {tune['trials']} trials per depth (Optuna {tune['sampler']}, pruner {tune['pruner']}; pruned "
            f"and failed trials count), each depth's best configuration on validation retrained with seeds "
            f"{final_seeds(tune)}.")
    write_tune_report(studies, run_dir, metric, sign, tune, note)
    if finals:
        try:
            search = "The search: [tune_summary.md](../tune_summary.md)."
            write_report(run_dir / "final", tune_keys=(), note=f"{note} {search}")
        except Exception as err:  # a report problem must never hide the runs' own results
            log.error(f"final report failed: {err}")
    report = f"\nreport:  {run_dir / 'final' / 'report.md'}" if finals else ""
    log.info(f"summary: {run_dir / 'tune_summary.md'}{report}")
    return run_dir


@hydra.main(version_base="1.3", config_path="pkg://stacked_rnn.conf", config_name="tune")
def main(cfg: DictConfig) -> None:
    """User mistakes exit with code 2 and a one-line message naming the key; Ctrl-C or SIGTERM with 128 + the signal
    number (the interrupted trial counts as failed; rerun in the same folder to go on)."""
    hydra_cfg = HydraConfig.get()
    try:
        run_tune(cfg, Path(hydra_cfg.runtime.output_dir), hydra_cfg.overrides.task)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except (train.Interrupted, KeyboardInterrupt) as err:
        print(f"interrupted ({err or 'Ctrl-C'}): rerun the same command with "
              f"{train.hydra_override('hydra.run.dir', hydra_cfg.runtime.output_dir)} to go on", file=sys.stderr)
        sys.exit(128 + getattr(err, "signum", 2))


if __name__ == "__main__":
    main()
