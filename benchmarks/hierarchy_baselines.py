"""What data=synthetic_reviews asks of a model, level by level: how well every rule and a bag of words do.

For every level 1-4, on the test split of the data group's default sizes (train 4000, val 1000, test 2000): the
accuracy of every rule up to the level's own (the lower ones are near 0.5 by construction, the level's own is 1.0),
of the majority class of the training split, and of unigram and unigram+bigram bag-of-words logistic regressions
(scikit-learn; the penalty C chosen on the validation split, never on test). A model that beats the bigram bag of
words at levels 3 and 4 composes phrases into sentences and sentences into a document.

    python benchmarks/hierarchy_baselines.py                    # the markdown table
    python benchmarks/hierarchy_baselines.py --seed 1 --json baselines.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression

from stacked_rnn.tasks.synthetic_reviews import LEVELS, SyntheticReviewsDataModule, generate_reviews

C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0)


def bag_of_words(tokens: dict, labels: dict, ngrams: int) -> tuple[float, float]:
    """Test accuracy of a logistic regression on n-gram counts (n = 1..ngrams, whitespace tokens, punctuation
    included), with C picked by validation accuracy; returns (test accuracy, chosen C)."""
    vectorizer = CountVectorizer(analyzer=lambda doc: [" ".join(doc[i:i + n]) for n in range(1, ngrams + 1)
                                                       for i in range(len(doc) - n + 1)])
    x = {"train": vectorizer.fit_transform(tokens["train"])}
    x.update({split: vectorizer.transform(tokens[split]) for split in ("val", "test")})
    best = None
    for c in C_GRID:
        model = LogisticRegression(C=c, max_iter=2000).fit(x["train"], labels["train"])
        val = model.score(x["val"], labels["val"])
        if best is None or val > best[0]:
            best = (val, c, model)
    return float(best[2].score(x["test"], labels["test"])), best[1]


def level_row(level: int, seed: int) -> dict:
    """Every baseline of one level, on the data group's default splits."""
    dm = SyntheticReviewsDataModule(levels=level, seed=seed)
    start = time.perf_counter()
    generate_reviews(7000, level, np.random.default_rng([seed, level, 9]))  # a job's worth: train + val + test
    seconds = time.perf_counter() - start
    dm.setup()
    labels = {split: ds.labels for split, ds in dm.datasets.items()}  # (n,) 0/1
    y = labels["test"] > 0.5
    rules = dm.rule_labels["test"]  # (n, 4) sign of every rule
    majority = float(labels["train"].mean() >= 0.5)
    lengths = np.concatenate([ds.lengths for ds in dm.datasets.values()])
    unigram, c1 = bag_of_words(dm.tokens, labels, 1)
    bigram, c2 = bag_of_words(dm.tokens, labels, 2)
    return {"level": level, "seed": seed, "test_size": len(y),
            "rules": {k: float(np.mean((rules[:, k - 1] > 0) == y)) for k in range(1, level + 1)},
            "majority": float(np.mean(y == majority)), "unigram": unigram, "unigram_C": c1,
            "bigram": bigram, "bigram_C": c2, "mean_tokens": float(lengths.mean()), "max_tokens": int(lengths.max()),
            "generate_7000_seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="data.seed of the generated sets (default 0)")
    parser.add_argument("--levels", default="1,2,3,4", help="comma-separated levels (default 1,2,3,4)")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args()
    rows = [level_row(int(level), args.seed) for level in args.levels.split(",")]
    print(f"data=synthetic_reviews data.seed={args.seed}: test accuracy (train 4000, val 1000, test 2000)\n")
    print("| level | " + " | ".join(f"rule {k}" for k in LEVELS) + " | majority | unigram BoW | uni+bigram BoW "
          "| mean tokens | max tokens | generate 7000 s |")
    print("|---" * 11 + "|")
    for r in rows:
        rules = " | ".join(f"{r['rules'][k]:.3f}" if k in r["rules"] else "" for k in LEVELS)
        print(f"| {r['level']} | {rules} | {r['majority']:.3f} | {r['unigram']:.3f} | {r['bigram']:.3f} | "
              f"{r['mean_tokens']:.1f} | {r['max_tokens']} | {r['generate_7000_seconds']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
