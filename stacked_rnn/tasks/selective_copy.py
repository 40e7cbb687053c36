"""Selective copying (Gu & Dao 2023, appendix E.1), sampled as Feng et al.'s official code does: K data tokens at
random steps among T noise steps, then K markers; at the k-th marker the model names the k-th data token.

It needs a layer that decides what to keep based on what it has already read: a gate that reads h_{t-1}. The
minimal cells (minGRU, minLSTM) gate on x_t alone, so one layer cannot, and Feng et al. report that stacking gives
it back (docs/selective_copy.md). Per-step classification: the batch's targets are class ids (B, T + K) that are
IGNORE everywhere but at the K markers; the metric is token accuracy over the markers (exact match also logged).

Token ids: 0 <pad> (never used: every sequence holds T + K steps), 1 noise ".", 2 marker "?", then the data tokens
"a", "b", ... whose class ids are 0..V-1. The official sampler's vocabulary of 16 holds 14 data tokens.
"""

from __future__ import annotations

import string

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from stacked_rnn.tasks.batches import IGNORE, to_device_keeping_lengths

NOISE_ID, MARKER_ID, FIRST_DATA_ID = 1, 2, 3
SPECIAL_TOKENS = ["<pad>", ".", "?"]


def vocabulary(data_tokens: int) -> list[str]:
    """Readable tokens: <pad>, '.' (noise), '?' (marker), then 'a', 'b', ... ('t27' past the alphabet)."""
    return SPECIAL_TOKENS + [string.ascii_lowercase[i] if i < 26 else f"t{i}" for i in range(data_tokens)]


def make_selective_copy(n: int, length: int, copies: int, data_tokens: int, generator: torch.Generator,
                        chunk: int = 8192) -> TensorDataset:
    """n sequences: ids (n, T + K) uint8, lengths (n,) all T + K, and the K data tokens' class ids (n, K) uint8 in
    the order they appear. Positions are K distinct steps of the first T, drawn uniformly (as torch.randperm)."""
    ids = torch.full((n, length + copies), NOISE_ID, dtype=torch.uint8)
    ids[:, length:] = MARKER_ID
    tokens = torch.randint(0, data_tokens, (n, copies), generator=generator, dtype=torch.uint8)  # (n, K)
    for start in range(0, n, chunk):  # (chunk, T) random keys at a time: a few MB, whatever n is
        rows = slice(start, min(start + chunk, n))
        keys = torch.rand(rows.stop - start, length, generator=generator)  # (c, T)
        positions = keys.argsort(dim=1)[:, :copies].sort(dim=1).values  # (c, K): K distinct steps, in order
        ids[rows].scatter_(1, positions, tokens[rows] + FIRST_DATA_ID)
    return TensorDataset(ids, torch.full((n,), length + copies, dtype=torch.int64), tokens)


def collate_copies(batch: list[tuple]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids (B, T + K) int64, lengths (B,) int64 on the CPU, targets (B, T + K) int64: the data tokens' class ids at
    the K marker steps, IGNORE at every other step."""
    ids = torch.stack([item[0] for item in batch]).long()  # (B, T + K)
    lengths = torch.stack([item[1] for item in batch])  # (B,)
    tokens = torch.stack([item[2] for item in batch]).long()  # (B, K)
    targets = torch.full_like(ids, IGNORE)
    targets[:, ids.shape[1] - tokens.shape[1]:] = tokens
    return ids, lengths, targets


class SelectiveCopyDataModule(L.LightningDataModule):
    """Seeded train/val/test sets of selective copying. The sets come from data.seed (the same for every run of a
    sweep); the batch order from data.order_seed (the run's seed). input_dim, task, num_classes, metric, metric_mode
    and chance are not settings: they describe the task to the model (a class per step over num_classes data
    tokens) and to the checkpoint callback and report (val/token_acc, higher is better, 1/V by guessing)."""

    def __init__(self, length: int = 128, num_tokens_to_copy: int = 8, data_tokens: int = 8, train_size: int = 64000,
                 val_size: int = 1000, test_size: int = 1000, batch_size: int = 64, eval_batch_size: int = 500,
                 seed: int = 0, order_seed: int | None = None, input_dim: int = 0, task: str = "tag",
                 num_classes: int | None = None, metric: str = "token_acc", metric_mode: str = "max",
                 chance: float | None = None):
        super().__init__()

        def whole(value, low):
            return isinstance(value, int) and not isinstance(value, bool) and value >= low

        checks = [
            ("data.length", length, whole(length, 1), "an integer >= 1 (T, the noise and data steps)"),
            ("data.num_tokens_to_copy", num_tokens_to_copy, whole(num_tokens_to_copy, 1) and num_tokens_to_copy <= length,
             f"an integer from 1 to data.length={length} (K data tokens among the T steps)"),
            ("data.data_tokens", data_tokens, whole(data_tokens, 2) and data_tokens <= 250, "an integer from 2 to 250"),
            ("data.train_size", train_size, whole(train_size, 1), "an integer >= 1"),
            ("data.val_size", val_size, whole(val_size, 1), "an integer >= 1"),
            ("data.test_size", test_size, whole(test_size, 1), "an integer >= 1"),
            ("data.batch_size", batch_size, whole(batch_size, 1), "an integer >= 1"),
            ("data.eval_batch_size", eval_batch_size, whole(eval_batch_size, 1), "an integer >= 1"),
            ("data.input_dim", input_dim, input_dim == 0, "0 (token ids)"),
            ("data.task", task, task == "tag", "tag"),
            ("data.num_classes", num_classes, num_classes in (None, data_tokens), f"data.data_tokens={data_tokens}"),
            ("data.metric", metric, metric in ("token_acc", "exact_match"), "token_acc or exact_match"),
            ("data.metric_mode", metric_mode, metric_mode == "max", "max"),
        ]
        for key, value, ok, allowed in checks:
            if not ok:
                raise ValueError(f"{key}={value!r} is not allowed: expected {allowed}")
        self.length, self.copies, self.data_tokens = length, num_tokens_to_copy, data_tokens
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.seed = seed
        self.order_seed = seed if order_seed is None else order_seed
        self.vocab = vocabulary(data_tokens)
        self.datasets: dict[str, TensorDataset] = {}

    @property
    def num_tokens(self) -> int:
        return len(self.vocab)

    def setup(self, stage: str | None = None) -> None:
        if not self.datasets:  # each split has its own generator, so train_size never changes val or test
            self.datasets = {split: make_selective_copy(n, self.length, self.copies, self.data_tokens,
                                                        torch.Generator().manual_seed(self.seed * 3 + i))
                             for i, (split, n) in enumerate(self.sizes.items())}

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return to_device_keeping_lengths(batch, device)

    def train_dataloader(self):
        return DataLoader(self.datasets["train"], batch_size=self.batch_size, shuffle=True, collate_fn=collate_copies,
                          generator=torch.Generator().manual_seed(self.order_seed))

    def val_dataloader(self):
        return DataLoader(self.datasets["val"], batch_size=self.eval_batch_size, collate_fn=collate_copies)

    def test_dataloader(self):
        return DataLoader(self.datasets["test"], batch_size=self.eval_batch_size, collate_fn=collate_copies)

    def state_dict(self) -> dict:
        """Stored in every checkpoint: what predict needs to turn text ('. . a . b ? ?') into the same ids, and the
        names of the classes it predicts."""
        return {"vocab": list(self.vocab), "max_len": self.length + self.copies, "truncate": "head",
                "tokenizer": "whitespace", "classes": self.vocab[FIRST_DATA_ID:]}
