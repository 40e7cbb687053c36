"""data=synthetic_reviews: the generator's labels follow the four rules, each level needs its own rule (the rule
one level down agrees on exactly half), the per-step probe targets are exact, and the data module is seeded."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from conftest import compose_config
from hydra.utils import instantiate

from stacked_rnn.tasks.synthetic_reviews import (COLUMNS, NEGATIVE, NEGATORS, POSITIVE, SyntheticReviewsDataModule,
                                                 generate_reviews, rule_scores, step_values)


def split_on(tokens: list[str], separator: str) -> list[list[str]]:
    parts = [[]]
    for token in tokens:
        parts.append([]) if token == separator else parts[-1].append(token)
    return parts


def reference_scores(tokens: list[str]) -> tuple[int, int, int, int]:
    """The four rules written again from their definitions, by splitting (not the module's running pass):
    sentences on ".", clauses on "but", phrases on ","; a negator flips the next polar word of its phrase."""
    def phrase_value(phrase):
        value, flip = 0, False
        for token in phrase:
            if token in NEGATORS:
                flip = not flip
            elif token in POSITIVE or token in NEGATIVE:
                value += (1 if token in POSITIVE else -1) * (-1 if flip else 1)
                flip = False
        return value

    words = sum(token in POSITIVE for token in tokens) - sum(token in NEGATIVE for token in tokens)
    sentences = split_on(tokens, ".")
    if not sentences[-1]:
        sentences.pop()  # the document ends with "."
    clauses = [split_on(sentence, "but") for sentence in sentences]
    phrases = sum(phrase_value(p) for sentence in clauses for clause in sentence for p in split_on(clause, ","))
    contributions = [sum(phrase_value(p) for p in split_on(sentence[-1], ",")) for sentence in clauses]
    return words, phrases, sum(contributions), sum(int(np.sign(c)) for c in contributions)


@pytest.mark.parametrize("level", [1, 2, 3, 4])
def test_labels_follow_the_rules_and_each_level_is_needed(level):
    docs, labels = generate_reviews(400, level, np.random.default_rng(level))
    assert labels.shape == (400, 4) and labels.dtype == np.int8
    reference = np.sign(np.asarray([reference_scores(doc) for doc in docs]))  # (400, 4)
    np.testing.assert_array_equal(labels, reference)
    assert (labels[:, :level] != 0).all()  # no rule up to the level ever ties
    y = labels[:, level - 1]
    assert (y > 0).mean() == 0.5  # balanced classes, by construction
    if level > 1:
        assert (labels[:, level - 2] == y).mean() == 0.5  # the rule one level down: exactly a coin
    constructs = {1: set(), 2: {"not", "never"}, 3: {"not", "never", "but"}, 4: {"not", "never", "but"}}[level]
    used = {token for doc in docs for token in doc} & {"not", "never", "but"}
    assert used == constructs  # a level uses the constructs of its level and below only
    if level == 4:  # several sentences, one of them long: the majority is not the sum
        assert min(doc.count(".") for doc in docs) >= 3


def test_generation_is_fast_and_seeded():
    a = generate_reviews(200, 4, np.random.default_rng(7))
    b = generate_reviews(200, 4, np.random.default_rng(7))
    assert a[0] == b[0] and (a[1] == b[1]).all()
    assert a[0] != generate_reviews(200, 4, np.random.default_rng(8))[0]


def test_step_targets_of_a_hand_written_document():
    tokens = "not great acting , quite dull plot but never bad music . very good cast .".split()
    #          0    1     2     3   4     5    6    7    8    9    10  11  12   13   14  15
    expected = {  # step: (word, phrase, sentence, document at levels 1, 2, 3, 4)
        0: (0, 0, 0, 0, 0, 0, 0),  # a negator alone: nothing yet
        1: (1, -1, -1, 1, -1, -1, -1),  # "not great": the word is positive, the phrase negative
        3: (0, 0, -1, 1, -1, -1, -1),  # "," ends the phrase; the clause goes on
        5: (-1, -1, -2, 0, -2, -2, -1),
        7: (0, 0, 0, 0, -2, 0, 0),  # "but": the sentence restarts from its next clause
        9: (-1, 1, 1, -1, -1, 1, 1),  # "never bad" after "but": the sentence is now +1
        11: (0, 0, 1, -1, -1, 1, 1),  # "." is the sentence's last step: its whole contribution
        12: (0, 0, 0, -1, -1, 1, 1),  # a new sentence starts from 0
        13: (1, 1, 1, 0, 0, 2, 2),
        15: (0, 0, 1, 0, 0, 2, 2),
    }
    for level in (1, 2, 3, 4):
        values = step_values(tokens, level)
        assert values.shape == (len(tokens), 4) and values.dtype == np.float32
        for step, row in expected.items():
            assert tuple(values[step]) == row[:3] + (row[2 + level],), (level, step)
    assert rule_scores(tokens) == (0, 0, 2, 2) == reference_scores(tokens)


@pytest.mark.parametrize("overrides, message", [
    ({"levels": 5}, "data.levels=5 is not allowed: expected 1, 2, 3 or 4"),
    ({"levels": 0}, "data.levels=0 is not allowed: expected 1, 2, 3 or 4"),
    ({"train_size": 0}, "data.train_size=0 is not allowed: expected an integer >= 1"),
    ({"test_size": 0}, "data.test_size=0 is not allowed: expected an integer >= 1"),
    ({"batch_size": 0}, "data.batch_size=0 is not allowed: expected an integer >= 1"),
    ({"seed": -1}, "data.seed=-1 is not allowed: expected an integer >= 0"),
    ({"filler_rate": 1.5}, "data.filler_rate=1.5 is not allowed: expected a number from 0 to 1"),
    ({"task": "regress"}, "data.task='regress' is not allowed: expected classify"),
])
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        SyntheticReviewsDataModule(**overrides)


def test_data_module_batches_and_splits():
    dm = SyntheticReviewsDataModule(levels=3, train_size=80, val_size=40, test_size=20, batch_size=16, seed=3)
    dm.setup()
    ids, lengths, labels = next(iter(dm.train_dataloader()))
    assert ids.dtype == torch.int64 and ids.shape == (16, int(lengths.max()))
    assert lengths.dtype == torch.int64 and lengths.shape == (16,) and (lengths[:-1] >= lengths[1:]).all()
    assert labels.dtype == torch.float32 and labels.shape == (16,)
    for row, n in zip(ids, lengths):
        assert (row[n:] == 0).all() and (row[:n] != 0).all()  # right-padded with <pad>, never inside
    ids, lengths, labels = next(iter(dm.val_dataloader()))
    assert len(labels) == 40 and labels.mean() == 0.5
    # the tokens, ids, labels and probe targets line up, document by document
    columns, targets = dm.step_targets("test")
    assert columns == COLUMNS and len(targets) == 20
    for doc, seq, label, target in zip(dm.tokens["test"], dm.datasets["test"].sequences, dm.datasets["test"].labels,
                                       targets):
        assert [dm.vocab[i] for i in seq] == doc and len(target) == len(seq) <= dm.max_len
        assert (target[-1, 3] > 0) == label  # the document column ends at the level's score
    assert dm.vocab[:2] == ["<pad>", "<unk>"] and dm.num_tokens == len(dm.vocab)
    state = dm.state_dict()
    assert state["tokenizer"] == "whitespace" and state["truncate"] == "tail" and state["vocab"] == dm.vocab
    # seeded, and train_size never changes val or test
    other = SyntheticReviewsDataModule(levels=3, train_size=120, val_size=40, test_size=20, seed=3)
    other.setup()
    assert other.tokens["val"] == dm.tokens["val"] and other.tokens["test"] == dm.tokens["test"]
    reseeded = SyntheticReviewsDataModule(levels=3, train_size=80, val_size=40, test_size=20, seed=4)
    reseeded.setup()
    assert reseeded.tokens["val"] != dm.tokens["val"]


def test_hydra_composition_instantiates():
    cfg = compose_config(["data=synthetic_reviews", "data.levels=3", "data.train_size=40", "data.val_size=8",
                          "data.test_size=8"])
    assert cfg.model.task == "classify" and cfg.model.input_dim == 0 and cfg.metric == "acc"
    dm = instantiate(cfg.data)
    dm.setup()
    assert dm.level == 3 and len(dm.datasets["train"]) == 40 and dm.order_seed == cfg.seed
