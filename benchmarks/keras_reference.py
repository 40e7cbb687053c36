"""The Keras reference itself, on this machine and this package's tokens: its distribution over many seeds.

The seed_keras preset is compared with Keras's own model, Embedding(10k, 32) -> SimpleRNN(5, return_sequences=True)
-> SimpleRNN(5) -> Dense(1, sigmoid), Adam 1e-3, batch 32, 2 epochs, all 25,000 training reviews pre-padded
(Keras's pad_sequences) to their last 100 tokens. Two steps, because TensorFlow and this package's torch live
best in separate environments:

    # 1. this package's tokens (its tokeniser and 10k vocabulary), pre-padded as Keras's pad_sequences does
    python benchmarks/keras_reference.py export /tmp/keras_ids.npz --archive ../shared/data/aclImdb_labelled.tar.gz
    # 2. Keras 3 over seeds 0..N-1, in any environment with TensorFlow (pip install tensorflow-cpu)
    tf/bin/python benchmarks/keras_reference.py train /tmp/keras_ids.npz --seeds 48 --jobs 2 --out keras_seeds.json
    # ... or with the SimpleRNNs' recurrent weights starting as the identity (as model.init=identity)
    tf/bin/python benchmarks/keras_reference.py train /tmp/keras_ids.npz --seeds 48 --recurrent-init identity \
        --out keras_seeds_identity.json
    # 3. the package over the same seeds, next to it
    python benchmarks/seed_fidelity.py --seeds 48 --keras keras_seeds.json data.archive=...

Same start: is a slow seed the framework's doing, or its starting point's? With --same-start DIR, Keras saves each
seed's initial weights there and draws its batch order from numpy; `replay` then trains this package's model
(StackedRNNClassifier, its Adam) from those weights in that order, and compares seed by seed:

    tf/bin/python benchmarks/keras_reference.py train /tmp/keras_ids.npz --seeds 24-47 --same-start /tmp/start \
        --out keras_same_start.json
    python benchmarks/keras_reference.py replay /tmp/keras_ids.npz /tmp/start --keras keras_same_start.json

Each run uses one thread (two runs at once on 2 cores); the JSON holds every seed's test accuracy.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

VOCAB_SIZE, MAX_LEN = 10_000, 100


def export(out: Path, archive: Path) -> None:
    """Token ids of all 25,000 training and 25,000 test reviews, the vocabulary counted on the training reviews,
    each cut to its last MAX_LEN tokens and pre-padded with 0 (Keras's pad_sequences defaults)."""
    from stacked_rnn.tasks.batches import truncate_ids
    from stacked_rnn.tasks.imdb_corpus import encode_all, from_flat, list_reviews, read_archive

    raw = read_archive(archive)
    reviews = list_reviews(raw)
    names = reviews["train"][0] + reviews["test"][0]
    n_train = len(reviews["train"][0])
    vocab, ids, offsets = encode_all([raw[name] for name in names], n_train=n_train, vocab_size=VOCAB_SIZE)
    padded = np.zeros((len(names), MAX_LEN), dtype=np.int32)  # (N, T): pads first, the review's end last
    for row, seq in enumerate(from_flat(ids, offsets)):
        seq = truncate_ids(seq, MAX_LEN, "head")
        padded[row, MAX_LEN - len(seq):] = seq
    np.savez_compressed(out, x_train=padded[:n_train], y_train=reviews["train"][1], x_test=padded[n_train:],
                        y_test=reviews["test"][1])
    print(f"{out}: {n_train:,} training and {len(names) - n_train:,} test reviews, {len(vocab):,} words")


def parse_seeds(text: str) -> list[int]:
    """'48' -> seeds 0..47; '24-47' -> seeds 24..47."""
    first, _, last = text.partition("-")
    if not (first.isdigit() and (not last or last.isdigit())) or (last and int(last) < int(first)):
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: expected a count N (seeds 0..N-1) or a range A-B")
    return list(range(int(first), int(last) + 1)) if last else list(range(int(first)))


def batch_orders(seed: int, n: int, epochs: int = 2) -> list[np.ndarray]:
    """The same-start batch order: one numpy permutation of the training reviews per epoch."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(n) for _ in range(epochs)]


def train_one(path: str, seed: int, start_dir: str | None = None, recurrent_init: str = "orthogonal") -> float:
    """Test accuracy of the Keras reference trained with one seed (one thread, in its own process); with
    start_dir, its initial weights are saved there and the batches follow batch_orders(). recurrent_init is
    the SimpleRNNs' recurrent_initializer (Keras's default orthogonal; identity as model.init=identity)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    data = np.load(path)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((MAX_LEN,), dtype="int32"),
        keras.layers.Embedding(VOCAB_SIZE, 32),
        keras.layers.SimpleRNN(5, return_sequences=True, recurrent_initializer=recurrent_init),
        keras.layers.SimpleRNN(5, recurrent_initializer=recurrent_init),
        keras.layers.Dense(1, activation="sigmoid"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy", metrics=["accuracy"])
    if start_dir is None:
        model.fit(data["x_train"], data["y_train"], epochs=2, batch_size=32, verbose=0)  # Keras shuffles
    else:
        np.savez(Path(start_dir) / f"init_{seed}.npz", *model.get_weights())
        for order in batch_orders(seed, len(data["x_train"])):
            model.fit(data["x_train"][order], data["y_train"][order], epochs=1, batch_size=32, shuffle=False, verbose=0)
    return float(model.evaluate(data["x_test"], data["y_test"], batch_size=512, verbose=0)[1])


def summary(seeds: list[int], accs: list[float]) -> None:
    print("\n| seed | test acc |\n|---|---|")
    for seed, acc in zip(seeds, accs):
        print(f"| {seed} | {acc:.4f} |")
    sd = statistics.stdev(accs) if len(accs) > 1 else float("nan")
    print(f"\nmean {statistics.mean(accs):.4f}, sd {sd:.4f}, min {min(accs):.4f}, "
          f"below 0.76: {sum(a < 0.76 for a in accs)}, below 0.72: {sum(a < 0.72 for a in accs)}")


def train(path: Path, seeds: list[int], jobs: int, out: Path | None, start_dir: Path | None,
          recurrent_init: str = "orthogonal") -> None:
    start = time.perf_counter()
    if start_dir:
        start_dir.mkdir(parents=True, exist_ok=True)
    context = multiprocessing.get_context("spawn")  # a fresh TensorFlow per run
    with ProcessPoolExecutor(jobs, mp_context=context) as pool:
        accs = list(pool.map(train_one, [str(path)] * len(seeds), seeds, [start_dir and str(start_dir)] * len(seeds),
                             [recurrent_init] * len(seeds)))
    import keras
    import tensorflow as tf

    print(f"Keras {keras.__version__} (TensorFlow {tf.__version__}), {len(seeds)} seeds in "
          f"{time.perf_counter() - start:.0f} s ({jobs} at once), recurrent_initializer={recurrent_init}"
          f"{', same start' if start_dir else ''}")
    summary(seeds, accs)
    if out:
        out.write_text(json.dumps({"keras": keras.__version__, "tensorflow": tf.__version__, "seeds": seeds,
                                   "same_start": bool(start_dir),
                                   "recurrent_init": recurrent_init, "test_acc": [round(a, 4) for a in accs]}, indent=1))
        print(f"wrote {out}")


def replay_one(path: str, start_dir: str, seed: int) -> float:
    """Test accuracy of this package's model trained from Keras's initial weights for this seed, in Keras's
    same-start batch order, with the package's own optimizer (seed_keras settings)."""
    import torch

    from stacked_rnn.model import StackedRNNClassifier

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)  # as train.py does
    data = {k: torch.from_numpy(v) for k, v in np.load(path).items()}
    model = StackedRNNClassifier(VOCAB_SIZE, cell="rnn", layers=2, units=5, embed_dim=32, dropout=0.0,
                                 head_dropout=0.0, init="keras", lr=1e-3, adam_eps=1e-7, pack="never")
    model.embedding.padding_idx = None  # Keras's pad row is an ordinary, trained embedding
    saved = np.load(Path(start_dir) / f"init_{seed}.npz")
    emb, k0, r0, b0, k1, r1, b1, dense, dense_bias = (torch.from_numpy(saved[f"arr_{i}"]) for i in range(9))
    with torch.no_grad():  # Keras kernels are (in, out): PyTorch weights are their transposes
        for name, value in [("embedding.weight", emb), ("rnn.weight_ih_l0", k0.T), ("rnn.weight_hh_l0", r0.T),
                            ("rnn.bias_ih_l0", b0), ("rnn.weight_ih_l1", k1.T), ("rnn.weight_hh_l1", r1.T),
                            ("rnn.bias_ih_l1", b1), ("classifier.weight", dense.T), ("classifier.bias", dense_bias)]:
            model.get_parameter(name).copy_(value)
    optimizer = model.configure_optimizers()
    full = lambda ids: torch.full((len(ids),), MAX_LEN)  # pre-padded: every review ends at the last step
    for order in batch_orders(seed, len(data["x_train"])):
        for batch in torch.from_numpy(order).split(32):
            ids, labels = data["x_train"][batch].long(), data["y_train"][batch].float()
            loss = model.loss(model(ids, full(ids)), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        hits = sum(((model(ids.long(), full(ids)) > 0).long() == labels).sum().item()
                   for ids, labels in zip(data["x_test"].split(1000), data["y_test"].split(1000)))
    return hits / len(data["x_test"])


def replay(path: Path, start_dir: Path, keras_json: Path, jobs: int) -> None:
    keras_run = json.loads(keras_json.read_text())
    seeds, theirs = keras_run["seeds"], keras_run["test_acc"]
    start = time.perf_counter()
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        ours = list(pool.map(replay_one, [str(path)] * len(seeds), [str(start_dir)] * len(seeds), seeds))
    print(f"stacked_rnn from Keras's start, {len(seeds)} seeds in {time.perf_counter() - start:.0f} s ({jobs} at once)")
    print("\n| seed | Keras | stacked_rnn |\n|---|---|---|")
    for seed, k, o in zip(seeds, theirs, ours):
        print(f"| {seed} | {k:.4f} | {o:.4f} |")
    from scipy import stats

    diffs = [o - k for o, k in zip(ours, theirs)]
    print(f"\nmean {statistics.mean(theirs):.4f} (Keras) vs {statistics.mean(ours):.4f}; difference "
          f"{statistics.mean(diffs):+.4f} (paired t p = {stats.ttest_rel(ours, theirs).pvalue:.2f}); "
          f"Pearson r = {stats.pearsonr(ours, theirs)[0]:.2f}; below 0.76: {sum(k < 0.76 for k in theirs)} vs "
          f"{sum(o < 0.76 for o in ours)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    steps = parser.add_subparsers(dest="step", required=True)
    step = steps.add_parser("export", help="write this package's tokens for Keras (needs stacked_rnn)")
    step.add_argument("out", type=Path, help="the .npz to write")
    step.add_argument("--archive", type=Path, required=True, help="an aclImdb .tar.gz")
    step = steps.add_parser("train", help="train the Keras reference over seeds (needs tensorflow)")
    step.add_argument("ids", type=Path, help="the .npz written by export")
    step.add_argument("--seeds", type=parse_seeds, default="8", help="N (seeds 0..N-1, default 8) or A-B")
    step.add_argument("--jobs", type=int, default=2, help="runs at once (default 2)")
    step.add_argument("--out", type=Path, default=None, help="a JSON of the accuracies, for seed_fidelity.py --keras")
    step.add_argument("--same-start", type=Path, default=None, metavar="DIR",
                      help="save initial weights in DIR and use a numpy batch order, for `replay`")
    step.add_argument("--recurrent-init", choices=("orthogonal", "identity"), default="orthogonal",
                      help="the SimpleRNNs' recurrent_initializer (default Keras's orthogonal)")
    step = steps.add_parser("replay", help="train this package's model from Keras's saved starts (needs stacked_rnn)")
    step.add_argument("ids", type=Path, help="the .npz written by export")
    step.add_argument("start", type=Path, help="the --same-start folder of a Keras run")
    step.add_argument("--keras", type=Path, required=True, help="that Keras run's --out JSON")
    step.add_argument("--jobs", type=int, default=2, help="runs at once (default 2)")
    args = parser.parse_args()
    if args.step == "export":
        if not args.archive.is_file():
            sys.exit(f"--archive {args.archive} does not exist")
        export(args.out, args.archive)
        return
    if not args.ids.is_file():
        sys.exit(f"{args.ids} does not exist: write it first with `keras_reference.py export`")
    if args.step == "train":
        train(args.ids, args.seeds, args.jobs, args.out, args.same_start, args.recurrent_init)
    elif not args.keras.is_file() or not json.loads(args.keras.read_text()).get("same_start"):
        sys.exit(f"--keras {args.keras} is not the JSON of a `train --same-start` run")
    else:
        replay(args.ids, args.start, args.keras, args.jobs)


if __name__ == "__main__":
    main()
