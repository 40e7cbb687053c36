"""Data: tokenising, splits without leakage, the token cache, truncation and batching."""

from __future__ import annotations

import collections
import tarfile

import numpy as np
import pytest
import torch

import json
import warnings

from conftest import compose_config, movie_urls, write_imdb_archive
from stacked_rnn.tasks import imdb_corpus as imdb
from stacked_rnn.tasks.imdb import IMDBDataModule
from stacked_rnn.tasks.batches import BucketSampler, collate, truncate_ids
from stacked_rnn.tasks.imdb_corpus import split_indices, tokenise


def make_dm(archive, cache, **kw) -> IMDBDataModule:
    kw = dict(archive=str(archive), cache_dir=str(cache), val_size=20, vocab_size=100, max_len=32, batch_size=16) | kw
    dm = IMDBDataModule(**kw)
    dm.prepare_data()
    dm.setup()
    return dm


def test_tokenise_strips_breaks_lowercases_and_keeps_apostrophes():
    assert tokenise("I DIDN'T like it.<br /><br />Awful!") == ["i", "didn't", "like", "it", "awful", "!"]
    assert tokenise("Café crème — ok?") == ["café", "crème", "ok", "?"]
    assert tokenise("") == []


def test_split_is_stratified_seeded_and_disjoint():
    train_labels = np.array([1] * 600 + [0] * 400, dtype=np.int8)
    test_labels = np.array([1, 0] * 50, dtype=np.int8)
    splits = split_indices(train_labels, test_labels, val_size=100, limit=None, seed=3)
    assert len(splits["val"]) == 100 and len(splits["train"]) == 900
    assert train_labels[splits["val"]].mean() == pytest.approx(0.6)  # same class balance as the train set
    assert not set(splits["train"]) & set(splits["val"])
    assert np.array_equal(splits["test"], np.arange(100))
    again = split_indices(train_labels, test_labels, val_size=100, limit=None, seed=3)
    assert np.array_equal(again["val"], splits["val"])
    other = split_indices(train_labels, test_labels, val_size=100, limit=None, seed=4)
    assert not np.array_equal(other["val"], splits["val"])


def test_val_size_is_a_fraction_or_a_count_and_a_bad_one_is_named():
    labels = np.array([1, 0] * 500, dtype=np.int8)
    assert len(split_indices(labels, labels, val_size=0.1, limit=None, seed=0)["val"]) == 100
    assert len(split_indices(labels, labels, val_size=37, limit=None, seed=0)["val"]) == 37
    for bad in (0, 1.0, 1000, 2.5):
        with pytest.raises(imdb.DataError, match=rf"data.val_size={bad} is not allowed for 1000 training reviews: "
                                                 r"expected a fraction in \(0, 1\) or a count from 1 to 999"):
            split_indices(labels, labels, val_size=bad, limit=None, seed=0)


def test_movie_split_keeps_whole_movies_on_one_side_stratified_and_seeded():
    rng = np.random.default_rng(0)
    movies = np.repeat(np.arange(300), rng.integers(1, 30, size=300))  # IMDB: up to 30 reviews per movie
    labels = rng.integers(0, 2, size=len(movies)).astype(np.int8)
    splits = split_indices(labels, labels, val_size=0.1, limit=None, seed=1, movies=movies)
    val, train = splits["val"], splits["train"]
    assert not set(movies[val]) & set(movies[train])
    assert abs(len(val) - round(0.1 * len(movies))) <= 2  # whole movies fill the count (almost) exactly
    assert abs(labels[val].mean() - labels.mean()) < 0.02  # stratified as far as grouping allows
    again = split_indices(labels, labels, val_size=0.1, limit=None, seed=1, movies=movies)["val"]
    other = split_indices(labels, labels, val_size=0.1, limit=None, seed=2, movies=movies)["val"]
    assert np.array_equal(again, val) and not np.array_equal(other, val)


def test_tiny_archive_validation_shares_no_movie_and_is_written_to_splits_json(tiny_archive, tmp_path):
    dm = make_dm(tiny_archive, tmp_path)
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 100, "val": 20, "test": 120}
    assert dm.datasets["val"].labels.mean() == 0.5
    urls = movie_urls(60, 0)  # what write_imdb_archive put in train/urls_{pos,neg}.txt

    def movie(name):  # train/pos/12_8.txt -> the movie of review 12 of pos
        label, file = name.split("/")[1:]
        return urls[label][int(file.split("_")[0])]

    val_movies = {movie(n) for n in dm.val_names}
    every = {f"train/{label}/{i}_{8 if label == 'pos' else 2}.txt" for label in ("pos", "neg") for i in range(60)}
    train_movies = {movie(n) for n in every - set(dm.val_names)}
    assert len(dm.val_names) == 20 and not val_movies & train_movies
    written = json.loads(dm.write_splits(tmp_path).read_text())
    assert written["val_split"] == "movie" and sorted(written["val"]) == sorted(dm.val_names)
    assert written["sizes"] == {"train": 100, "val": 20, "test": 120}


