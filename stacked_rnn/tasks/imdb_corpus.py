"""IMDB reviews as token ids on disk: fetch the archive (or read a folder), carve the validation split,
tokenise, and cache the ids.

Data flows one way: source (download | archive | folder) -> raw reviews (read straight from the
archive) -> train/val/test split -> token ids (vocabulary from the training split only), tokenised in
parallel and cached on disk as one .npz. stacked_rnn.tasks.imdb serves them as batches.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import multiprocessing
import os
import re
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from stacked_rnn.tasks.batches import PAD_ID

IMDB_URL = "http://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
IMDB_SHA256 = "c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe"
PAD, UNK = "<pad>", "<unk>"
UNK_ID = PAD_ID + 1  # the vocabulary opens with <pad> (id 0, what collate pads with), then <unk>
SPLIT_DIRS = ("train/pos", "train/neg", "test/pos", "test/neg")
URL_FILES = ("train/urls_pos.txt", "train/urls_neg.txt")  # line i: the IMDb page of the movie of review <i>_*.txt
VAL_SPLITS = ("movie", "random")
TOKENIZER_VERSION = 2  # bump when tokenise() changes, so cached ids are rebuilt
CACHE_VERSION = 2  # bump when the cached arrays change (2: validation names and the split actually used)

_TOKEN_RE = re.compile(r"[^\W_]+(?:'[^\W_]+)?|[!?]")


class DataError(RuntimeError):
    """A problem with the data source that the user can fix (path, network, archive, layout)."""


def tokenise(text: str) -> list[str]:
    """Lowercase words (keeping inner apostrophes) plus ! and ?, with IMDB's <br /> tags removed."""
    return _TOKEN_RE.findall(text.replace("<br />", " ").lower())


def decode_review(raw: bytes) -> str:
    """A review's text; invalid UTF-8 bytes become U+FFFD instead of failing."""
    return raw.decode("utf-8", errors="replace")


def encode(text: str, stoi: dict[str, int]) -> np.ndarray:
    """Token ids of one text; unknown words map to <unk>, an empty text to a single <unk>."""
    ids = [stoi.get(token, UNK_ID) for token in tokenise(text)]
    return np.asarray(ids or [UNK_ID], dtype=np.int32)


# ----------------------------------------------------------------------------------------------
# Sources: download, archive, folder


def default_cache_dir() -> Path:
    """$STACKED_RNN_CACHE, else $XDG_CACHE_HOME/stacked_rnn, else ~/.cache/stacked_rnn."""
    if os.environ.get("STACKED_RNN_CACHE"):
        return Path(os.environ["STACKED_RNN_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "stacked_rnn"


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: Path, sha256: str | None, progress: bool = True) -> Path:
    """Download url to dest with a progress bar, resuming a partial file when the server allows.

    Bytes go to dest + '.part' and are renamed into place only after the checksum matches, so a
    half or bad file never sits where a good one is expected.
    """
    from tqdm.auto import tqdm

    if dest.exists() and (sha256 is None or sha256_of(dest) == sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=30)
    except urllib.error.HTTPError as err:
        if err.code == 416:  # asked past the end: the partial file is stale, start over
            part.unlink()
            return download(url, dest, sha256, progress)
        raise DataError(f"download of {url} failed: HTTP {err.code} {err.reason}. {HOW_TO_PROVIDE}") from err
    except (urllib.error.URLError, OSError) as err:
        raise DataError(f"cannot download {url}: {getattr(err, 'reason', err)}. {HOW_TO_PROVIDE}") from err
    with response:
        resumed = have > 0 and response.status == 206
        if not resumed:
            have = 0
        total = response.length + have if response.length is not None else None
        with open(part, "ab" if resumed else "wb") as f, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, desc=f"download {dest.name}", disable=not progress
        ) as bar:
            got = have
            try:
                while block := response.read(1 << 20):
                    f.write(block)
                    got += len(block)
                    bar.update(len(block))
            except (OSError, http.client.HTTPException) as err:
                raise DataError(f"download of {url} broke off ({err}); run again to resume") from err
    if total is not None and got < total:  # the server closed early: read() just returns b"" then
        raise DataError(f"download of {url} broke off after {got} of {total} bytes; run again to resume")
    if sha256 is not None and (actual := sha256_of(part)) != sha256:
        part.unlink()
        raise DataError(
            f"checksum mismatch for {url}: expected sha256 {sha256}, got {actual}; the bad file was deleted. "
            f"Run again to re-download, or set data.sha256 if you serve a different archive."
        )
    os.replace(part, dest)
    return dest


