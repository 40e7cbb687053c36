"""Train, test and record one stacked RNN: `python -m stacked_rnn.train model.cell=gru model.layers=3`.

Hydra composes conf/ (add -m for sweeps); this module turns the config into a DataModule, a model
and a Lightning Trainer, fits, tests the best checkpoint on the official test set, logs hparams to
TensorBoard and writes results.json into the run folder.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from stacked_rnn.data import TRUNCATE_CHOICES, DataError
from stacked_rnn.model import CELLS, INITS, LR_SCHEDULES, PACKING, POOLS, TASKS

log = logging.getLogger("stacked_rnn")
HPARAM_KEYS = ("cell", "layers", "units", "dropout", "bidirectional", "pool", "embed_dim", "lr")
HP_METRICS = ("hp/best_val_{metric}", "hp/test_{metric}", "hp/train_seconds")


class ConfigError(ValueError):
    """A config value the user can fix; the message names the key, the value and what is allowed."""


def check_config(cfg: DictConfig) -> None:
    """Reject bad values before any work starts."""
    m, d = cfg.model, cfg.data
    rules = [
        ("model.cell", m.cell, m.cell in CELLS, f"one of {CELLS}"),
        ("model.pool", m.pool, m.pool in POOLS, f"one of {POOLS}"),
        ("model.init", m.init, m.init in INITS, f"one of {INITS}"),
        ("model.lr_schedule", m.lr_schedule, m.lr_schedule in LR_SCHEDULES, f"one of {LR_SCHEDULES}"),
        ("model.pack", m.pack, m.pack in PACKING, f"one of {PACKING}"),
        ("model.layers", m.layers, isinstance(m.layers, int) and m.layers >= 1, "an integer >= 1"),
        ("model.units", m.units, isinstance(m.units, int) and m.units >= 1, "an integer >= 1"),
        ("model.embed_dim", m.embed_dim, isinstance(m.embed_dim, int) and m.embed_dim >= 1, "an integer >= 1"),
        ("model.dropout", m.dropout, 0 <= m.dropout < 1, "a number in [0, 1)"),
        ("model.embed_dropout", m.embed_dropout, 0 <= m.embed_dropout < 1, "a number in [0, 1)"),
        ("model.head_dropout", m.head_dropout, 0 <= m.head_dropout < 1, "a number in [0, 1)"),
        ("model.lr", m.lr, m.lr > 0, "a number > 0"),
        ("model.weight_decay", m.weight_decay, m.weight_decay >= 0, "a number >= 0"),
        ("model.task", m.get("task"), m.get("task", "classify") in TASKS, f"one of {TASKS}"),
        ("model.residual", m.get("residual"), m.get("residual", False) in (True, False), "true or false"),
        ("model.input_dim", m.get("input_dim"), isinstance(m.get("input_dim", 0), int) and m.get("input_dim", 0) >= 0,
         "0 (token ids) or the number of input features"),
    ]
    if "max_len" in d:  # the IMDB data group
        rules += [
            ("data.max_len", d.max_len, isinstance(d.max_len, int) and d.max_len >= 1, "an integer >= 1"),
            ("data.vocab_size", d.vocab_size, isinstance(d.vocab_size, int) and d.vocab_size >= 3,
             "an integer >= 3 (<pad>, <unk> and at least one word)"),
            ("data.truncate", d.truncate, d.truncate in TRUNCATE_CHOICES, f"one of {TRUNCATE_CHOICES}"),
            ("data.batch_size", d.batch_size, isinstance(d.batch_size, int) and d.batch_size >= 1, "an integer >= 1"),
            ("data.limit", d.limit, d.limit is None or (isinstance(d.limit, int) and d.limit >= 2),
             "null or an integer >= 2"),
        ]
    if "length" in d:  # the adding-problem data group
        rules += [(f"data.{k}", d[k], isinstance(d[k], int) and d[k] >= low, f"an integer >= {low}")
                  for k, low in (("length", 2), ("train_size", 1), ("val_size", 1), ("test_size", 1), ("batch_size", 1))]
    for key, value, ok, allowed in rules:
        if not ok:
            raise ConfigError(f"{key}={value!r} is not allowed: expected {allowed}")
    if m.dropout > 0 and m.layers == 1:
        warnings.warn(f"model.dropout={m.dropout} has no effect with model.layers=1: PyTorch applies it only "
                      "between stacked layers (use model.head_dropout or model.embed_dropout instead)")


class History(L.Callback):
    """Per-epoch validation metrics (and train loss), kept for results.json and the sweep report."""

    def __init__(self):
        self.epochs: list[dict] = []

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            metrics = trainer.callback_metrics
            self.epochs.append({"epoch": trainer.current_epoch,
                                **{k: round(float(metrics[k]), 5) for k in ("val/acc", "val/loss", "val/mse") if k in metrics}})


class StopOnNonFiniteLoss(L.Callback):
    """Stop at the first NaN/inf training loss (checked every `every` steps to avoid a host sync per step)."""

    def __init__(self, every: int = 25):
        self.every = every

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx % self.every == 0 and not torch.isfinite(outputs["loss"]).item():
            raise FloatingPointError(
                f"training loss became {outputs['loss'].item()} at step {trainer.global_step} (epoch "
                f"{trainer.current_epoch}); try a lower model.lr or trainer.gradient_clip_val. The last good "
                f"checkpoint is kept in {Path(trainer.default_root_dir) / 'checkpoints'}"
            )


def assign_device(job_num: int, gpu_count: int) -> list[int] | None:
    """The device of sweep job `job_num`: GPU job_num mod G, or None (the CPU) when there is no GPU."""
    return [job_num % gpu_count] if gpu_count > 0 else None


def place_sweep_job(cfg: DictConfig) -> None:
    """In a multirun, give each job its own GPU (trainer.devices=[i mod G], never CUDA_VISIBLE_DEVICES,
    which joblib's reused workers would not see change) or, on CPU, its share of the cores."""
    hydra_cfg = HydraConfig.get()
    n_jobs = hydra_cfg.launcher.get("n_jobs") or 1
    parallel = (os.cpu_count() or 1) if n_jobs < 0 else min(n_jobs, os.cpu_count() or 1)
    device = assign_device(hydra_cfg.job.num, torch.cuda.device_count()) if uses_cuda(cfg) else None
    if device is not None and cfg.trainer.devices in (1, "1", "auto"):
        cfg.trainer.devices = device
    if parallel > 1 and not uses_cuda(cfg):
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // parallel))


def is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def uses_cuda(cfg: DictConfig) -> bool:
    accelerator = cfg.trainer.accelerator
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def build_trainer(cfg: DictConfig, output_dir: Path) -> L.Trainer:
    """The Lightning Trainer from cfg.trainer, with cfg.callbacks and a TensorBoard logger in the run folder."""
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None] + [History(), StopOnNonFiniteLoss()]
    if not cfg.trainer.get("enable_progress_bar", True):  # Lightning refuses a progress bar callback then
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    logger = TensorBoardLogger(save_dir=str(output_dir), name="", version="", default_hp_metric=False)
    precision = cfg.trainer.precision
    if precision == "auto":
        precision = "bf16-mixed" if uses_cuda(cfg) and torch.cuda.is_bf16_supported() else "32-true"
    strategy = cfg.trainer.get("strategy", "auto")
    if strategy == "ddp" and is_multirun():
        # Lightning's ddp re-runs sys.argv in child processes: inside a multirun that would start the whole
        # sweep again (Lightning #11300). Spawned workers inherit this job instead.
        log.warning("trainer.strategy=ddp inside a multirun: using ddp_spawn so each job stays one job")
        strategy = "ddp_spawn"
    return instantiate(cfg.trainer, callbacks=callbacks, logger=logger, precision=precision, strategy=strategy,
                       default_root_dir=str(output_dir))


