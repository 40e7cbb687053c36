"""Shared fixtures: tiny aclImdb-layout archives with a learnable sentiment signal, and config composition."""

from __future__ import annotations

import io
import os
import random
import tarfile
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_module

POSITIVE = ["great", "wonderful", "loved", "superb", "brilliant"]
NEGATIVE = ["awful", "boring", "hated", "terrible", "dull"]
FILLER = [f"word{i}" for i in range(40)]


def make_review(rng: random.Random, positive: bool) -> str:
    """Filler words with two or three sentiment words mixed in, and IMDB's <br /> tags."""
    words = rng.choices(FILLER, k=rng.randint(4, 24)) + rng.choices(POSITIVE if positive else NEGATIVE, k=rng.randint(2, 3))
    rng.shuffle(words)
    return " ".join(words[:5]) + " <br /><br /> " + " ".join(words[5:]) + "."


def movie_urls(per_class: int, seed: int) -> dict[str, list[str]]:
    """urls_{pos,neg}.txt lines as in aclImdb/train: line i is the IMDb page of the movie of review i. Movies hold
    1 to 5 reviews of either label, like IMDB's up-to-30 reviews per movie."""
    reviews = [(label, i) for label in ("pos", "neg") for i in range(per_class)]
    random.Random(seed + 1).shuffle(reviews)
    urls, movie, start = {"pos": [""] * per_class, "neg": [""] * per_class}, 0, 0
    while start < len(reviews):
        size = 1 + movie % 5
        for label, i in reviews[start : start + size]:
            urls[label][i] = f"http://www.imdb.com/title/tt{movie:07d}/usercomments"
        movie, start = movie + 1, start + size
    return urls


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_imdb_archive(path: Path, per_class: int = 60, seed: int = 0, extra_members: list | None = None,
                       urls: bool = True) -> Path:
    """A .tar.gz in the official aclImdb/ layout: {train,test}/{pos,neg}/<id>_<rating>.txt, and (urls=True)
    train/urls_{pos,neg}.txt naming each training review's movie."""
    rng = random.Random(seed)
    with tarfile.open(path, "w:gz") as tar:
        for split in ("train", "test"):
            for sentiment in ("pos", "neg"):
                for i in range(per_class):
                    text = make_review(rng, sentiment == "pos")
                    if split == "test" and sentiment == "pos" and i == 0:
                        text += " onlyintest"  # a word the vocabulary must never see
                    add_member(tar, f"aclImdb/{split}/{sentiment}/{i}_{8 if sentiment == 'pos' else 2}.txt", text.encode())
        if urls:
            for label, lines in movie_urls(per_class, seed).items():
                add_member(tar, f"aclImdb/train/urls_{label}.txt", ("\n".join(lines) + "\n").encode())
        for info, data in extra_members or []:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


@pytest.fixture(scope="session")
def tiny_archive(tmp_path_factory) -> Path:
    return write_imdb_archive(tmp_path_factory.mktemp("imdb") / "aclImdb_tiny.tar.gz")


def tiny_overrides(archive: Path, cache: Path, out: Path, *extra: str, cli: bool = False) -> list[str]:
    """Overrides for a seconds-long run on the tiny archive, writing into `out` (through Hydra's
    run folder on the command line; `output_dir` when composing without Hydra's runtime)."""
    return [
        f"data.archive={archive}", f"data.cache_dir={cache}", f"{'hydra.run.dir' if cli else 'output_dir'}={out}",
        "data.val_size=20", "data.batch_size=8", "data.vocab_size=100", "data.max_len=32",
        "model.units=16", "model.embed_dim=16", "model.embed_dropout=0.0", "trainer.max_epochs=2",
        "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        "trainer.log_every_n_steps=1", *extra,
    ]


def compose_config(overrides: list[str]):
    with initialize_config_module("stacked_rnn.conf", version_base="1.3"):
        return compose("train", overrides=overrides)


class SendSignal(L.Callback):
    """The training process signals itself at a chosen point, as a user's Ctrl-C (2), a scheduler's SIGTERM (15)
    or a kill -9 (9) would. Added with +callbacks.signal._target_=conftest.SendSignal (tests/ on PYTHONPATH)."""

    def __init__(self, signum: int, at_step: int | None = None, at_epoch_end: int | None = None, times: int = 1):
        self.signum, self.at_step, self.at_epoch_end, self.times = signum, at_step, at_epoch_end, times

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.at_step:
            for _ in range(self.times):  # times=2: a second Ctrl-C before the first one took effect
                os.kill(os.getpid(), self.signum)

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.at_epoch_end:
            os.kill(os.getpid(), self.signum)


class SaveStart(L.Callback):
    """Saves the model's weights as training starts (on_fit_start), before any step: the run's initial weights.
    Added with +callbacks.start._target_=conftest.SaveStart +callbacks.start.path=FILE."""

    def __init__(self, path: str):
        self.path = path

    def on_fit_start(self, trainer, pl_module):
        torch.save({k: v.detach().clone() for k, v in pl_module.state_dict().items()}, self.path)


def signal_overrides(signum: int, **at) -> list[str]:
    return ["+callbacks.signal._target_=conftest.SendSignal", f"+callbacks.signal.signum={signum}",
            *(f"+callbacks.signal.{k}={v}" for k, v in at.items())]


class CodePayload:
    """Unpickling this creates `marker`: a checkpoint carrying it must never be able to run code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))
