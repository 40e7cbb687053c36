"""Character-level language modelling (task: lm): tiny Shakespeare, the text of IMDB's training reviews, or any
UTF-8 file, split contiguously by character.

- Splits: the first `train_fraction` of the characters train (tiny Shakespeare: nanoGPT's 90%, 1,003,854
  characters); the held-out rest is cut in two contiguous halves, validation first, then test (55,770 each).
- Vocabulary: the characters of the training part (sorted, as nanoGPT's), after <pad> (id 0, never used) and <unk>
  (id 1, for a held-out character training never saw).
- Training: random windows of `window` characters, each from a fresh state (nanoGPT's sampling). Windows are
  independent, so batches need no order, a run resumes and shards like any other task, and the training contexts
  are those of the nanoGPT measure; char-rnn's carried state (truncated BPTT) would tie every batch to the last.
- Evaluation: loader 0 is the whole stream cut into `eval_rows` contiguous rows, read in consecutive windows of
  `eval_window` characters; row b of window i continues row b of window i-1 and the model carries its state across
  them (bits per character of the stream, val/bpc: the classic measure). Loader 1 is `nano_windows` fixed random
  windows of `nano_block` characters from a fresh state: nanoGPT's mean loss in nats (val/window_nats).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from stacked_rnn.tasks.batches import to_device_keeping_lengths
from stacked_rnn.tasks.imdb_corpus import (IMDB_SHA256, IMDB_URL, PAD, UNK, UNK_ID, DataError, decode_review,
                                           default_cache_dir, download, resolve_source)

TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
CORPORA = ("tiny_shakespeare", "imdb", "file")
FIRST_CHAR_ID = UNK_ID + 1  # <pad> (0) and <unk> (1) as in every text task, then the characters


def read_corpus(corpus: str, path: str | None, archive: str | None, root: str | None, url: str | None,
                sha256: str | None, cache_dir: Path, progress: bool = True) -> str:
    """The corpus as one string. tiny_shakespeare: data.path (a local copy) or the download, checked by sha256;
    imdb: the official training reviews (train/pos then train/neg, file order), one per line, from data.archive,
    data.root or the IMDB download; file: data.path, any UTF-8 text."""
    if corpus == "file" or (corpus == "tiny_shakespeare" and path):
        if not path:
            raise DataError("data.corpus=file needs data.path=PATH/TO/TEXT.txt (any UTF-8 file)")
        file = Path(path).expanduser()
        if not file.is_file():
            raise DataError(f"data.path={path} does not exist: expected a UTF-8 text file")
        return decode_review(file.read_bytes())
    if corpus == "tiny_shakespeare":
        dest = download(url or TINY_SHAKESPEARE_URL, cache_dir / "downloads" / "tinyshakespeare.txt", sha256,
                        progress)
        return decode_review(dest.read_bytes())
    read, _ = resolve_source(root, archive, url or IMDB_URL, sha256 or IMDB_SHA256, cache_dir, progress)
    raw = read()
    names = sorted(n for n in raw if n.startswith(("aclImdb/train/pos/", "aclImdb/train/neg/")))
    return "\n".join(decode_review(raw[n]).replace("<br />", " ") for n in names)


def char_vocab(text: str) -> list[str]:
    """<pad>, <unk>, then every character of the training text, sorted."""
    return [PAD, UNK] + sorted(set(text))


def encode_chars(text: str, stoi: dict[str, int]) -> np.ndarray:
    """Character ids (N,) int64; a character outside the vocabulary becomes <unk>."""
    return np.fromiter((stoi.get(c, UNK_ID) for c in text), dtype=np.int64, count=len(text))


class RandomWindows(Dataset):
    """Item s: the window ids[s : s + T] and its next characters ids[s + 1 : s + T + 1]; a sampler draws s."""

    def __init__(self, ids: torch.Tensor, window: int):
        self.ids, self.window = ids, window

    def __len__(self):
        return len(self.ids) - self.window  # every start whose window and targets fit

    def __getitem__(self, start):
        chunk = self.ids[start : start + self.window + 1]
        return chunk[:-1], chunk[1:]


def collate_windows(batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids (B, T) int64, lengths (B,) all T on the CPU, targets (B, T) int64: the model's batch layout."""
    ids = torch.stack([x for x, _ in batch])
    return ids, torch.full((len(batch),), ids.shape[1], dtype=torch.int64), torch.stack([y for _, y in batch])


