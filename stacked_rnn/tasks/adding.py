"""The adding problem (Hochreiter & Schmidhuber 1997): a long-range regression task that needs no download.

Each sequence has T steps of two features, (value ~ U(0, 1), marker in {0, 1}). Exactly two steps are
marked, one in each half; the target is the sum of their two values. Predicting the mean (1.0) scores
MSE 1/6 = 0.167, so a model below that has carried information across up to T steps.
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from stacked_rnn.tasks.batches import to_device_keeping_lengths

BASELINE_MSE = 1 / 6  # Var(U1 + U2) for two independent U(0, 1): the MSE of always predicting 1


def make_adding(n: int, length: int, generator: torch.Generator) -> TensorDataset:
    """n sequences: inputs (n, T, 2) float, lengths (n,) int64 (all T), targets (n,) float."""
    values = torch.rand(n, length, generator=generator)  # (n, T)
    first = torch.randint(0, length // 2, (n,), generator=generator)
    second = torch.randint(length // 2, length, (n,), generator=generator)
    markers = torch.zeros(n, length)
    rows = torch.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    targets = values[rows, first] + values[rows, second]  # (n,)
    return TensorDataset(torch.stack([values, markers], dim=-1), torch.full((n,), length), targets)


class AddingDataModule(L.LightningDataModule):
    """Seeded train/val/test sets of the adding problem, in the (inputs, lengths, targets) batch shape that
    StackedRNNClassifier reads. input_dim, task, metric, metric_mode and chance are not settings: they describe the
    task to the model (model.input_dim, model.task), the checkpoint callback (val/mse, min) and the report."""

    def __init__(self, length: int = 100, train_size: int = 10000, val_size: int = 1000, test_size: int = 1000,
                 batch_size: int = 64, eval_batch_size: int = 500, seed: int = 0, input_dim: int = 2,
                 task: str = "regress", metric: str = "mse", metric_mode: str = "min", chance: float = BASELINE_MSE):
        super().__init__()
        for key, value, ok, allowed in [
            ("data.length", length, isinstance(length, int) and length >= 2, "an integer >= 2"),
            ("data.train_size", train_size, isinstance(train_size, int) and train_size >= 1, "an integer >= 1"),
            ("data.val_size", val_size, isinstance(val_size, int) and val_size >= 1, "an integer >= 1"),
            ("data.test_size", test_size, isinstance(test_size, int) and test_size >= 1, "an integer >= 1"),
            ("data.batch_size", batch_size, isinstance(batch_size, int) and batch_size >= 1, "an integer >= 1"),
            ("data.input_dim", input_dim, input_dim == 2, "2 (value, marker)"),
            ("data.task", task, task == "regress", "regress"),
            ("data.metric", metric, metric == "mse", "mse"),
            ("data.metric_mode", metric_mode, metric_mode == "min", "min"),
            ("data.chance", chance, abs(chance - BASELINE_MSE) < 1e-3, f"{BASELINE_MSE:.5f} (the MSE of predicting 1)"),
        ]:
            if not ok:
                raise ValueError(f"{key}={value!r} is not allowed: expected {allowed}")
        self.length, self.sizes = length, {"train": train_size, "val": val_size, "test": test_size}
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, seed
        self.datasets: dict[str, TensorDataset] = {}
        self.num_tokens = 0  # no vocabulary: the model reads the two features directly

    def setup(self, stage: str | None = None) -> None:
        if not self.datasets:  # each split has its own seed, so train_size never changes val or test
            self.datasets = {split: make_adding(n, self.length, torch.Generator().manual_seed(self.seed * 3 + i))
                             for i, (split, n) in enumerate(self.sizes.items())}

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return to_device_keeping_lengths(batch, device)

    def train_dataloader(self):
        return DataLoader(self.datasets["train"], batch_size=self.batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(self.seed))

    def val_dataloader(self):
        return DataLoader(self.datasets["val"], batch_size=self.eval_batch_size)

    def test_dataloader(self):
        return DataLoader(self.datasets["test"], batch_size=self.eval_batch_size)
