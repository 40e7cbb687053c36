"""Train, test and record one stacked RNN: `python -m stacked_rnn.train model.cell=gru model.layers=3`.

Hydra composes conf/ (add -m for sweeps); this module turns the config into a DataModule, a model
and a Lightning Trainer with its loggers (logger=tensorboard|csv|mlflow|many), fits, tests the best checkpoint
on the official test set, logs hparams and final metrics to every logger and writes results.json into the run folder.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import signal
import sys
import time
import traceback
import warnings
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from stacked_rnn import SWEPT_KEYS_ENV, swept_keys
from stacked_rnn.callbacks import (ExactResume, History, SaveForResume, StopOnNonFiniteLoss, is_int,
                                   submitit_requeue_signal)
from stacked_rnn.tasks.batches import TRUNCATE_CHOICES
from stacked_rnn.tasks.imdb_corpus import VAL_SPLITS, DataError
from stacked_rnn.loggers import MLFLOW_INSTALL, complete_mlflow, log_run_files, mlflow_installed, needs_mlflow, where
from stacked_rnn.model import CELLS, INITS, LR_SCHEDULES, NORMS, PACKING, POOLS, units_for_budget
from stacked_rnn.task_kinds import TASK_KINDS, TASK_METRICS, TASKS

log = logging.getLogger("stacked_rnn")
HPARAM_KEYS = ("cell", "layers", "units", "dropout", "bidirectional", "pool", "embed_dim", "lr")
HP_METRICS = ("hp/best_val_{metric}", "hp/test_{metric}", "hp/train_seconds")


class ConfigError(ValueError):
    """A config value the user can fix; the message names the key, the value and what is allowed."""


class Interrupted(RuntimeError):
    """Training stopped by Ctrl-C or SIGTERM; the message says what was saved and how to resume."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_config(cfg: DictConfig) -> None:
    """Reject bad values before any work starts (a misspelled key is already refused by Hydra's struct mode)."""
    m, d, t = cfg.model, cfg.data, cfg.trainer
    rules = [
        ("seed", cfg.seed, is_int(cfg.seed), "an integer"),
        ("ckpt_path", cfg.get("ckpt_path"), cfg.get("ckpt_path") is None or isinstance(cfg.ckpt_path, str),
         "null, last, or the path of a .ckpt file"),
        ("model.cell", m.cell, m.cell in CELLS, f"one of {CELLS}"),
        ("model.pool", m.pool, m.pool in POOLS, f"one of {POOLS}"),
        ("model.init", m.init, m.init in INITS, f"one of {INITS}"),
        ("model.lr_schedule", m.lr_schedule, m.lr_schedule in LR_SCHEDULES, f"one of {LR_SCHEDULES}"),
        ("model.pack", m.pack, m.pack in PACKING, f"one of {PACKING}"),
        ("model.layers", m.layers, is_int(m.layers) and m.layers >= 1, "an integer >= 1"),
        ("model.units", m.units, is_int(m.units) and m.units >= 1, "an integer >= 1"),
        ("model.embed_dim", m.embed_dim, is_int(m.embed_dim) and m.embed_dim >= 1, "an integer >= 1"),
        ("model.bidirectional", m.bidirectional, isinstance(m.bidirectional, bool), "true or false"),
        ("model.lr", m.lr, is_number(m.lr) and m.lr > 0, "a number > 0"),
        ("model.weight_decay", m.weight_decay, is_number(m.weight_decay) and m.weight_decay >= 0, "a number >= 0"),
        ("model.adam_eps", m.adam_eps, is_number(m.adam_eps) and m.adam_eps > 0, "a number > 0"),
        ("model.task", m.get("task"), m.get("task", "classify") in TASKS, f"one of {TASKS}"),
        ("model.norm", m.get("norm"), m.get("norm", "none") in NORMS, f"one of {NORMS}"),
        ("model.residual", m.get("residual"), m.get("residual", False) in (True, False), "true or false"),
        ("model.input_dim", m.get("input_dim"), is_int(m.get("input_dim", 0)) and m.get("input_dim", 0) >= 0,
         "0 (token ids) or the number of input features"),
    ]
    for key in ("dropout", "embed_dropout", "head_dropout"):
        rules.append((f"model.{key}", m[key], is_number(m[key]) and 0 <= m[key] < 1, "a number in [0, 1)"))
    task = m.get("task", "classify")
    if task == "tag":
        rules.append(("model.num_classes", m.get("num_classes"), is_int(m.get("num_classes")) and m.num_classes >= 2,
                      "an integer >= 2 for task=tag (set by the data group)"))
    if task in TASK_METRICS:
        rules.append(("metric", cfg.get("metric"), cfg.get("metric") in TASK_METRICS[task],
                      f"one of {TASK_METRICS[task]} for task={task} (data.metric)"))
    if "max_len" in d:  # the IMDB data group
        rules += [
            ("data.max_len", d.max_len, is_int(d.max_len) and d.max_len >= 1, "an integer >= 1"),
            ("data.vocab_size", d.vocab_size, is_int(d.vocab_size) and d.vocab_size >= 3,
             "an integer >= 3 (<pad>, <unk> and at least one word)"),
            ("data.truncate", d.truncate, d.truncate in TRUNCATE_CHOICES, f"one of {TRUNCATE_CHOICES}"),
            ("data.val_size", d.val_size, (is_int(d.val_size) and d.val_size >= 1) or
             (isinstance(d.val_size, float) and 0 < d.val_size < 1),
             "a fraction in (0, 1) or a count >= 1 (below the number of training reviews)"),
            ("data.val_split", d.val_split, d.val_split in VAL_SPLITS, f"one of {VAL_SPLITS}"),
            ("data.limit", d.limit, d.limit is None or (is_int(d.limit) and d.limit >= 2), "null or an integer >= 2"),
            ("data.seed", d.seed, is_int(d.seed), "an integer"),
            ("data.order_seed", d.order_seed, d.order_seed is None or is_int(d.order_seed), "null or an integer"),
            ("data.batch_size", d.batch_size, is_int(d.batch_size) and d.batch_size >= 1, "an integer >= 1"),
            ("data.eval_batch_size", d.eval_batch_size, is_int(d.eval_batch_size) and d.eval_batch_size >= 1,
             "an integer >= 1"),
            ("data.num_workers", d.num_workers, is_int(d.num_workers) and d.num_workers >= 0, "an integer >= 0"),
        ]
    if "length" in d:  # the adding-problem data group
        rules += [(f"data.{k}", d[k], is_int(d[k]) and d[k] >= low, f"an integer >= {low}")
                  for k, low in (("length", 2), ("train_size", 1), ("val_size", 1), ("test_size", 1), ("batch_size", 1))]
    rules += [
        ("trainer.max_epochs", t.max_epochs, is_int(t.max_epochs) and (t.max_epochs >= 1 or t.max_epochs == -1),
         "an integer >= 1 (or -1 for no limit)"),
        ("trainer.gradient_clip_val", t.gradient_clip_val,
         t.gradient_clip_val is None or (is_number(t.gradient_clip_val) and t.gradient_clip_val >= 0),
         "null or a number >= 0"),
    ]
    for key, value, ok, allowed in rules:
        if not ok:
            raise ConfigError(f"{key}={value!r} is not allowed: expected {allowed}")
    check_param_budget(cfg)
    if m.bidirectional is True and task in TASK_KINDS and TASK_KINDS[task].causal:
        raise ConfigError("model.bidirectional=true is not allowed with a language model (data.task=lm): the "
                          "backward direction would read the characters the model has to predict")
    if m.bidirectional is True and m.pack == "never":
        raise ConfigError("model.pack='never' is not allowed with model.bidirectional=true: the backward direction "
                          "would start on each review's padding; use model.pack=auto or always (a bidirectional "
                          "stack always packs)")
    if m.dropout > 0 and m.layers == 1:
        warnings.warn(f"model.dropout={m.dropout} has no effect with model.layers=1: PyTorch applies it only "
                      "between stacked layers (use model.head_dropout or model.embed_dropout instead)")


