"""IMDB as a task: the cached token ids of stacked_rnn.tasks.imdb_corpus cut to data.max_len, served as
length-bucketed, dynamically padded batches by the LightningDataModule.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from stacked_rnn.tasks.batches import (TRUNCATE_CHOICES, BucketSampler, DeviceBatches, DeviceTokens, ReviewDataset,
                                       TokenSequenceData, collate, truncate_ids)
from stacked_rnn.tasks.imdb_corpus import (IMDB_SHA256, IMDB_URL, VAL_SPLITS, DataError, default_cache_dir, from_flat,
                                           load_token_cache, prepare_token_cache, resolve_source)


class IMDBDataModule(TokenSequenceData):
    """IMDB reviews as token ids: official train minus a validation split (whole movies by default, so that
    validation never rewards memorising a training movie), and the official test set.

    Batches come from DataLoaders that collate on the host (lengths stay on the CPU), or with on_device=true from
    DeviceBatches: each split moved to the trainer's device once and the same batches, in the same order, cut there."""

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
        on_device: bool = False,
    ):
        super().__init__()
        if truncate not in TRUNCATE_CHOICES:
            raise DataError(f"data.truncate={truncate!r} is not one of {TRUNCATE_CHOICES}")
        if val_split not in VAL_SPLITS:
            raise DataError(f"data.val_split={val_split!r} is not one of {VAL_SPLITS}")
        if on_device not in (True, False):
            raise DataError(f"data.on_device={on_device!r} is not allowed: expected true or false")
        if on_device and num_workers:
            raise DataError(f"data.on_device=true cuts batches on the device, in the training process: it takes no "
                            f"worker processes, so data.num_workers={num_workers!r} must be 0")
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
        self.on_device = on_device
        self.device_tokens: dict[str, DeviceTokens] = {}  # on_device: each split's reviews, moved once
        self.cache_path: Path | None = None
        self.vocab: list[str] | None = None
        self.datasets: dict[str, ReviewDataset] = {}

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

    def _loader(self, split: str, batch_size: int, train: bool) -> DataLoader | DeviceBatches:
        ds = self.datasets[split]
        sampler = BucketSampler(ds.lengths, batch_size, self.order_seed) if train and self.bucket else None
        if sampler is not None:
            self._train_sampler, sampler.skip, self._skip_batches = sampler, self._skip_batches * batch_size, 0
        if not train:  # evaluation order does not matter: sort by length for the least padding
            sampler = np.argsort(ds.lengths, kind="stable").tolist() if self.bucket else None
        pad_to = self.max_len if self.fixed_length else None
        if self.on_device:  # the same batches, cut on the device: an index loader draws the same order
            indices = DataLoader(range(len(ds)), batch_size=batch_size, sampler=sampler,
                                 shuffle=train and sampler is None, collate_fn=np.asarray)
            return DeviceBatches(self._device_tokens(split), indices, pad_to)
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

    def _device_tokens(self, split: str) -> DeviceTokens:
        """The split's reviews on the trainer's device (the CPU without a trainer), moved there once per device."""
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:
            raise DataError("data.on_device=true serves one process's batches: with several devices (DDP) use "
                            "data.on_device=false, whose loaders Lightning splits across the ranks")
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        if split not in self.device_tokens or self.device_tokens[split].device != device:
            self.device_tokens[split] = DeviceTokens(self.datasets[split], device)
        return self.device_tokens[split]

    def write_splits(self, folder: Path) -> Path:
        """splits.json in the run folder: how validation was carved and which reviews it holds, for audit."""
        path = Path(folder) / "splits.json"
        path.write_text(json.dumps({
            "val_split": self.val_split_used, "val_size": self.val_size, "seed": self.seed, "limit": self.limit,
            "sizes": {k: len(v) for k, v in self.datasets.items()}, "val": self.val_names}, indent=1))
        return path

    def state_dict(self) -> dict:
        """Stored in every checkpoint: what predict needs to turn text into the same ids (plain types only)."""
        return {"vocab": list(self.vocab or []), "max_len": self.max_len, "truncate": self.truncate}
