"""IMDB batches for Lightning: the cached token ids of stacked_rnn.imdb cut to data.max_len, served as
length-bucketed, dynamically padded batches by the LightningDataModule.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from stacked_rnn.imdb import (IMDB_SHA256, IMDB_URL, PAD_ID, VAL_SPLITS, DataError, default_cache_dir, from_flat,
                              load_token_cache, prepare_token_cache, resolve_source)

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


class IMDBDataModule(L.LightningDataModule):
    """IMDB reviews as token ids: official train minus a validation split (whole movies by default, so that
    validation never rewards memorising a training movie), and the official test set."""

    def __init__(
        self,
        root: str | None = None,
        archive: str | None = None,
        url: str = IMDB_URL,
        sha256: str | None = IMDB_SHA256,
        cache_dir: str | None = None,
        vocab_size: int = 20000,
        max_len: int = 256,
        truncate: str = "tail",
        val_size: int | float = 0.1,
        val_split: str = "movie",
        limit: int | None = None,
        seed: int = 0,
        order_seed: int | None = None,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        bucket: bool = True,
        fixed_length: bool = False,
        pin_memory: bool | None = None,
        progress: bool = True,
    ):
        super().__init__()
        if truncate not in TRUNCATE_CHOICES:
            raise DataError(f"data.truncate={truncate!r} is not one of {TRUNCATE_CHOICES}")
        if val_split not in VAL_SPLITS:
            raise DataError(f"data.val_split={val_split!r} is not one of {VAL_SPLITS}")
        self.source_args = (root, archive, url, sha256)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.vocab_size, self.max_len, self.truncate = vocab_size, max_len, truncate
        self.val_size, self.val_split, self.limit, self.seed = val_size, val_split, limit, seed
        self.order_seed = seed if order_seed is None else order_seed  # batch order; the split keeps `seed`
        self.val_names: list[str] = []  # the validation reviews, e.g. train/pos/1234_8.txt (for splits.json)
        self.val_split_used = val_split  # random when movie was asked for but the source has no urls files
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.bucket, self.fixed_length, self.progress = bucket, fixed_length, progress
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.cache_path: Path | None = None
        self.vocab: list[str] | None = None
        self.datasets: dict[str, ReviewDataset] = {}
        self._skip_batches = 0
        self._train_sampler: BucketSampler | None = None

    def prepare_data(self) -> None:
        """Fetch, read and tokenise into the cache (once; Lightning calls this on rank 0 only)."""
        if self.cache_path is not None:
            return
        read, source_id = resolve_source(*self.source_args, cache_dir=self.cache_dir, progress=self.progress)
        self.cache_path = prepare_token_cache(read, source_id, self.cache_dir, self.vocab_size, self.val_size,
                                              self.limit, self.seed, self.progress, self.val_split)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        self.prepare_data()  # other ranks: the cache file is already there, this only finds it
        data = load_token_cache(self.cache_path)
        if data is None:  # corrupt cache: it was removed, so build it again
            self.cache_path = None
            self.prepare_data()
            data = load_token_cache(self.cache_path)
        self.vocab = data["vocab"].tolist()
        self.val_names, self.val_split_used = data["val_names"].tolist(), str(data["val_split"])
        if self.val_split == "movie" and self.val_split_used != "movie":
            import warnings

            warnings.warn("data.val_split=movie needs aclImdb/train/urls_pos.txt and urls_neg.txt naming the movie of "
                          "every training review, which this data source lacks: falling back to "
                          "data.val_split=random, whose validation reviews share movies with the training reviews")
        for split in ("train", "val", "test"):
            seqs = [truncate_ids(s, self.max_len, self.truncate)
                    for s in from_flat(data[f"{split}_ids"], data[f"{split}_offsets"])]
            self.datasets[split] = ReviewDataset(seqs, data[f"{split}_labels"])

    @property
    def num_tokens(self) -> int:
        """Size of the embedding table the model needs (may be < vocab_size on small data)."""
        return len(self.vocab)

    def _loader(self, split: str, batch_size: int, train: bool) -> DataLoader:
        ds = self.datasets[split]
        sampler = BucketSampler(ds.lengths, batch_size, self.order_seed) if train and self.bucket else None
        if sampler is not None:
            self._train_sampler, sampler.skip, self._skip_batches = sampler, self._skip_batches * batch_size, 0
        if not train:  # evaluation order does not matter: sort by length for the least padding
            sampler = np.argsort(ds.lengths, kind="stable").tolist() if self.bucket else None
        pad_to = self.max_len if self.fixed_length else None
        return DataLoader(
            ds,
            batch_size=batch_size,
            sampler=sampler,
            shuffle=train and sampler is None,
            collate_fn=functools.partial(collate, pad_to=pad_to, longest_first=True),
            num_workers=self.num_workers,
            # name the start method: inside joblib's loky workers the inherited default context cannot start
            # DataLoader workers ("'Process' object has no attribute 'env'")
            multiprocessing_context=(("fork" if sys.platform == "linux" else "spawn") if self.num_workers else None),
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
        )

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return to_device_keeping_lengths(batch, device)

    def write_splits(self, folder: Path) -> Path:
        """splits.json in the run folder: how validation was carved and which reviews it holds, for audit."""
        path = Path(folder) / "splits.json"
        path.write_text(json.dumps({
            "val_split": self.val_split_used, "val_size": self.val_size, "seed": self.seed, "limit": self.limit,
            "sizes": {k: len(v) for k, v in self.datasets.items()}, "val": self.val_names}, indent=1))
        return path

    def skip_batches(self, n: int) -> None:
        """Resume mid-epoch: the next pass over the training data leaves out its first n batches, so the run goes
        on with the same batches it would have seen (only with data.bucket=true, the seeded sampler)."""
        if self._train_sampler is not None:  # the loader already exists (Lightning made it to count steps)
            self._train_sampler.skip = n * self.batch_size
        else:
            self._skip_batches = n

    def train_dataloader(self):
        return self._loader("train", self.batch_size, train=True)

    def val_dataloader(self):
        return self._loader("val", self.eval_batch_size, train=False)

    def test_dataloader(self):
        return self._loader("test", self.eval_batch_size, train=False)

    def state_dict(self) -> dict:
        """Stored in every checkpoint: what predict needs to turn text into the same ids (plain types only)."""
        return {"vocab": list(self.vocab or []), "max_len": self.max_len, "truncate": self.truncate}