def _is_review(name: str) -> bool:
    """Only aclImdb/{train,test}/{pos,neg}/*.txt are read (not unsup/ nor the .feat files)."""
    parts = name.split("/")
    return len(parts) == 4 and parts[0] == "aclImdb" and "/".join(parts[1:3]) in SPLIT_DIRS and name.endswith(".txt")


def _is_wanted(name: str) -> bool:
    """The labelled reviews and the training set's urls files (which movie each review is about)."""
    return _is_review(name) or name.removeprefix("aclImdb/") in URL_FILES


def read_archive(archive: Path) -> dict[str, bytes]:
    """The labelled reviews of an aclImdb .tar.gz, read straight from the stream: {member name: raw bytes},
    with aclImdb/train/urls_{pos,neg}.txt when the archive has them.

    Nothing is extracted, so no member can land outside the cache; links, folders and files outside
    aclImdb/{train,test}/{pos,neg}/ are skipped.
    """
    try:
        with tarfile.open(archive, "r:*") as tar:
            reviews = {m.name: tar.extractfile(m).read() for m in tar if m.isfile() and _is_wanted(m.name)}
    except (tarfile.ReadError, EOFError, zlib.error, OSError) as err:
        if isinstance(err, FileNotFoundError) and not archive.exists():
            raise DataError(f"archive not found: {archive}. {HOW_TO_PROVIDE}") from err
        reason = " ".join(str(err).split())  # tarfile's "could not be opened" spans lines
        raise DataError(f"cannot read archive {archive}: it is corrupt or truncated ({reason})") from err
    check_layout({name.rsplit("/", 1)[0].removeprefix("aclImdb/") for name in reviews if _is_review(name)},
                 what=f"archive {archive}")
    return reviews


def read_folder(folder: Path) -> dict[str, bytes]:
    """The labelled reviews (and urls files) of an extracted aclImdb/ folder, named as in the archive."""
    reviews = {f"aclImdb/{d}/{f.name}": f.read_bytes() for d in SPLIT_DIRS for f in (folder / d).glob("*.txt")}
    return reviews | {f"aclImdb/{u}": (folder / u).read_bytes() for u in URL_FILES if (folder / u).is_file()}


def check_layout(present: set[str], what: str) -> None:
    """Every one of train/pos, train/neg, test/pos, test/neg must be among the folders holding reviews."""
    missing = [d for d in SPLIT_DIRS if d not in present]
    if missing:
        raise DataError(
            f"{what} does not have the aclImdb layout: missing or empty {', '.join('aclImdb/' + m for m in missing)}. "
            "Expected aclImdb/{train,test}/{pos,neg}/*.txt as in the official archive."
        )


HOW_TO_PROVIDE = (
    "Provide IMDB yourself with data.archive=PATH/TO/aclImdb_v1.tar.gz (any .tar.gz in the aclImdb/ layout) "
    "or data.root=DIR (a folder holding an extracted aclImdb/)."
)