def log_hparams(trainer: L.Trainer, model, results: dict) -> None:
    """One HPARAMS row per run, with the same keys in every run (TensorBoard hides keys missing from the first)."""
    hparams = {k: model.hparams[k] for k in HPARAM_KEYS} | {"params": results["num_params"]}
    metric = results["metric"]
    metrics = {name.format(metric=metric): value for name, value in zip(
        HP_METRICS, (results[f"best_val_{metric}"], results[f"test_{metric}"], results["train_seconds"]))}
    trainer.logger.log_hyperparams(hparams, metrics)


def run(cfg: DictConfig) -> dict:
    """Fit, test and record one configuration. Returns what it writes to results.json."""
    check_config(cfg)
    if is_multirun():
        place_sweep_job(cfg)
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    torch.set_flush_denormal(True)  # vanishing BPTT gradients turn subnormal: ~15x slower on x86 without this
    L.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    model = instantiate(cfg.model, num_tokens=datamodule.num_tokens)
    trainer = build_trainer(cfg, output_dir)

    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    train_seconds = time.perf_counter() - start
    if trainer.interrupted:
        raise KeyboardInterrupt
    if not trainer.is_global_zero:  # DDP workers: rank 0 tests and records
        return {}
    checkpoint = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    best_val = trainer.checkpoint_callback.best_model_score if trainer.checkpoint_callback else None
    epochs = trainer.current_epoch
    metric = cfg.get("metric", "acc")  # acc for IMDB, mse for data=adding
    test_score = None
    if cfg.test_after_fit:
        tested = trainer.test(model, datamodule=datamodule, ckpt_path=checkpoint or None, verbose=False)
        test_score = tested[0][f"test/{metric}"]

    results = {
        "status": "ok",
        "metric": metric,
        f"test_{metric}": test_score,
        f"best_val_{metric}": float(best_val) if best_val is not None else None,
        "num_params": model.num_params,
        "train_seconds": round(train_seconds, 2),
        "epochs": epochs,
        "seconds_per_epoch": round(train_seconds / max(epochs, 1), 2),
        "train_samples_per_second": round(epochs * len(datamodule.datasets["train"]) / train_seconds, 1),
        "data_prepare_seconds": round(datamodule.prepare_seconds, 2),
        "device": str(trainer.strategy.root_device),
        "precision": str(trainer.precision),
        "best_checkpoint": checkpoint,
        "history": next(c for c in trainer.callbacks if isinstance(c, History)).epochs,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    if test_score is not None:
        log_hparams(trainer, model, results)
    else:
        results["best_checkpoint"] = checkpoint
    (output_dir / "results.json").write_text(json.dumps(results, indent=2))
    if cfg.get("probe_after_fit") and checkpoint and metric == "acc":  # layer-wise probes: probe.json, probe.png
        from stacked_rnn.probe import run_probe

        run_probe(checkpoint)
    print_summary(results, output_dir)
    return results


def print_summary(results: dict, output_dir: Path) -> None:
    metric = results["metric"]
    test = f"{results[f'test_{metric}']:.4f}" if results[f"test_{metric}"] is not None else "not run"
    print(
        f"\n{'=' * 72}\n"
        f"test {metric} {test} | best val {metric} {results[f'best_val_{metric}'] or float('nan'):.4f} | "
        f"{results['num_params']:,} params | {results['epochs']} epochs in {results['train_seconds']:.1f} s "
        f"({results['train_samples_per_second']:.0f} samples/s on {results['device']})\n"
        f"results:    {output_dir / 'results.json'}\n"
        f"checkpoint: {results['best_checkpoint']}\n"
        f"logs:       tensorboard --logdir {output_dir}\n{'=' * 72}"
    )


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
    """Single run: user mistakes exit with code 2 and a one-line message. Multirun: a failing job
    (bad value, NaN, out of memory) is recorded as failed and the other jobs go on."""
    try:
        results = run(cfg)
        return results.get(f"test_{results.get('metric', 'acc')}")
    except (ConfigError, DataError, FloatingPointError) as err:
        if is_multirun():
            record_failure(cfg, err)
            return None
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1 if isinstance(err, FloatingPointError) else 2)
    except Exception as err:
        if not is_multirun():
            raise
        record_failure(cfg, err)
        return None


if __name__ == "__main__":
    main()