def stream_batches(ids: torch.Tensor, rows: int, window: int) -> list[tuple]:
    """The stream as consecutive batches: ids[:-1] and its targets ids[1:] cut into `rows` contiguous rows (the last
    len % rows characters dropped), then into windows of `window` steps (the last one shorter); batch i of row b
    continues batch i-1 of row b."""
    n = (len(ids) - 1) // rows * rows
    x, y = ids[:n].view(rows, -1), ids[1 : n + 1].view(rows, -1)  # (R, N/R)
    return [(x[:, s : s + window], torch.full((rows,), x[:, s : s + window].shape[1], dtype=torch.int64),
             y[:, s : s + window]) for s in range(0, x.shape[1], window)]


def fixed_windows(ids: torch.Tensor, count: int, block: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`count` windows of `block` characters at seeded random starts (nanoGPT's estimate_loss, but fixed: every
    evaluation of every run reads the same windows)."""
    starts = torch.randint(0, len(ids) - block, (count,), generator=torch.Generator().manual_seed(seed))
    return [(ids[s : s + block], ids[s + 1 : s + block + 1]) for s in starts.tolist()]


class TextLMDataModule(L.LightningDataModule):
    """A character corpus split contiguously into train, validation and test (see the module docstring).
    input_dim, task, metric, metric_mode and chance are not settings: they describe the task to the model (the next
    character at every step), the checkpoint callback and the report (val/bpc, lower is better; chance: log2 of
    the vocabulary, the bits of a uniform guess)."""

    def __init__(self, corpus: str = "tiny_shakespeare", path: str | None = None, archive: str | None = None,
                 root: str | None = None, url: str | None = None, sha256: str | None = TINY_SHAKESPEARE_SHA256,
                 cache_dir: str | None = None, train_fraction: float = 0.9, limit: int | None = None,
                 window: int = 128, batch_size: int = 32, windows_per_epoch: int | None = None,
                 eval_rows: int = 16, eval_window: int = 512, nano_windows: int = 1000, nano_block: int = 64,
                 eval_batch_size: int = 250, seed: int = 0, order_seed: int | None = None, progress: bool = True,
                 input_dim: int = 0, task: str = "lm", metric: str = "bpc", metric_mode: str = "min",
                 chance: float | None = None):
        super().__init__()

        def whole(value, low):
            return isinstance(value, int) and not isinstance(value, bool) and value >= low

        checks = [
            ("data.corpus", corpus, corpus in CORPORA, f"one of {CORPORA}"),
            ("data.train_fraction", train_fraction, isinstance(train_fraction, float) and 0 < train_fraction < 1,
             "a fraction in (0, 1): the first part trains, the rest is halved into validation and test"),
            ("data.limit", limit, limit is None or whole(limit, 1000), "null or a number of characters >= 1000"),
            ("data.window", window, whole(window, 1), "an integer >= 1 (characters per training window)"),
            ("data.batch_size", batch_size, whole(batch_size, 1), "an integer >= 1"),
            ("data.windows_per_epoch", windows_per_epoch, windows_per_epoch is None or whole(windows_per_epoch, 1),
             "null (one pass over the training characters) or an integer >= 1"),
            ("data.eval_rows", eval_rows, whole(eval_rows, 1), "an integer >= 1"),
            ("data.eval_window", eval_window, whole(eval_window, 1), "an integer >= 1"),
            ("data.nano_windows", nano_windows, whole(nano_windows, 1), "an integer >= 1"),
            ("data.nano_block", nano_block, whole(nano_block, 1), "an integer >= 1"),
            ("data.eval_batch_size", eval_batch_size, whole(eval_batch_size, 1), "an integer >= 1"),
            ("data.input_dim", input_dim, input_dim == 0, "0 (character ids)"),
            ("data.task", task, task == "lm", "lm"),
            ("data.metric", metric, metric in ("bpc", "window_nats"), "bpc or window_nats"),
            ("data.metric_mode", metric_mode, metric_mode == "min", "min"),
        ]
        for key, value, ok, allowed in checks:
            if not ok:
                raise ValueError(f"{key}={value!r} is not allowed: expected {allowed}")
        self.source = (corpus, path, archive, root, url, sha256)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.train_fraction, self.limit, self.progress = train_fraction, limit, progress
        self.window, self.batch_size, self.windows_per_epoch = window, batch_size, windows_per_epoch
        self.eval_rows, self.eval_window, self.eval_batch_size = eval_rows, eval_window, eval_batch_size
        self.nano_windows, self.nano_block = nano_windows, nano_block
        self.seed = seed
        self.order_seed = seed if order_seed is None else order_seed
        self.vocab: list[str] = []
        self.splits: dict[str, torch.Tensor] = {}  # each split's character ids (N,)
        self._text: str | None = None  # the corpus as prepare_data read it, until setup splits it
        self.datasets: dict[str, RandomWindows] = {}

    @property
    def num_tokens(self) -> int:
        return len(self.vocab)

    def prepare_data(self) -> None:
        """Download (once, on rank 0) and read the corpus; setup() in the same process uses the text read here
        instead of reading it again (IMDB's corpus is a whole archive)."""
        self._text = self.text()

    def text(self) -> str:
        corpus, path, archive, root, url, sha256 = self.source
        if corpus == "imdb" and sha256 == TINY_SHAKESPEARE_SHA256:
            sha256 = None  # the group's default checksum is tiny Shakespeare's; IMDB's own is used then
        text = read_corpus(corpus, path, archive, root, url, sha256, self.cache_dir, self.progress)
        return text[: self.limit] if self.limit else text

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        text = self._text if self._text is not None else self.text()  # DDP's other ranks read it here
        self._text = None  # the splits hold what is needed
        cut = int(len(text) * self.train_fraction)
        held_out = len(text) - cut
        parts = {"train": text[:cut], "val": text[cut : cut + held_out // 2], "test": text[cut + held_out // 2 :]}
        shortest = max(self.window, self.nano_block) + 2
        for split, part in parts.items():
            if len(part) < shortest:
                raise DataError(f"the {split} split holds {len(part)} characters, fewer than a window "
                                f"(data.window={self.window}, data.nano_block={self.nano_block}) needs: give a "
                                "longer text, or a larger data.limit or data.train_fraction")
        self.vocab = char_vocab(parts["train"])
        stoi = {c: i for i, c in enumerate(self.vocab)}
        self.splits = {split: torch.from_numpy(encode_chars(part, stoi)) for split, part in parts.items()}
        self.datasets = {"train": RandomWindows(self.splits["train"], self.window)}

    @property
    def chance(self) -> float:
        """Bits per character of a uniform guess over the characters the model can name."""
        return float(np.log2(max(len(self.vocab) - FIRST_CHAR_ID, 1)))

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return to_device_keeping_lengths(batch, device)

    @property
    def samples_per_epoch(self) -> int:
        """Training windows per epoch: data.windows_per_epoch, else one pass over the training characters."""
        return self.windows_per_epoch or max(len(self.splits["train"]) // self.window, self.batch_size)

    def train_dataloader(self):
        sampler = RandomSampler(self.datasets["train"], replacement=True, num_samples=self.samples_per_epoch,
                                generator=torch.Generator().manual_seed(self.order_seed))
        return DataLoader(self.datasets["train"], batch_size=self.batch_size, sampler=sampler,
                          collate_fn=collate_windows, drop_last=True)

    def eval_loaders(self, split: str) -> list:
        """[the stream in consecutive windows, nanoGPT's fixed random windows] of one held-out split."""
        ids = self.splits[split]
        stream = stream_batches(ids, min(self.eval_rows, max(1, (len(ids) - 1) // 2)), self.eval_window)
        windows = fixed_windows(ids, self.nano_windows, self.nano_block, self.seed + (split == "test"))
        return [DataLoader(stream, batch_size=None),
                DataLoader(windows, batch_size=self.eval_batch_size, collate_fn=collate_windows)]

    def val_dataloader(self):
        return self.eval_loaders("val")

    def test_dataloader(self):
        return self.eval_loaders("test")

    def state_dict(self) -> dict:
        """Stored in every checkpoint: what predict, generate and the diagnostics need to turn text into the same
        ids (tokenizer=chars) and back."""
        return {"vocab": list(self.vocab), "max_len": self.window, "truncate": "head", "tokenizer": "chars"}

    def split_sizes(self) -> dict[str, int]:
        return {split: len(ids) for split, ids in self.splits.items()}