def resolve_source(root, archive, url, sha256, cache_dir: Path, progress: bool = True):
    """Where the reviews come from. Returns (read, source_id): read() returns {name: bytes} of the labelled
    reviews, downloading only when called (a warm token cache never calls it); source_id identifies the
    contents for the cache key."""
    if root is not None:
        folder = Path(root).expanduser().resolve()
        folder = folder / "aclImdb" if (folder / "aclImdb").is_dir() else folder
        if not folder.is_dir():
            raise DataError(f"data.root={root} is not a folder. {HOW_TO_PROVIDE}")
        check_layout({d for d in SPLIT_DIRS if any((folder / d).glob("*.txt"))}, what=f"data.root={root}")
        stamp = [(folder / d).stat().st_mtime_ns for d in SPLIT_DIRS]
        return (lambda: read_folder(folder)), f"root:{folder}:{stamp}"
    if archive is not None:
        path = Path(archive).expanduser().resolve()
        if not path.is_file():
            raise DataError(f"data.archive={archive} does not exist. {HOW_TO_PROVIDE}")
        stat = path.stat()
        return (lambda: read_archive(path)), f"archive:{path}:{stat.st_size}:{stat.st_mtime_ns}"
    dest = cache_dir / "downloads" / Path(url).name
    return (lambda: read_archive(download(url, dest, sha256, progress))), f"url:{url}:{sha256}"


# ----------------------------------------------------------------------------------------------
# The split: validation carved from the official train set


def list_reviews(names) -> dict[str, tuple[list[str], np.ndarray]]:
    """Names and labels (1 = positive) of the official train and test sets, in a fixed (sorted) order."""
    by_folder = {d: [] for d in SPLIT_DIRS}
    for name in filter(_is_review, names):
        by_folder[name.rsplit("/", 1)[0].removeprefix("aclImdb/")].append(name)
    out = {}
    for split in ("train", "test"):
        pos, neg = sorted(by_folder[f"{split}/pos"]), sorted(by_folder[f"{split}/neg"])
        out[split] = (pos + neg, np.asarray([1] * len(pos) + [0] * len(neg), dtype=np.int8))
    return out