def test_a_source_without_urls_files_falls_back_to_random_with_one_warning(tmp_path):
    archive = write_imdb_archive(tmp_path / "nourls.tar.gz", urls=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm = make_dm(archive, tmp_path / "cache")
    said = [str(w.message) for w in caught if "val_split" in str(w.message)]
    assert len(said) == 1 and "falling back to data.val_split=random" in said[0]
    assert len(dm.datasets["val"]) == 20
    assert json.loads(dm.write_splits(tmp_path).read_text())["val_split"] == "random"
    with warnings.catch_warnings(record=True) as caught:  # asking for random says nothing
        warnings.simplefilter("always")
        make_dm(archive, tmp_path / "cache", val_split="random")
    assert not [w for w in caught if "val_split" in str(w.message)]


def test_a_few_hundred_reviews_train_with_default_settings_and_a_limit(tiny_archive, tmp_path):
    from stacked_rnn import train

    cfg = compose_config([f"data.archive={tiny_archive}", f"data.cache_dir={tmp_path / 'cache'}",
                          f"output_dir={tmp_path / 'run'}", "data.limit=100", "trainer.max_epochs=1",
                          "trainer.accelerator=cpu", "trainer.enable_progress_bar=false"])
    results = train.run(cfg)
    assert results["status"] == "ok" and results["config"]["data"]["val_size"] == 0.1
    splits = json.loads((tmp_path / "run" / "splits.json").read_text())
    assert splits["val_split"] == "movie" and splits["sizes"] == {"train": 100, "val": 12, "test": 100}  # 0.1 of 120


def test_limit_gives_balanced_splits():
    labels = np.array([1] * 500 + [0] * 500, dtype=np.int8)
    splits = split_indices(labels, labels, val_size=200, limit=50, seed=0)
    for name, idx in splits.items():
        assert len(idx) == 50, name
        assert labels[idx].sum() == 25, name
    assert not set(splits["train"]) & set(splits["val"])


def test_datamodule_splits_vocab_and_no_leakage(tiny_archive, tmp_path):
    dm = make_dm(tiny_archive, tmp_path)
    sizes = {k: len(v) for k, v in dm.datasets.items()}
    assert sizes == {"train": 100, "val": 20, "test": 120}
    assert dm.vocab[:2] == ["<pad>", "<unk>"] and "br" not in dm.vocab
    assert "onlyintest" not in dm.vocab  # vocabulary comes from the training split only
    assert dm.datasets["val"].labels.mean() == 0.5
    train_texts = {tuple(s) for s in dm.datasets["train"].sequences}
    assert all(len(s) <= 32 for s in dm.datasets["train"].sequences)
    assert len(train_texts) > 90  # real, varied reviews were read


def test_vocab_size_caps_the_vocabulary(tiny_archive, tmp_path):
    dm = make_dm(tiny_archive, tmp_path, vocab_size=10)
    assert len(dm.vocab) == 10
    ids = np.concatenate(dm.datasets["train"].sequences)
    assert ids.max() == 9 and (ids == imdb.UNK_ID).any()


@pytest.mark.parametrize("workers", [1, 2])
def test_parallel_encoding_equals_encoding_each_text_with_the_train_vocabulary(workers):
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(300)]
    texts = [" ".join(rng.choice(words, size=rng.integers(0, 30))).encode() for _ in range(400)]
    texts[5] = b""  # an empty review is one <unk>
    texts[-1] += b" onlyintest"
    vocab, ids, offsets = imdb.encode_all(texts, n_train=300, vocab_size=50, workers=workers, progress=False)
    counts = collections.Counter(t for text in texts[:300] for t in tokenise(text.decode()))
    assert vocab == ["<pad>", "<unk>"] + sorted(counts, key=lambda w: (-counts[w], w))[:48]
    stoi = {w: i for i, w in enumerate(vocab)}
    assert len(offsets) == 401 and "onlyintest" not in vocab
    for i, text in enumerate(texts):
        assert ids[offsets[i] : offsets[i + 1]].tolist() == imdb.encode(text.decode(), stoi).tolist()


def test_truncate_head_keeps_the_end_and_tail_keeps_the_start():
    ids = np.arange(10)
    assert truncate_ids(ids, 4, "head").tolist() == [6, 7, 8, 9]
    assert truncate_ids(ids, 4, "tail").tolist() == [0, 1, 2, 3]
    assert truncate_ids(ids[:3], 4, "head").tolist() == [0, 1, 2]


def test_second_run_reads_the_token_cache(tiny_archive, tmp_path, monkeypatch):
    first = make_dm(tiny_archive, tmp_path)
    monkeypatch.setattr(imdb, "tokenise", lambda text: pytest.fail("warm run must not tokenise"))
    second = make_dm(tiny_archive, tmp_path)
    assert second.cache_path == first.cache_path
    assert second.vocab == first.vocab
    for split in ("train", "val", "test"):
        assert all(np.array_equal(a, b) for a, b in zip(first.datasets[split].sequences, second.datasets[split].sequences))
    # a setting that changes the ids gets its own cache entry
    monkeypatch.undo()
    assert make_dm(tiny_archive, tmp_path, vocab_size=50).cache_path != first.cache_path