def command_line_keys() -> set[str]:
    """The config keys this run's command line set (a sweep job's own values included); empty outside Hydra."""
    if not HydraConfig.initialized():
        return set()
    return {o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task}


def check_param_budget(cfg: DictConfig) -> None:
    """model.param_budget=N picks the width for each depth (model.units follows from it), so it cannot be
    combined with an explicit model.units, and it must leave room for at least one unit."""
    m = cfg.model
    budget = m.get("param_budget")
    if budget is None:
        return
    if not (is_number(budget) and budget == int(budget) and budget >= 1):
        raise ConfigError(f"model.param_budget={budget!r} is not allowed: expected null or a whole number of "
                          "parameters >= 1 (e.g. 12700 or 2e4), counting the recurrent stack and the head")
    if "model.units" in command_line_keys():
        raise ConfigError(f"model.param_budget={budget!r} and model.units={m.units!r} were both set: the budget "
                          "chooses the units of each depth, so set one of them (drop model.units, or set "
                          "model.param_budget=null)")
    if m.get("task") == "lm":  # the head's width is the vocabulary, known once the data is read: the model checks
        m.param_budget = int(budget)
        return
    try:
        outputs = m.get("num_classes") if m.get("task") == "tag" else 1
        units_for_budget(int(budget), m.cell, m.layers, m.get("input_dim") or m.embed_dim, m.bidirectional, outputs,
                         m.get("norm", "none"))
    except ValueError as err:
        raise ConfigError(f"model.{err}") from err
    m.param_budget = int(budget)  # 2e4 on the command line arrives as a float