def balanced_subset(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of at most n items, split evenly between the two classes (sorted, seeded)."""
    picks = [rng.permutation(np.flatnonzero(labels == c))[: n // 2 + (c == 1) * (n % 2)] for c in (0, 1)]
    return np.sort(np.concatenate(picks))


def val_count(val_size: int | float, n_train: int) -> int:
    """data.val_size as a number of reviews: a fraction in (0, 1) of the official train set, or a count >= 1."""
    count = round(val_size * n_train) if isinstance(val_size, float) and 0 < val_size < 1 else val_size
    if not (isinstance(count, int) and 0 < count < n_train):
        raise DataError(f"data.val_size={val_size!r} is not allowed for {n_train} training reviews: expected a "
                        f"fraction in (0, 1) or a count from 1 to {n_train - 1}")
    return count


def movie_of_each_review(raw: dict[str, bytes], names: list[str]) -> np.ndarray | None:
    """The movie (IMDb title URL) of each training review, from train/urls_{pos,neg}.txt, where line i is the
    movie of review <i>_<rating>.txt; None when the source lacks the urls files or they do not cover every review."""
    urls = {}
    for label in ("pos", "neg"):
        data = raw.get(f"aclImdb/train/urls_{label}.txt")
        if data is None:
            return None
        urls[label] = decode_review(data).split()
    movies = []
    for name in names:  # aclImdb/train/pos/1234_8.txt
        _, _, label, file = name.split("/")
        review_id = int(file.split("_", 1)[0]) if file.split("_", 1)[0].isdigit() else -1
        if not 0 <= review_id < len(urls[label]):
            return None
        movies.append(urls[label][review_id].removesuffix("/usercomments"))
    return np.asarray(movies)


def class_counts(labels: np.ndarray, count: int) -> dict[int, int]:
    """How many of `count` reviews each class gets to keep the labels' balance (they add up to count)."""
    negatives = round(count * float(np.mean(labels == 0)))
    return {0: negatives, 1: count - negatives}


def movie_val_split(labels: np.ndarray, movies: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of about `count` reviews whose movies have no review outside them, stratified by label as far
    as whole movies allow: movies are taken in a seeded random order, each one only if it keeps both classes
    within their share of `count`."""
    targets = class_counts(labels, count)
    names, movie_index = np.unique(movies, return_inverse=True)
    members = [[] for _ in names]
    for i, m in enumerate(movie_index):
        members[m].append(i)
    taken, val = {0: 0, 1: 0}, []
    for m in rng.permutation(len(names)):
        need = {c: int(np.sum(labels[members[m]] == c)) for c in (0, 1)}
        if all(taken[c] + need[c] <= targets[c] for c in (0, 1)):
            val += members[m]
            taken = {c: taken[c] + need[c] for c in (0, 1)}
            if taken == targets:
                break
    return np.sort(np.asarray(val, dtype=np.int64))


def split_indices(train_labels, test_labels, val_size: int | float, limit: int | None, seed: int,
                  movies: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Seeded validation split carved from the official train set: whole movies when `movies` is given (no
    movie has reviews on both sides), else stratified random reviews; then at most `limit` reviews per split,
    balanced. The test set is always the official test set."""
    count = val_count(val_size, len(train_labels))
    rng = np.random.default_rng(seed)
    if movies is not None:
        val = movie_val_split(train_labels, movies, count, rng)
    else:
        targets = class_counts(train_labels, count)
        val = np.sort(np.concatenate([rng.permutation(np.flatnonzero(train_labels == c))[: targets[c]] for c in (0, 1)]))
    train = np.setdiff1d(np.arange(len(train_labels)), val)
    test = np.arange(len(test_labels))
    splits = {"train": train, "val": val, "test": test}
    if limit is not None:
        labels = {"train": train_labels, "val": train_labels, "test": test_labels}
        splits = {k: idx[balanced_subset(labels[k][idx], limit, rng)] for k, idx in splits.items()}
    return splits


# ----------------------------------------------------------------------------------------------
# Token ids, the vocabulary and the token cache


def tokenise_chunk(texts: list[bytes]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Tokenise raw reviews into ids of a vocabulary local to this chunk (a worker cannot know the global
    one yet): (words, flat ids, offsets). An empty review becomes the single token <unk>."""
    local: dict[str, int] = {}
    docs = [[local.setdefault(t, len(local)) for t in tokenise(decode_review(raw)) or [UNK]] for raw in texts]
    flat, offsets = to_flat([np.asarray(d, dtype=np.int32) for d in docs])
    return list(local), flat, offsets


def tokenise_all(texts: list[bytes], workers: int | None = None, progress: bool = True) -> list[tuple]:
    """tokenise_chunk over contiguous chunks of texts, in parallel on the available cores; results in order."""
    if workers is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        workers = max(1, min(cores, 8, len(texts) // 500))  # small inputs: a pool costs more than it saves
    size = max(1, -(-len(texts) // (4 * workers)))
    chunks = [texts[i : i + size] for i in range(0, len(texts), size)]
    from tqdm.auto import tqdm

    bar = dict(total=len(chunks), desc=f"tokenise {len(texts):,} reviews", unit="chunk", disable=not progress)
    if workers == 1:
        return list(tqdm(map(tokenise_chunk, chunks), **bar))
    # fork where it exists: no re-import, and it works inside joblib's loky workers (sweeps), as for the DataLoader
    context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        return list(tqdm(pool.map(tokenise_chunk, chunks), **bar))


def encode_all(texts: list[bytes], n_train: int, vocab_size: int, workers: int | None = None,
               progress: bool = True) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Token ids of every text as (vocabulary, flat ids, offsets). The vocabulary counts the first n_train
    texts only (the training split: nothing leaks from val/test)."""
    chunks = tokenise_all(texts, workers, progress)
    counts, first = Counter(), 0
    for words, flat, offsets in chunks:
        n_docs = len(offsets) - 1
        train_tokens = flat[: offsets[min(n_docs, max(0, n_train - first))]]  # a chunk's training texts come first
        for word, count in zip(words, np.bincount(train_tokens, minlength=len(words)).tolist()):
            if count:
                counts[word] += count
        first += n_docs
    vocab = build_vocab(counts, vocab_size)
    stoi = {w: i for i, w in enumerate(vocab)}
    ids = np.concatenate([np.asarray([stoi.get(w, UNK_ID) for w in words], dtype=np.int32)[flat]
                          for words, flat, _ in chunks])  # chunk-local ids -> global ids
    offsets = np.concatenate([[0], np.cumsum(np.concatenate([np.diff(o) for _, _, o in chunks]))])
    return vocab, ids, offsets


def build_vocab(counts: Counter, vocab_size: int) -> list[str]:
    """<pad>, <unk>, then the most frequent tokens (ties alphabetically, so the order of reading never matters)."""
    ranked = sorted((w for w in counts if w not in (PAD, UNK)), key=lambda w: (-counts[w], w))
    return [PAD, UNK] + ranked[: vocab_size - 2]


def to_flat(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Ragged int arrays -> (flat ids, offsets) so they store and load without pickle."""
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    np.cumsum([len(a) for a in arrays], out=offsets[1:])
    return (np.concatenate(arrays) if arrays else np.zeros(0, np.int32)).astype(np.int32), offsets


def from_flat(ids: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    return [ids[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


def prepare_token_cache(read, source_id: str, cache_dir: Path, vocab_size: int, val_size: int | float,
                        limit: int | None, seed: int, progress: bool = True, val_split: str = "movie") -> Path:
    """Tokenise the reviews once and store ids, labels, vocabulary and the validation reviews' names as one
    .npz in the cache.

    The file name hashes everything that changes the ids, so a changed setting makes a new file
    and an unchanged one is read back in well under a second.
    """
    key = dict(source=source_id, vocab_size=vocab_size, val_size=val_size, limit=limit, seed=seed,
               val_split=val_split, tokenizer=TOKENIZER_VERSION, cache=CACHE_VERSION)
    path = cache_dir / "tokens" / (hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20] + ".npz")
    if path.exists():
        return path
    raw = read()  # {name: bytes}
    reviews = list_reviews(raw)
    movies = movie_of_each_review(raw, reviews["train"][0]) if val_split == "movie" else None
    splits = split_indices(reviews["train"][1], reviews["test"][1], val_size, limit, seed, movies)
    source = {split: reviews["test" if split == "test" else "train"] for split in splits}  # (names, labels)
    val_names = [source["val"][0][i].removeprefix("aclImdb/") for i in splits["val"]]  # e.g. train/pos/1234_8.txt
    texts = [raw[source[split][0][i]] for split, indices in splits.items() for i in indices]  # train, val, test
    del raw
    vocab, ids, offsets = encode_all(texts, len(splits["train"]), vocab_size, progress=progress)
    arrays = {"vocab": np.asarray(vocab), "key": np.asarray(json.dumps(key, sort_keys=True)),
              "val_names": np.asarray(val_names, dtype=str), "val_split": np.asarray("movie" if movies is not None
                                                                                      else "random")}
    first = 0
    for split, indices in splits.items():
        last = first + len(indices)
        arrays[f"{split}_ids"] = ids[offsets[first] : offsets[last]]
        arrays[f"{split}_offsets"] = offsets[first : last + 1] - offsets[first]
        arrays[f"{split}_labels"] = source[split][1][indices]
        first = last
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
        np.savez(tmp, **arrays)
    os.replace(tmp.name, path)
    return path


def load_token_cache(path: Path) -> dict | None:
    """The cached arrays, or None (and the file removed) when it is unreadable or inconsistent."""
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:  # our handle: closed if np.load fails
            data = {k: z[k] for k in z.files}
        missing = {"vocab", "val_names", "val_split"} - data.keys()
        if missing:
            raise KeyError(f"no {', '.join(sorted(missing))}")
        for split in ("train", "val", "test"):
            offsets = data[f"{split}_offsets"]
            if offsets[-1] != len(data[f"{split}_ids"]) or len(offsets) != len(data[f"{split}_labels"]) + 1:
                raise ValueError(f"{split} arrays disagree")
            if len(data[f"{split}_ids"]) and (data[f"{split}_ids"].max() >= len(data["vocab"]) or data[f"{split}_ids"].min() < 0):
                raise ValueError(f"{split} ids out of vocabulary range")
        return data
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        import warnings

        warnings.warn(f"token cache {path} is corrupt ({err}); rebuilding it")
        path.unlink(missing_ok=True)
        return None


