"""Training-control callbacks added to every run: per-epoch history, the NaN/inf stop, exact resume and
saving for resume on interruption. Lightning's own callbacks (checkpointing, lr monitor, progress bar,
early stopping) come from conf/callbacks; gradient flow lives in diagnostics.py."""

from __future__ import annotations

import os
import signal
import sys
import threading
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class History(L.Callback):
    """Per-epoch validation metrics (and train loss), kept for results.json and the sweep report."""

    def __init__(self):
        self.epochs: list[dict] = []

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            metrics = trainer.callback_metrics
            self.epochs.append({"epoch": trainer.current_epoch,  # every val/* the task logs: acc, loss, token_acc, ...
                                **{k: round(float(v), 5) for k, v in sorted(metrics.items()) if k.startswith("val/")}})

    def state_dict(self) -> dict:  # saved in checkpoints (plain types), so a resumed run keeps earlier epochs
        return {"epochs": list(self.epochs)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.epochs = list(state_dict["epochs"])


class StopOnNonFiniteLoss(L.Callback):
    """Stop at a NaN/inf training loss before any checkpoint stores the broken weights.

    Losses are summed on the device (a NaN or inf survives the sum) and read every `every` steps and
    before every checkpoint save: no host sync per step, yet no bad step goes unnoticed."""

    def __init__(self, every: int = 25):
        self.every = every
        self.loss_sum: torch.Tensor | None = None
        self.steps = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        loss = loss.detach().float()
        self.loss_sum = loss if self.loss_sum is None else self.loss_sum + loss
        self.steps += 1
        if self.steps % self.every == 0:
            self.check(trainer)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self.check(trainer)  # raising here aborts the save: the previous (good) file stays

    def check(self, trainer) -> None:
        if self.loss_sum is not None and not torch.isfinite(self.loss_sum).item():
            folder = Path(trainer.default_root_dir) / "checkpoints"
            kept = sorted(folder.glob("*.ckpt")) if folder.is_dir() else []
            raise FloatingPointError(
                f"training loss became {self.loss_sum.item()} by step {trainer.global_step} (epoch "
                f"{trainer.current_epoch}); try a lower model.lr or trainer.gradient_clip_val. "
                + (f"The last good checkpoints are kept: {', '.join(map(str, kept))}" if kept
                   else "No checkpoint had been saved yet.")
            )
        self.loss_sum = None


class ExactResume(L.Callback):
    """Make a resumed run go on exactly as the saved one would have, at an epoch end or mid-epoch.

    Lightning restores weights, optimizer and loop counters, but not the data order within an epoch nor the
    random state. So torch is reseeded from (seed, epoch) at each epoch's first batch (as the sampler is), the
    torch RNG state goes into every checkpoint and is put back before the first batch after a mid-epoch
    resume, and the sampler leaves out the batches of that epoch that were already trained on."""

    def __init__(self, seed: int):
        self.seed = seed
        self.rng_state: dict | None = None

    def state_dict(self) -> dict:
        return {"cpu": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        progress = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]
        mid_epoch = not progress["is_last_batch"] and progress["current"]["completed"] > 0
        if mid_epoch and trainer.state.fn == TrainerFn.FITTING:
            if trainer.world_size > 1:  # skip_batches counts one sampler's batches, not each rank's share
                warnings.warn("resuming a DDP run mid-epoch: this epoch's data starts again from its first batch "
                              "(exact resume needs a single process)")
                return
            if hasattr(trainer.datamodule, "skip_batches"):
                trainer.datamodule.skip_batches(progress["current"]["completed"])
            self.rng_state = checkpoint["callbacks"].get(self.state_key)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.rng_state is not None:  # the first batch after a mid-epoch resume
            torch.set_rng_state(self.rng_state["cpu"])
            if torch.cuda.is_available() and len(self.rng_state["cuda"]) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(self.rng_state["cuda"])
            self.rng_state = None
        elif batch_idx == 0:  # an epoch's first batch (not on_train_epoch_start: the DataLoader draws from torch after it)
            torch.manual_seed(int(np.random.SeedSequence([self.seed, trainer.current_epoch]).generate_state(1)[0]))


def submitit_requeue_signal() -> signal.Signals | None:
    """The signal Slurm sends before a time-limit or preemption kill of a submitit job (sbatch --signal, USR2 unless
    SUBMITIT_PREEMPT_SIGNAL says otherwise); None outside a job of hydra/launcher=slurm."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
        return None
    return signal.Signals["SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")]


class SaveForResume(L.Callback):
    """Write <dirpath>/last.ckpt at every epoch end (Lightning 2.6's save_last writes it only with a new best),
    every `every_n_train_steps` steps (a kill -9 loses at most that many) and when SIGTERM or Ctrl-C stops
    training; `ckpt_path=last` resumes from it.

    Ctrl-C is handed to Lightning's SIGTERM handling, which stops at the end of the current batch, so the
    saved state never holds half an optimizer step. A second Ctrl-C stops at once, without saving. In a Slurm job
    of hydra/launcher=slurm, Slurm's pre-kill signal (submitit's USR2) stops training the same way; train.py then
    hands it to submitit, which requeues the job."""

    def __init__(self, dirpath: str, every_n_train_steps: int = 500):
        if not is_int(every_n_train_steps) or every_n_train_steps < 0:
            raise ValueError(f"callbacks.save_for_resume.every_n_train_steps={every_n_train_steps!r} is not "
                             "allowed: expected an integer >= 0 (0: only at epoch ends and on interruption)")
        self.path = Path(dirpath) / "last.ckpt"
        self.every = every_n_train_steps
        self.signum: int | None = None
        self.saved: Path | None = None
        self._saved_step = -1
        self._sigint = None
        self._requeue = None  # (signal, submitit's handler) while training in a Slurm job

    def on_train_start(self, trainer, pl_module):  # after Lightning has put its own SIGTERM handler in place
        if threading.current_thread() is threading.main_thread():
            self._sigint = signal.signal(signal.SIGINT, self._on_sigint)
            requeue_signal = submitit_requeue_signal()
            if requeue_signal is not None:
                self._requeue = (requeue_signal, signal.signal(requeue_signal, self._on_requeue_signal))

    def _on_requeue_signal(self, signum, frame):
        """Slurm will kill this job soon: note it; on_train_batch_end stops training (submitit's handler runs later)."""
        self.signum = signum
        print(f"\n{signal.Signals(signum).name} from Slurm: stopping after this batch, saving last.ckpt, then "
              "requeueing", file=sys.stderr, flush=True)

    def _stop_for_requeue(self, trainer) -> None:
        """Stop after this batch when any rank got Slurm's signal. The ranks agree first (one small all-reduce
        per step, in Slurm jobs with DDP only): a rank stopping alone would leave the others waiting forever."""
        stop = self.signum == self._requeue[0]
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            self.signum = self._requeue[0]
            trainer._signal_connector.received_sigterm = True  # what Lightning's SIGTERM handler sets: it raises
            # SIGTERMException after this batch, and on_exception saves last.ckpt

    def _on_sigint(self, signum, frame):
        on_sigterm = signal.getsignal(signal.SIGTERM)  # Lightning's: flags the trainer to stop after this batch
        if self.signum is not None or not callable(on_sigterm):
            raise KeyboardInterrupt
        self.signum = signum
        print("\nCtrl-C: stopping after this batch and saving a checkpoint (press Ctrl-C again to stop at once, "
              "without saving)", file=sys.stderr, flush=True)
        on_sigterm(signum, frame)

    def _restore_sigint(self):
        if self._sigint is not None:
            signal.signal(signal.SIGINT, self._sigint)
            self._sigint = None
        if self._requeue is not None:
            signal.signal(*self._requeue)
            self._requeue = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self._requeue is not None:
            self._stop_for_requeue(trainer)
        step = trainer.global_step
        if self.every and step % self.every == 0 and step != self._saved_step \
                and not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:  # the epoch-end save follows
            trainer.save_checkpoint(self.path, weights_only=False)
            self._saved_step = step

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.save_checkpoint(self.path, weights_only=False)
        self._saved_step = trainer.global_step

    def on_train_end(self, trainer, pl_module):
        self._restore_sigint()

    def on_exception(self, trainer, pl_module, exception):
        self._restore_sigint()
        if isinstance(exception, KeyboardInterrupt):
            self.signum = signal.SIGINT
        elif isinstance(exception, SIGTERMException):
            self.signum = self.signum or signal.SIGTERM
            if trainer.state.fn == TrainerFn.FITTING and trainer.global_step > 0:
                trainer.save_checkpoint(self.path, weights_only=False)
                self.saved = self.path