def assign_device(job_num: int, gpu_count: int) -> list[int] | None:
    """The device of sweep job `job_num`: GPU job_num mod G, or None (the CPU) when there is no GPU."""
    return [job_num % gpu_count] if gpu_count > 0 else None


def place_sweep_job(cfg: DictConfig) -> None:
    """In a multirun, give each job its own GPU (trainer.devices=[i mod G], never CUDA_VISIBLE_DEVICES,
    which joblib's reused workers would not see change), and each job, on CPU or GPU, its share of the host's cores:
    n_jobs processes at once with one thread per core each would oversubscribe them (hydra/launcher=gpu_shared)."""
    hydra_cfg = HydraConfig.get()
    n_jobs = hydra_cfg.launcher.get("n_jobs") or 1
    parallel = (os.cpu_count() or 1) if n_jobs < 0 else min(n_jobs, os.cpu_count() or 1)
    device = assign_device(hydra_cfg.job.num, torch.cuda.device_count()) if uses_cuda(cfg) else None
    if device is not None and cfg.trainer.devices in (1, "1", "auto"):
        cfg.trainer.devices = device
    if parallel > 1:  # GPU jobs too: each runs its data, its loop and its kernel launches on the CPU
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // parallel))


def is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def uses_cuda(cfg: DictConfig) -> bool:
    accelerator = cfg.trainer.accelerator
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    """The task's data module from cfg.data; a value it refuses (ValueError naming the data.* key) is a ConfigError."""
    try:
        return instantiate(cfg.data)
    except InstantiationException as err:
        if isinstance(err.__cause__, (ValueError, DataError)):
            raise ConfigError(str(err.__cause__)) from err
        raise


