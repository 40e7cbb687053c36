"""What the probes read at every step: the exact targets a generated task states (data=synthetic_reviews: the
polarity of the word, the phrase, the sentence so far and the document so far), or, for IMDB, the mean word
polarity of the last w tokens at a few scales w, with each word's polarity from the training reviews alone.
"""

from __future__ import annotations

import numpy as np

from stacked_rnn.tasks.batches import PAD_ID, ReviewDataset
from stacked_rnn.tasks.imdb_corpus import UNK_ID

DEFAULT_SCALES = (1, 4, 16, 64)
# penalties tried, on standardised features (a weak signal, as the control's, picks the strongest penalty)


LEXICON_ALPHA = 1.0  # NBSVM's smoothing count


LEXICON_MIN_REVIEWS = 20  # the lexicon's most polar words listed in probe_scales.json occur in at least this many


def polarity_lexicon(train: ReviewDataset, num_tokens: int, alpha: float = LEXICON_ALPHA) -> np.ndarray:
    """Polarity r (num_tokens,) of every vocabulary id: NBSVM's smoothed log-count ratio (Wang & Manning 2012) over
    the TRAINING reviews only. With binarised counts, p = alpha + the number of positive training reviews holding
    the word, q likewise for negative, r = log((p / |p|_1) / (q / |q|_1)). <pad> gets 0 and counts in no norm;
    <unk> gets its own ratio like any word (the model reads it: it stands for the words outside the vocabulary). A
    word no training review holds gets the prior log(|q|_1 / |p|_1), about 0 with balanced classes.

    Not the archive's imdbEr.txt (Potts 2011): it was computed on all 50,000 labelled reviews, the test reviews
    included, and on another tokenisation. This one is defined on this package's tokens and vocabulary, and only
    on the reviews the model trained on (the run's training split, without its validation reviews)."""
    present = [np.unique(ids) for ids in train.sequences]  # binarised: a review counts once per word
    ids = np.concatenate(present) if present else np.zeros(0, dtype=np.int64)
    positive = np.repeat(np.asarray(train.labels) > 0.5, [len(u) for u in present])
    p = alpha + np.bincount(ids[positive], minlength=num_tokens)[1:]  # without <pad>
    q = alpha + np.bincount(ids[~positive], minlength=num_tokens)[1:]
    return np.concatenate([[0.0], np.log(p / p.sum()) - np.log(q / q.sum())])  # (V,)


def window_means(polarity: np.ndarray, lengths: np.ndarray, scales) -> np.ndarray:
    """Mean polarity of the last w tokens at every step, (B, T, S) from per-token polarity (B, T) of right-padded
    reviews: tokens t-w+1..t, or the tokens 0..t so far where fewer than w; NaN at padded steps (never probed)."""
    batch, steps = polarity.shape
    real = np.arange(steps)[None, :] < np.asarray(lengths)[:, None]  # (B, T)
    sums = np.concatenate([np.zeros((batch, 1)), np.cumsum(np.where(real, polarity, 0.0), axis=1)], axis=1)  # (B, T+1)
    end = np.arange(1, steps + 1)  # (T,): the window ends after step t
    out = np.empty((batch, steps, len(scales)))
    for s, w in enumerate(scales):
        start = np.maximum(end - w, 0)
        out[:, :, s] = (sums[:, end] - sums[:, start]) / (end - start)
    out[~real] = np.nan
    return out  # (B, T, S)


def lexicon_summary(lexicon: np.ndarray, train: ReviewDataset, vocab: list[str]) -> dict:
    """Where the word polarities come from, and the most polar common words (a sanity check)."""
    counts = np.bincount(np.concatenate([np.unique(s) for s in train.sequences]), minlength=len(vocab))
    common = np.flatnonzero(counts >= LEXICON_MIN_REVIEWS)
    common = common[common > UNK_ID]
    ranked = common[np.argsort(-lexicon[common], kind="stable")]
    return {"source": "smoothed log-count ratio (NBSVM, Wang & Manning 2012) of binarised counts in the run's "
                      "training reviews (never validation or test)", "alpha": LEXICON_ALPHA,
            "train_reviews": len(train), "vocab_size": len(vocab), "unk": float(lexicon[UNK_ID]),
            "pad": float(lexicon[PAD_ID]), "most_polar_among": f"words in >= {LEXICON_MIN_REVIEWS} training reviews",
            "most_positive": [vocab[i] for i in ranked[:10]], "most_negative": [vocab[i] for i in ranked[::-1][:10]]}



def window_targets(dataset: ReviewDataset, lexicon: np.ndarray, scales):
    """review index -> (T_i, S): the mean lexicon polarity of the last w tokens at every step, for each scale w."""
    def of(i: int) -> np.ndarray:
        ids = np.asarray(dataset.sequences[i], dtype=np.int64)
        return window_means(lexicon[ids][None], [len(ids)], scales)[0]  # (T_i, S)
    return of


class StepTargets:
    """What the probes read: per split, a function from a review's index to its targets at every step (T_i, S); the
    S column names; the heatmap's axis label; where the targets come from; the lexicon, for IMDB."""

    def __init__(self, columns: list[str], of: dict, axis: str, source: str, lexicon: np.ndarray | None = None):
        self.columns, self.of, self.axis, self.source, self.lexicon = columns, of, axis, source, lexicon

    @classmethod
    def for_task(cls, datamodule, scales=DEFAULT_SCALES) -> "StepTargets":
        """The task's own exact targets when it states them (a data module with step_targets(split)), else the
        IMDB polarity lexicon of the training split averaged over windows of the given scales."""
        if hasattr(datamodule, "step_targets"):  # the task knows the truth at every step
            columns, train = datamodule.step_targets("train")
            _, test = datamodule.step_targets("test")
            return cls(list(columns), {"train": train.__getitem__, "test": test.__getitem__},
                       "the task's exact target at step t (R^2)",
                       f"{type(datamodule).__name__}.step_targets: exact, from the generator")
        return cls.from_lexicon(polarity_lexicon(datamodule.datasets["train"], datamodule.num_tokens),
                                datamodule.datasets, scales)

    @classmethod
    def from_lexicon(cls, lexicon: np.ndarray, datasets: dict, scales=DEFAULT_SCALES) -> "StepTargets":
        return cls([f"w={w}" for w in scales], {split: window_targets(datasets[split], lexicon, scales)
                                                 for split in ("train", "test")},
                   "scale: mean polarity of the last w tokens (R^2)",
                   "NBSVM log-count ratio of the training reviews (polarity_lexicon), averaged over windows", lexicon)
