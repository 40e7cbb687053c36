"""Batches of token-id sequences, shared by the text tasks: truncation, right-padded collation with the lengths kept
on the CPU, a length-bucketed sampler (less padding, shorter packed steps), and the same batches cut on the device
from token ids moved there once (DeviceTokens, DeviceBatches: data.on_device=true).
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

PAD_ID = 0  # every text task pads with id 0, the row of the embedding that stays zero
IGNORE = -100  # a per-step target that is not scored (task=tag; PyTorch's cross-entropy default)
TRUNCATE_CHOICES = ("head", "tail")


def truncate_ids(ids: np.ndarray, max_len: int, truncate: str) -> np.ndarray:
    """Cut a sequence to max_len tokens. truncate=head drops the beginning (keeps the last tokens,
    like Keras truncating='pre'); truncate=tail drops the end (keeps the first tokens)."""
    if len(ids) <= max_len:
        return ids
    return ids[-max_len:] if truncate == "head" else ids[:max_len]


class ReviewDataset(Dataset):
    """Token-id sequences (already truncated) with 0/1 labels."""

    def __init__(self, sequences: list[np.ndarray], labels: np.ndarray):
        self.sequences, self.labels = sequences, labels
        self.lengths = np.asarray([len(s) for s in sequences])

    def __len__(self):
        return len(self.sequences)

    def __getitem__(self, i):
        return self.sequences[i], self.labels[i]


def collate(batch, pad_to: int | None = None, longest_first: bool = False):
    """Right-pad a batch to its own longest review (or to pad_to). Returns
    ids (B, T) int64, lengths (B,) int64 on CPU as pack_padded_sequence wants, labels (B,) float32.
    longest_first sorts the batch by length, so that packing on the GPU needs no reordering (no host sync)."""
    if longest_first:
        batch = sorted(batch, key=lambda item: -len(item[0]))
    lengths = torch.tensor([len(ids) for ids, _ in batch], dtype=torch.int64)
    width = pad_to or int(lengths.max())
    padded = np.full((len(batch), width), PAD_ID, dtype=np.int64)  # (B, T)
    for row, (ids, _) in enumerate(batch):
        padded[row, : len(ids)] = ids
    labels = torch.tensor(np.asarray([y for _, y in batch]), dtype=torch.float32)
    return torch.from_numpy(padded), lengths, labels


def to_device_keeping_lengths(batch, device: torch.device):
    """Move ids and labels to the device and leave lengths on the CPU, where pack_padded_sequence reads them:
    a round trip through the GPU would make every step wait for the GPU to catch up (a host sync)."""
    ids, lengths, labels = batch
    return ids.to(device, non_blocking=True), lengths, labels.to(device, non_blocking=True)


class BucketSampler(Sampler[int]):
    """Yields indices so that consecutive batch_size-sized runs have similar lengths (less padding,
    shorter packed steps), while the batch order stays random. Seeded per epoch for reproducibility."""

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int = 0, pool_batches: int = 50):
        self.lengths, self.batch_size, self.seed, self.pool = lengths, batch_size, seed, pool_batches * batch_size
        self.epoch = 0
        self.skip = 0  # indices to leave out of the next pass only: a run resumed mid-epoch already trained on them

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        return len(self.lengths)

    def __iter__(self):
        rng = np.random.default_rng((self.seed, self.epoch))
        order = rng.permutation(len(self.lengths))
        pools = [order[i : i + self.pool] for i in range(0, len(order), self.pool)]
        batches = []
        for pool in pools:
            pool = pool[np.argsort(self.lengths[pool], kind="stable")]
            batches += [pool[i : i + self.batch_size] for i in range(0, len(pool), self.batch_size)]
        # the DataLoader cuts this stream into runs of batch_size: a short batch anywhere but last would shift every
        # later cut across two length groups (IMDB: 79% of the computed steps real instead of 97%)
        short = [b for b in batches if len(b) < self.batch_size]
        full = [b for b in batches if len(b) == self.batch_size]
        order = np.concatenate([full[b] for b in rng.permutation(len(full))] + short) if batches else order
        skip, self.skip = self.skip, 0
        yield from order[skip:].tolist()


class DeviceTokens:
    """One split's reviews on a device, moved there once: every review's token ids end to end (flat, with one PAD
    after the last review, where padding reads), each review's offset into them, its length and its label."""

    def __init__(self, dataset: ReviewDataset, device: torch.device | str):
        self.device = torch.device(device)
        self.host_lengths = np.asarray(dataset.lengths, dtype=np.int64)  # (N,) on the host: batch widths, no sync
        offsets = np.concatenate([[0], np.cumsum(self.host_lengths)]).astype(np.int64)  # (N + 1,)
        flat = np.concatenate([*(np.asarray(s, dtype=np.int64) for s in dataset.sequences), [PAD_ID]])
        self.pad_at = len(flat) - 1  # the PAD after the last review
        self.flat = to_device_once(flat, self.device)  # (total tokens + 1,)
        self.offsets = to_device_once(offsets[:-1], self.device)  # (N,)
        self.lengths = to_device_once(self.host_lengths, self.device)  # (N,)
        self.labels = to_device_once(np.asarray(dataset.labels, dtype=np.float32), self.device)  # (N,)

    def __len__(self):
        return len(self.host_lengths)

    def cut(self, starts: torch.Tensor, lengths: torch.Tensor, width: int) -> torch.Tensor:
        """Right-padded ids (B, width) int64 of the reviews starting at `starts` (B,) with `lengths` (B,), both on
        the device: a few kernels, and width comes from the host, so nothing waits for the device."""
        steps = torch.arange(width, device=self.device)  # (T,)
        positions = torch.where(steps < lengths[:, None], starts[:, None] + steps, self.pad_at)  # (B, T)
        return self.flat.index_select(0, positions.flatten()).view(positions.shape)  # (B, T)