def build_loggers(cfg: DictConfig, output_dir: Path, resuming: bool = False) -> list[Logger]:
    """cfg.logger's loggers (logger=tensorboard, csv, mlflow, many or a list), Lightning's own classes."""
    chosen = {name: node for name, node in (cfg.get("logger") or {}).items() if node is not None}
    if not chosen:
        raise ConfigError("no logger is configured: expected logger=tensorboard, csv, mlflow, many or a list such as "
                          "logger=[tensorboard,csv]")
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    cwd = Path(hydra_cfg.runtime.cwd) if hydra_cfg else Path.cwd()
    sweep_dir = Path(hydra_cfg.sweep.dir) if hydra_cfg and is_multirun() else None
    loggers = []
    for name, node in chosen.items():
        if needs_mlflow(node):
            if not mlflow_installed():
                raise ConfigError(f"logger.{name} needs MLflow, which is not installed: {MLFLOW_INSTALL}")
            try:
                complete_mlflow(node, output_dir, cwd, sweep_dir, resuming)
            except Exception as err:  # a wrong URI, a server that does not answer, a deleted experiment
                raise ConfigError(f"logger.{name}: cannot use the MLflow store {node.tracking_uri}: "
                                  f"{' '.join(str(err).split())[:300]}") from err
        try:
            loggers.append(instantiate(node))
        except InstantiationException as err:
            raise ConfigError(f"cannot build logger.{name}: {' '.join(str(err).split())}") from err
    return loggers


def build_trainer(cfg: DictConfig, output_dir: Path, resuming: bool = False, extra_callbacks=()) -> L.Trainer:
    """The Lightning Trainer from cfg.trainer, with cfg.callbacks, cfg.logger's loggers and `extra_callbacks`
    (objects from code, e.g. stacked_rnn.tune's pruning callback)."""
    try:
        callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    except InstantiationException as err:
        raise ConfigError(f"cannot build callbacks.*: {' '.join(str(err).split())}") from err
    callbacks += [History(), StopOnNonFiniteLoss(), ExactResume(cfg.seed), *extra_callbacks]
    if not cfg.trainer.get("enable_progress_bar", True):  # Lightning refuses a progress bar callback then
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    loggers = build_loggers(cfg, output_dir, resuming)
    precision = cfg.trainer.precision
    if precision == "auto":
        # 32-true on CUDA too, with TF32 matmuls. Measured on an H200 (torch 2.11, cuDNN 9.19): under bf16 autocast
        # cuDNN runs the RNN in float16 with no loss scaling, and 32-true/TF32 trained 1.3x faster per step at the
        # same loss (docs/performance.md#gpu).
        precision = "32-true"
    if uses_cuda(cfg):
        torch.set_float32_matmul_precision("high")  # TF32 for float32 matmuls (cuDNN's RNN allows it by default)
    strategy = cfg.trainer.get("strategy", "auto")
    slurm = {}
    if SLURMEnvironment.detect():  # every Slurm task already is one rank (srun started them): never spawn more
        # submitit (hydra/launcher=slurm) owns the requeue signal; Lightning's own auto-requeue would race it
        slurm["plugins"] = [SLURMEnvironment(auto_requeue=submitit_requeue_signal() is None)]
        if "num_nodes" not in cfg.trainer:
            slurm["num_nodes"] = int(os.environ.get("SLURM_NNODES", "1"))
    elif strategy == "ddp" and is_multirun():
        # Lightning's ddp re-runs sys.argv in child processes: inside a local multirun that would start the whole
        # sweep again (Lightning #11300). Spawned workers inherit this job instead.
        log.warning("trainer.strategy=ddp inside a multirun: using ddp_spawn so each job stays one job")
        strategy = "ddp_spawn"
    try:
        return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers, precision=precision, strategy=strategy,
                           default_root_dir=str(output_dir), **slurm)
    except InstantiationException as err:
        raise ConfigError(f"cannot build the trainer from trainer.*: {' '.join(str(err).split())}") from err


def last_checkpoint(cfg: DictConfig) -> Path:
    """This run folder's checkpoints/last.ckpt, written for resuming (it may not exist yet)."""
    return Path(cfg.output_dir) / "checkpoints" / "last.ckpt"