def test_collate_pads_dynamically_and_keeps_true_lengths():
    batch = [(np.array([5, 6, 7], dtype=np.int32), 1), (np.array([8], dtype=np.int32), 0)]
    ids, lengths, labels = collate(batch)
    assert ids.shape == (2, 3) and ids.dtype == torch.int64
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert lengths.tolist() == [3, 1] and labels.tolist() == [1.0, 0.0]
    assert collate(batch, pad_to=8)[0].shape == (2, 8)


def test_bucket_sampler_is_a_seeded_permutation_of_similar_length_batches():
    lengths = np.random.default_rng(0).integers(1, 500, size=1000)
    sampler = BucketSampler(lengths, batch_size=20, seed=1)
    order = list(sampler)
    assert sorted(order) == list(range(1000))
    spread = np.mean([np.ptp(lengths[order[i : i + 20]]) for i in range(0, 1000, 20)])
    assert spread < 50  # random batches would spread over ~450
    assert list(BucketSampler(lengths, 20, seed=1)) == order
    sampler.set_epoch(1)
    assert list(sampler) != order


def test_bucket_sampler_keeps_the_short_batch_last_so_the_loader_cuts_between_groups():
    lengths = np.arange(30) // 4  # seven groups of 4 equal lengths and one of 2
    sampler = BucketSampler(lengths, batch_size=4, seed=0, pool_batches=100)  # one pool: batches are the groups
    for epoch in range(10):
        sampler.set_epoch(epoch)
        order = list(sampler)
        cuts = [lengths[order[i : i + 4]] for i in range(0, 30, 4)]  # what the DataLoader makes of the stream
        assert all(len(set(cut)) == 1 for cut in cuts), (epoch, cuts)
        assert len(cuts[-1]) == 2


def test_train_loader_batches_cover_the_training_set(tiny_archive, tmp_path):
    dm = make_dm(tiny_archive, tmp_path)
    seen = 0
    for ids, lengths, labels in dm.train_dataloader():
        assert ids.shape[0] == lengths.shape[0] == labels.shape[0]
        assert ids.shape[1] == lengths.max()
        assert (ids[torch.arange(len(ids)), lengths - 1] != 0).all()  # last real token is never padding
        seen += len(ids)
    assert seen == 100


def test_batches_come_longest_first_and_lengths_stay_on_the_cpu(tiny_archive, tmp_path):
    dm = make_dm(tiny_archive, tmp_path)
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        ids, lengths, labels = next(iter(loader))
        assert (lengths[:-1] >= lengths[1:]).all()  # packing needs no reordering on the GPU
        assert (ids[torch.arange(len(ids)), lengths - 1] != 0).all()  # rows were sorted together with their lengths
    ids_d, lengths_d, labels_d = dm.transfer_batch_to_device((ids, lengths, labels), torch.device("meta"), 0)
    assert ids_d.device.type == labels_d.device.type == "meta" and lengths_d.device.type == "cpu"


def test_invalid_utf8_and_empty_reviews_are_read_not_fatal(tmp_path):
    bad, empty = tarfile.TarInfo("aclImdb/train/pos/900_9.txt"), tarfile.TarInfo("aclImdb/train/neg/901_1.txt")
    raw = b"great \xff\xfe film \xc3("
    bad.size, empty.size = len(raw), 0
    archive = write_imdb_archive(tmp_path / "odd.tar.gz", extra_members=[(bad, raw), (empty, b"")])
    dm = make_dm(archive, tmp_path / "cache")
    assert len(dm.datasets["train"]) + len(dm.datasets["val"]) == 122  # both odd files are in
    sequences = dm.datasets["train"].sequences + dm.datasets["val"].sequences
    assert any(s.tolist() == [imdb.UNK_ID] for s in sequences)  # the empty review is one <unk>
    assert imdb.decode_review(raw) == "great \ufffd\ufffd film \ufffd("
    assert tokenise(imdb.decode_review(raw)) == ["great", "film"]


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _ids_out_of_range(path):
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["train_ids"][0] = 10**6
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize("corrupt", [_truncate, _ids_out_of_range])
def test_corrupt_token_cache_is_detected_and_rebuilt(tiny_archive, tmp_path, corrupt):
    first = make_dm(tiny_archive, tmp_path)
    corrupt(first.cache_path)
    with pytest.warns(UserWarning, match=r"token cache .* is corrupt \(.*\); rebuilding it"):
        second = make_dm(tiny_archive, tmp_path)
    for split in ("train", "val", "test"):
        pairs = zip(first.datasets[split].sequences, second.datasets[split].sequences)
        assert all(np.array_equal(a, b) for a, b in pairs)
    assert imdb.load_token_cache(second.cache_path) is not None  # the rebuilt file is sound