def to_device_once(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array as a tensor on `device`: through pinned memory and without waiting on CUDA, as is on the CPU."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


class DeviceBatches:
    """The batches that a DataLoader with `collate(longest_first=True)` makes of a split, cut on the split's device
    (DeviceTokens) instead: no worker processes, no collation and no host-to-device copy of ids or labels per step.

    `index_batches` is a DataLoader over the split's indices with the host loader's own sampler, batch size and
    shuffling: it draws the same random numbers, so it yields the same batches in the same order (a BucketSampler's
    set_epoch and skip reach it through `sampler`, as Lightning and IMDBDataModule.skip_batches set them). Once per
    epoch, as iteration starts, its batches are read on the host, each sorted longest first as collate sorts it, and
    the rows' offsets, lengths and labels are gathered in that order on the device from one copy of the order. Each
    step then slices them (each batch's width is known on the host) and cuts its ids (DeviceTokens.cut).
    Lengths come on the CPU as the host loader gives them (pinned when the device is CUDA), where packing reads them.
    """

    def __init__(self, tokens: DeviceTokens, index_batches, pad_to: int | None = None):
        self.tokens, self.index_batches, self.pad_to = tokens, index_batches, pad_to

    @property
    def sampler(self):  # Lightning calls set_epoch on a loader's sampler (and batch_sampler) each epoch
        return getattr(self.index_batches, "sampler", None)

    @property
    def batch_sampler(self):
        return getattr(self.index_batches, "batch_sampler", None)

    def __len__(self):
        return len(self.index_batches)

    def __iter__(self):
        tokens = self.tokens
        batches = [np.asarray(b, dtype=np.int64) for b in self.index_batches]  # this epoch's order, on the host
        batches = [b[np.argsort(-tokens.host_lengths[b], kind="stable")] for b in batches]  # longest first, as collate
        if not batches:
            return
        order = np.concatenate(batches)  # (N,) rows in the order they are served
        rows = to_device_once(order, tokens.device)  # the epoch's one copy
        starts, lengths, labels = (t.index_select(0, rows) for t in (tokens.offsets, tokens.lengths, tokens.labels))
        host_lengths = torch.from_numpy(tokens.host_lengths[order])
        if tokens.device.type == "cuda":
            host_lengths = host_lengths.pin_memory()  # slices of pinned memory copy to the GPU without waiting
        end = 0
        for batch in batches:
            start, end = end, end + len(batch)
            width = self.pad_to or int(tokens.host_lengths[batch].max())
            yield (tokens.cut(starts[start:end], lengths[start:end], width), host_lengths[start:end],
                   labels[start:end])


class TokenSequenceData(L.LightningDataModule):
    """What the text tasks' data modules share: batches that reach the device with their lengths left on the CPU,
    and a mid-epoch resume that leaves out the batches already seen (data.bucket=true: the seeded BucketSampler).
    A subclass sets self.batch_size and self.eval_batch_size and builds each split's loader in
    _loader(split, batch_size, train), keeping the training sampler in self._train_sampler."""

    def __init__(self):
        super().__init__()
        self._skip_batches = 0  # asked for before the training loader exists
        self._train_sampler: BucketSampler | None = None

    def _loader(self, split: str, batch_size: int, train: bool):
        raise NotImplementedError

    def skip_batches(self, n: int) -> None:
        """Resume mid-epoch: the next pass over the training data leaves out its first n batches, so the run goes on
        with the same batches it would have seen (with data.bucket=true, the seeded sampler; IMDB's data.on_device=true
        too, whose index loader reads the same sampler)."""
        if self._train_sampler is not None:  # the loader already exists (Lightning made it to count steps)
            self._train_sampler.skip = n * self.batch_size
        else:
            self._skip_batches = n

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return to_device_keeping_lengths(batch, device)

    def train_dataloader(self):
        return self._loader("train", self.batch_size, train=True)

    def val_dataloader(self):
        return self._loader("val", self.eval_batch_size, train=False)

    def test_dataloader(self):
        return self._loader("test", self.eval_batch_size, train=False)