def resolve_ckpt_path(cfg: DictConfig) -> Path | None:
    """ckpt_path=last: this run folder's checkpoints/last.ckpt; any other value: a checkpoint file."""
    value = cfg.get("ckpt_path")
    if value is None:
        return None
    path = last_checkpoint(cfg) if value == "last" else Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(f"ckpt_path={value!r}: there is no checkpoint at {path}. To resume a run, pass its folder "
                          "and ckpt_path=last (hydra.run.dir=RUN_FOLDER ckpt_path=last), "
                          "or ckpt_path=PATH/TO/FILE.ckpt")
    return path


def requeued_checkpoint(cfg: DictConfig) -> Path | None:
    """A Slurm job that was requeued (preempted or timed out) runs again in its own run folder: its last.ckpt."""
    last = last_checkpoint(cfg)
    if cfg.get("ckpt_path") is None and int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0 and last.is_file():
        log.warning(f"requeued Slurm job (restart {os.environ['SLURM_RESTART_COUNT']}): resuming from {last}")
        return last
    return None


def check_resumable(path: Path, model) -> int:
    """Refuse a checkpoint that is not a plain-data training checkpoint of this same model; return its step."""
    try:  # weights_only: tensors and plain containers only, never a class named inside the file
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ConfigError(f"ckpt_path={path} cannot be loaded safely (weights_only=True): "
                          f"{' '.join(str(err).split())[:300]}") from err
    if not isinstance(checkpoint, dict) or not {"state_dict", "loops", "hyper_parameters"} <= checkpoint.keys():
        raise ConfigError(f"ckpt_path={path} is not a stacked_rnn training checkpoint (needs state_dict, loops and "
                          "hyper_parameters)")
    saved = checkpoint["hyper_parameters"]
    changed = [f"{'data vocabulary size' if k == 'num_tokens' else 'model.' + k} {saved.get(k)!r} -> {v!r}"
               for k, v in model.hparams.items() if saved.get(k) != v]
    if changed:
        raise ConfigError(f"ckpt_path={path} was trained with other settings ({'; '.join(changed)}): resume with the "
                          "same model and data settings")
    return int(checkpoint.get("global_step", 0))


def hydra_override(key: str, value) -> str:
    """key=value as Hydra's command line reads it: a value with characters of the override grammar (a multirun job
    folder such as cell=gru,layers=4) goes in single quotes, its quotes and the backslashes before them escaped."""
    text = str(value)
    if re.fullmatch(r"[\w/.:~+@-]*", text):
        return f"{key}={text}"
    text = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, text).replace("'", "\\'")
    return f"{key}='{text}'"


def resume_command(cfg: DictConfig) -> str:
    """The command line that continues this run from its last.ckpt."""
    overrides = ["<same overrides>"]
    if HydraConfig.initialized():
        overrides = [o for o in HydraConfig.get().overrides.task
                     if o.split("=", 1)[0].lstrip("+~") not in ("ckpt_path", "hydra.run.dir")]
    if not any(o.startswith("output_dir=") for o in overrides):
        overrides.append(hydra_override("hydra.run.dir", cfg.output_dir))
    return shlex.join(["python", "-m", "stacked_rnn.train", *overrides, "ckpt_path=last"])


def interrupted(cfg: DictConfig, trainer: L.Trainer) -> Interrupted:
    saver = next((c for c in trainer.callbacks if isinstance(c, SaveForResume)), None)
    signum = (saver.signum if saver else None) or signal.SIGINT
    what = f"{signal.Signals(signum).name} at epoch {trainer.current_epoch}, step {trainer.global_step}"
    if saver and saver.saved:
        return Interrupted(f"{what}: saved {saver.saved}. Resume with:\n  {resume_command(cfg)}", signum)
    last = last_checkpoint(cfg)
    if last.is_file():
        return Interrupted(f"{what}: stopped without saving; the last saved checkpoint is {last}. Resume from it "
                           f"with:\n  {resume_command(cfg)}", signum)
    return Interrupted(f"{what}: stopped before any checkpoint was saved; start the run again", signum)


def log_hparams(trainer: L.Trainer, model, results: dict) -> None:
    """The run's hyperparameters and final metrics, to every logger: TensorBoard's HPARAMS tab (one row per run, with
    the same keys in every run: it hides keys missing from the first), MLflow params and metrics, CSV hparams.yaml
    and a last metrics.csv row."""
    hparams = {k: model.hparams[k] for k in HPARAM_KEYS} | {"params": results["num_params"],
                                                             "stack_params": results["stack_params"]}
    metric = results["metric"]
    metrics = {name.format(metric=metric): value for name, value in zip(
        HP_METRICS, (results[f"best_val_{metric}"], results[f"test_{metric}"], results["train_seconds"]))}
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(hparams, metrics)  # the HPARAMS tab pairs them
            # Lightning closed the writer after testing, so these went to a new events file whose background
            # writer flushes only every 120 s: flush now, so that a reader (a test, TensorBoard) finds them
            logger.experiment.flush()
        else:
            logger.log_hyperparams(hparams)
            logger.log_metrics(metrics, step=trainer.global_step)
            logger.save()  # CSV: write the row now (Lightning already finalized the logger after testing)


def run(cfg: DictConfig, extra_callbacks=()) -> dict:
    """Fit, test and record one configuration. Returns what it writes to results.json. `extra_callbacks` go to the
    Trainer as they are (stacked_rnn.tune's pruning callback: the optuna.TrialPruned it raises leaves run() as is)."""
    check_config(cfg)
    ckpt_path = resolve_ckpt_path(cfg) or requeued_checkpoint(cfg)
    if is_multirun():
        place_sweep_job(cfg)
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    torch.set_flush_denormal(True)  # vanishing BPTT gradients turn subnormal: ~15x slower on x86 without this
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)  # the task checks its own settings here, before any work
    # before the data work, so that trainer.* and logger.* mistakes surface at once
    trainer = build_trainer(cfg, output_dir, resuming=ckpt_path is not None, extra_callbacks=extra_callbacks)

    data_start = time.perf_counter()
    datamodule.prepare_data()
    datamodule.setup("fit")
    data_seconds = time.perf_counter() - data_start
    if hasattr(datamodule, "write_splits") and trainer.is_global_zero:  # which reviews validate this run, for audit
        datamodule.write_splits(output_dir)
    # the start depends on the seed alone (nothing above draws from torch's generator, so this changes no run): the
    # probe rebuilds it as its untrained control (stacked_rnn.probe.initial_model; tests/test_probe.py checks)
    torch.manual_seed(cfg.seed)
    try:
        model = instantiate(cfg.model, num_tokens=datamodule.num_tokens)
    except InstantiationException as err:  # e.g. a param_budget too small for a language model's vocabulary-wide head
        if isinstance(err.__cause__, ValueError):
            raise ConfigError(f"model.{err.__cause__}") from err
        raise
    cfg.model.units = model.hparams.units  # the width in use (chosen by model.param_budget when set), as recorded
    resumed_from_step = 0  # a resumed run times only the steps it trains itself
    if ckpt_path:
        resumed_from_step = check_resumable(ckpt_path, model)
        warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")  # resuming
        if cfg.data.get("bucket"):  # ExactResume makes the seeded sampler resumable
            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")

    try:
        start = time.perf_counter()
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        train_seconds = time.perf_counter() - start
        checkpoint = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        best_val = trainer.checkpoint_callback.best_model_score if trainer.checkpoint_callback else None
        epochs = trainer.current_epoch
        timed_epochs = epochs * (1 - resumed_from_step / max(trainer.global_step, 1))  # the epochs this process ran
        history = list(next(c for c in trainer.callbacks if isinstance(c, History)).epochs)  # test() reloads callbacks
        metric = cfg.get("metric", "acc")  # as the task describes itself: acc (IMDB), mse (adding), token_acc, ...
        test_score, test_scores = None, {}
        if cfg.test_after_fit:  # every DDP rank tests (a collective); rank 0 records
            tested = trainer.test(model, datamodule=datamodule, ckpt_path="best" if checkpoint else None,
                                  verbose=False, weights_only=True)
            test_scores = {name.split("/", 1)[1]: value for loader in tested for name, value in loader.items()
                           if name.startswith("test/")}  # a language model tests on two loaders (stream, windows)
            test_score = test_scores[metric]
    except SystemExit as err:  # Lightning exits this way after SIGTERM (and our Ctrl-C) or a second Ctrl-C
        if not trainer.interrupted:
            raise
        raise interrupted(cfg, trainer) from err
    if not trainer.is_global_zero:
        return {}

    results = {
        "status": "ok",
        "metric": metric,
        "metric_mode": cfg.data.get("metric_mode", "max"),  # max: higher is better
        # the score of the trivial answer, as the task states it (null: none given; lm: log2 of its vocabulary)
        "chance": cfg.data.get("chance") if cfg.data.get("chance") is not None else getattr(datamodule, "chance", None),
        f"test_{metric}": test_score,
        f"best_val_{metric}": float(best_val) if best_val is not None else None,
        **{f"test_{name}": value for name, value in test_scores.items() if name != metric},  # the task's other scores
        "num_params": model.num_params,
        "stack_params": model.stack_params,  # recurrent stack + head: what model.param_budget holds fixed
        "units": model.hparams.units,
        "param_budget": cfg.model.get("param_budget"),
        "train_seconds": round(train_seconds, 2),
        "epochs": epochs,
        "best_epoch": best_epoch(history, metric, cfg.data.get("metric_mode", "max")),
        "resumed_from_step": resumed_from_step,  # train_seconds covers the steps from here on
        "seconds_per_epoch": round(train_seconds / timed_epochs, 2) if timed_epochs > 0 else None,
        "train_samples_per_second": round(timed_epochs * samples_per_epoch(datamodule) / train_seconds, 1),
        "data_seconds": round(data_seconds, 2),  # fetch + tokenise (cold) or read the token cache (warm)
        "device": str(trainer.strategy.root_device),
        "precision": str(trainer.precision),
        "best_checkpoint": checkpoint,
        "history": history,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    if test_score is not None:
        log_hparams(trainer, model, results)
    (output_dir / "results.json").write_text(json.dumps(results, indent=2))
    # IMDB: probe_scales.json/png, probe.json/png; a language model: probe_lm.json/png
    if cfg.get("probe_after_fit") and checkpoint and (metric == "acc" or cfg.data.get("task") == "lm"):
        from stacked_rnn.probe import run_probe

        run_probe(checkpoint)
    log_run_files(trainer.loggers, output_dir)  # MLflow: results.json and the figures, now that they are written
    print_summary(results, output_dir, where(trainer.loggers))
    return results


def samples_per_epoch(datamodule) -> int:
    """Training sequences per epoch: the training set, or the windows a language model draws per epoch."""
    return getattr(datamodule, "samples_per_epoch", None) or len(datamodule.datasets["train"])


def best_epoch(history: list[dict], metric: str, mode: str = "max") -> int | None:
    """The epoch (1 = the first) with the best validation score, the one the best checkpoint holds: the first
    such epoch, as ModelCheckpoint keeps only strict improvements (max accuracy, min MSE)."""
    scores = [(h[f"val/{metric}"], h["epoch"]) for h in history if f"val/{metric}" in h]
    if not scores:
        return None
    sign = -1 if mode == "min" else 1
    best = max(sign * score for score, _ in scores)
    return next(epoch for score, epoch in scores if sign * score == best) + 1


def print_summary(results: dict, output_dir: Path, logs: list[str] = ()) -> None:
    metric = results["metric"]
    test = f"{results[f'test_{metric}']:.4f}" if results[f"test_{metric}"] is not None else "not run"
    print(
        f"\n{'=' * 72}\n"
        f"test {metric} {test} | best val {metric} {results[f'best_val_{metric}'] or float('nan'):.4f} | "
        f"{results['num_params']:,} params | {results['epochs']} epochs in {results['train_seconds']:.1f} s "
        f"({results['train_samples_per_second']:.0f} samples/s on {results['device']})\n"
        f"results:    {output_dir / 'results.json'}\n"
        f"checkpoint: {results['best_checkpoint']}\n"
        + "".join(f"logs:       {line}\n" for line in logs) + "=" * 72
    )


def requeue_with_submitit(cfg: DictConfig, err: Interrupted) -> None:
    """Slurm's pre-kill signal stopped training and last.ckpt is saved: now run submitit's handler for it, which
    resubmits this same job (launcher.checkpoint), requeues it and exits; the requeued job resumes from last.ckpt.
    Other ranks just exit (submitit requeues from rank 0). Returns only when submitit refuses to requeue."""
    from submitit.core.utils import UncompletedJobError

    log.warning(f"stopped by Slurm: {err}".splitlines()[0])
    handler = signal.getsignal(err.signum)
    if not callable(handler):  # not started by submitit's job runner: nothing can requeue this job
        record_failure(cfg, err)
        return
    try:
        handler(err.signum, None)  # rank 0: requeue and sys.exit; other ranks: return
    except UncompletedJobError as refused:  # e.g. timed out more than hydra.launcher.max_num_timeout times
        record_failure(cfg, Interrupted(f"{err} ({refused})", err.signum))
        return
    sys.exit(-1)


def record_failure(cfg: DictConfig, err: BaseException) -> None:
    """A sweep job that fails writes a results.json saying why, so the report lists it and the sweep goes on."""
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
    except Exception:
        config = OmegaConf.to_container(cfg, resolve=False)
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    reason = f"{type(err).__name__}: {err}".splitlines()[0][:300]
    (output_dir / "results.json").write_text(json.dumps(
        {"status": "failed", "reason": reason, "traceback": traceback.format_exc(), "config": config}, indent=2))
    log.error(f"job {output_dir.name} failed: {reason}")


@hydra.main(version_base="1.3", config_path="pkg://stacked_rnn.conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Single run: user mistakes exit with code 2 and a one-line message, a NaN loss with 1, Ctrl-C or SIGTERM
    with 128 + the signal number and the resume command. Multirun: a failing job (bad value, NaN, out of
    memory, interruption) is recorded as failed and the other jobs go on."""
    try:
        results = run(cfg)
        return results.get(f"test_{results.get('metric', 'acc')}")
    except (ConfigError, DataError, FloatingPointError) as err:
        if is_multirun():
            record_failure(cfg, err)
            return None
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1 if isinstance(err, FloatingPointError) else 2)
    except Interrupted as err:
        if is_multirun() and err.signum == submitit_requeue_signal():
            requeue_with_submitit(cfg, err)
            return None
        if is_multirun():
            record_failure(cfg, err)
            return None
        print(f"interrupted by {err}", file=sys.stderr)
        sys.exit(128 + err.signum)
    except KeyboardInterrupt:  # before training started (data preparation): there is nothing to save
        print("interrupted by Ctrl-C before training started: nothing was saved", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    except Exception as err:
        if not is_multirun():
            raise
        record_failure(cfg, err)
        return None


if __name__ == "__main__":
    os.environ.setdefault(SWEPT_KEYS_ENV, ",".join(swept_keys(sys.argv[1:])))  # names the sweep's job folders
    main()
