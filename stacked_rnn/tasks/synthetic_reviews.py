"""Synthetic reviews with a known hierarchy: generated, seeded documents whose word, phrase, sentence and document
polarities are known exactly, at four levels of composition (data=synthetic_reviews data.levels=1..4).

The grammar (whitespace-separated tokens; "," "." and "but" are tokens):

    document = sentence+                     sentence = [clause "but"] clause "."
    clause   = phrase ("," phrase)*          phrase   = (modifier | negator) adjective noun

    modifier: very really quite ...   negator: not never   adjective: positive (good great ...), negative (bad dull
    ...) or neutral (long old ...)   noun: plot acting music ...

Every phrase holds exactly one adjective, so phrase boundaries ("," "but" ".") are visible from the tokens alone.
The four rules, each computed from the tokens alone (rule_scores), and each level's label the sign of its score:

    1 words:     score = the sum of the word polarities (positive +1, negative -1, every other token 0).
    2 phrases:   score = the sum of the phrase polarities. A negator flips the next polar word of its own phrase
                 (two negators before it flip it twice; a negator with no polar word after it in its phrase, as in
                 "not long plot", does nothing); a phrase's polarity is the sum of its (flipped) polar words.
    3 sentences: score = the sum of the sentence contributions. A sentence contributes the sum of the phrase
                 polarities of its clause after the last "but" (the whole sentence when it has none).
    4 document:  score = the number of sentences with a positive contribution minus those with a negative one
                 (a sentence contributing 0 counts as neither): the label is the majority of sentences, whatever
                 the number of phrases each one holds.

Each level is needed. A document of level L uses the constructs of levels 1..L only:
    levels 1-2: one or two sentences of 1-3 phrases; negators (level 2) on half of the phrases;
    level 3:    one to three sentences; 70% of them hold 1-3 phrases of the opposite polarity before "but", then
                the 1-2 phrases that count;
    level 4:    three or five sentences: one long (three polar phrases that count), the others short (one);
                30% of them hold one phrase of the opposite polarity before "but".
A clause may also get a pair of opposite phrases (data.pair_rate) and a neutral one (data.filler_rate).
generate_reviews then keeps candidates in four equal buckets of (label by the rule of level L, label by the rule of
level L-1): in every split the classes are 50/50 and the rule one level down agrees with the label on half of the
documents (exactly when the split's size is a multiple of 4; level 1: the classes only), so no rule below L helps.
The rules further down come out near 0.5 too, and a bigram bag of words near 0.52 and 0.56 at levels 3 and 4
(benchmarks/hierarchy_baselines.py), where one GRU layer of 32 units reaches 0.99 (docs/hierarchy.md).
No rule of levels 1..L ever ties (a zero sum, a tied majority): such candidates are rejected.

One example per level: its label, and the score of the rule one level down (which disagrees):

    1  very great acting , quite long story . really dull plot , pretty dull music .   -  (word sum -1)
    2  not great acting , never bad plot , not superb music .                          -  (word sum +1)
    3  really superb cast , pretty great plot but not funny music .                    -  (phrase sum +1)
    4  very dull plot . truly great music , quite clever script , not weak cast . not funny ending .
                                                                      -  (sentence contributions -1 +3 -1: sum +1)

Per-step probe targets (step_targets, step_values): at every token, the polarity of the word, of the phrase so far,
of the sentence so far and the running document score; see step_values for the exact definitions.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch.utils.data import DataLoader

from stacked_rnn.tasks.batches import BucketSampler, ReviewDataset, TokenSequenceData, collate

# ---------------------------------------------------------------------------------------------------------------
# Vocabulary: the same 55 tokens at every level, so that a checkpoint reads any level's documents.

PAD, UNK = "<pad>", "<unk>"
PERIOD, COMMA, BUT = ".", ",", "but"
NEGATORS = ("not", "never")
MODIFIERS = ("very", "really", "quite", "rather", "pretty", "truly", "fairly", "somewhat")
POSITIVE = ("good", "great", "superb", "lovely", "clever", "funny", "moving", "brilliant")
NEGATIVE = ("bad", "awful", "dull", "boring", "weak", "silly", "poor", "clumsy")
NEUTRAL = ("long", "short", "old", "new", "quiet", "french", "modern", "british")
NOUNS = ("plot", "acting", "cast", "music", "story", "ending", "script", "pacing", "dialogue", "humour", "visuals",
         "characters", "direction", "editing", "score", "setting")
VOCAB = [PAD, UNK, PERIOD, COMMA, BUT, *NEGATORS, *MODIFIERS, *POSITIVE, *NEGATIVE, *NEUTRAL, *NOUNS]
POLARITY = {**{w: 1 for w in POSITIVE}, **{w: -1 for w in NEGATIVE}}  # lexical polarity; every other token 0
LEVELS = (1, 2, 3, 4)
COLUMNS = ["word", "phrase", "sentence", "document"]  # the probe targets at every step


def sign(x: int) -> int:
    return (x > 0) - (x < 0)


# ---------------------------------------------------------------------------------------------------------------
# The rules, from the tokens alone: one left-to-right pass gives every running value at every step.

def trace(tokens: list[str]) -> list[tuple[int, ...]]:
    """The running values after each token t: (word, phrase, sentence, doc1, doc2, doc3, doc4), where docL is the
    document score of level L's rule over the tokens 0..t (as if the document ended at t). See step_values."""
    rows = []
    flip = False  # a negator of the current phrase is waiting for its polar word
    phrase = clause = 0  # the current phrase so far; the current clause (since the last "but") so far
    doc1 = doc2 = 0  # sums of the word polarities and of the (flipped) phrase polarities
    done3 = done4 = 0  # sum of the contributions, and of their signs, of the sentences already ended by "."
    for token in tokens:
        word = POLARITY.get(token, 0)
        if token in (COMMA, BUT, PERIOD):  # a separator ends the phrase (and belongs to none)
            phrase, flip = 0, False
        elif token in NEGATORS:
            flip = not flip
        elif word:
            value = -word if flip else word
            phrase, clause, doc1, doc2, flip = phrase + value, clause + value, doc1 + word, doc2 + value, False
        if token == BUT:  # the sentence so far restarts: only the clause after the last "but" counts
            clause = 0
        rows.append((word, phrase, clause, doc1, doc2, done3 + clause, done4 + sign(clause)))
        if token == PERIOD:  # the sentence ends here (the "." is its last step): its contribution is final
            done3, done4, clause = done3 + clause, done4 + sign(clause), 0
    return rows


def rule_scores(tokens: list[str]) -> tuple[int, int, int, int]:
    """The document score of each level's rule (1 words, 2 phrases, 3 sentences, 4 document); label = its sign."""
    return tuple(trace(tokens)[-1][3:]) if tokens else (0, 0, 0, 0)


def rule_label(tokens: list[str], level: int) -> int:
    """The label level's rule gives: +1 positive, -1 negative, 0 a tie (never in generated documents of that
    level or above)."""
    return sign(rule_scores(tokens)[level - 1])


def step_values(tokens: list[str], level: int) -> np.ndarray:
    """Exact probe targets (T, 4), one row per token t, columns COLUMNS:

    word:     the lexical polarity of the token at t (+1 positive, -1 negative, 0 other), before any negation.
    phrase:   the polarity of the current phrase over its tokens up to t, after negation; 0 at "," "but" "."
              (a separator ends the phrase and belongs to none) and before the phrase's polar word.
    sentence: the sentence so far, after contrast: the sum of the (flipped) polar words of the current clause,
              i.e. since the last "but" of the current sentence, or since the sentence began. 0 at "but" itself;
              at "." the sentence's whole contribution (the "." is the sentence's last step); the next token
              starts a new sentence from 0.
    document: the score of this level's rule over the prefix 0..t, as if the document ended at t. Levels 1-3: the
              running sum whose sign is the label (1: word polarities; 2: phrase polarities, the current phrase
              so far included; 3: the contributions of the sentences ended by "." plus the current sentence's
              column value). Level 4: the number of positive minus negative ended sentences plus the sign of the
              current sentence's column value. At the last token it is rule_scores(tokens)[level - 1]."""
    rows = np.asarray(trace(tokens), dtype=np.float32).reshape(-1, 7)  # (T, 7)
    return rows[:, [0, 1, 2, 2 + level]]  # (T, 4)


# ---------------------------------------------------------------------------------------------------------------
# The generator: candidate documents of a level, then rejection into equal (label, lower-rule label) buckets.

def uniform_stream(rng: np.random.Generator, block: int = 4096):
    """Python floats in [0, 1) from rng, drawn a block at a time (one numpy call per 4096 draws, not per draw)."""
    while True:
        yield from rng.random(block).tolist()


def propose(level: int, u, filler_rate: float, pair_rate: float) -> list[str]:
    """One candidate document of `level` (its tokens), before any balancing; u() returns the next uniform draw.
    Each sentence has a mood (+1/-1); its last clause holds `strength` phrases of that polarity (after
    negation), its clause before "but" (levels 3-4) phrases of the opposite one."""

    def pick(options):
        return options[int(u() * len(options))]

    def phrase(polarity: int) -> list[str]:  # polarity after negation: +1, -1, or 0 (a neutral adjective)
        negated = level >= 2 and u() < 0.5
        lexical = -polarity if negated else polarity
        adjectives = POSITIVE if lexical > 0 else NEGATIVE if lexical < 0 else NEUTRAL
        return [pick(NEGATORS) if negated else pick(MODIFIERS), pick(adjectives), pick(NOUNS)]

    def clause(mood: int, strength: int) -> list[str]:
        polarities = [mood] * strength
        if u() < pair_rate:  # one more phrase of each polarity: the clause's sum stays the same
            polarities += [mood, -mood]
        if u() < filler_rate:  # a phrase with a neutral adjective
            polarities += [0]
        polarities.sort(key=lambda _: u())  # shuffled
        tokens = []
        for p in polarities:
            tokens += [COMMA] * bool(tokens) + phrase(p)
        return tokens

    sentences = pick({1: (1, 2), 2: (1, 2), 3: (1, 2, 3), 4: (3, 5)}[level])
    long_one = int(u() * sentences)  # level 4: the one sentence with three polar phrases
    tokens = []
    for s in range(sentences):
        mood = 1 if u() < 0.5 else -1
        if level == 4:
            before, after = (1 if u() < 0.3 else 0), (3 if s == long_one else 1)
        elif level == 3:
            before, after = (pick((1, 2, 3)) if u() < 0.7 else 0), pick((1, 2))
        else:
            before, after = 0, pick((1, 2, 3))
        if before:
            tokens += clause(-mood, before) + [BUT]
        tokens += clause(mood, after) + [PERIOD]
    return tokens


def generate_reviews(n: int, level: int, rng: np.random.Generator, filler_rate: float = 0.1,
                     pair_rate: float = 0.1) -> tuple[list[list[str]], np.ndarray]:
    """n documents of `level`: their tokens, and labels (n, 4) int8, the sign each level's rule gives (column k-1:
    rule k; +1 positive, -1 negative, 0 a tie, which only rules above `level` can give).

    Rejection sampling: candidates from propose() go into the buckets of (label, label by the rule one level down)
    (level 1: the label alone) until each holds its quota, n/4 (n/2), so classes are 50/50 and the lower rule
    agrees on half of the documents; a remainder of n goes one by one to (+,+), (-,-), (+,-), (-,+). Candidates on
    which any rule of levels 1..level ties are rejected. The accepted documents come out shuffled."""
    keys = [(1, 0), (-1, 0)] if level == 1 else [(1, 1), (-1, -1), (1, -1), (-1, 1)]
    quota = {key: n // len(keys) + (i < n % len(keys)) for i, key in enumerate(keys)}
    u = uniform_stream(rng).__next__
    docs, labels, tries = [], [], 0
    while len(docs) < n:
        tries += 1
        if tries > 100 * n + 10_000:  # never with this grammar: 1.1 (level 1) to 2.7 (level 4) candidates a document
            raise RuntimeError(f"generate_reviews: only {len(docs)} of {n} level-{level} documents after {tries} "
                               f"candidates; the buckets {quota} cannot be filled")
        tokens = propose(level, u, filler_rate, pair_rate)
        signs = [sign(s) for s in rule_scores(tokens)]
        if 0 in signs[:level]:
            continue
        key = (signs[level - 1], signs[level - 2] if level > 1 else 0)
        if quota[key]:
            quota[key] -= 1
            docs.append(tokens)
            labels.append(signs)
    order = rng.permutation(n)
    return [docs[i] for i in order], np.asarray(labels, dtype=np.int8).reshape(n, 4)[order]


# ---------------------------------------------------------------------------------------------------------------
# The data module.

class SyntheticReviewsDataModule(TokenSequenceData):
    """Seeded train/val/test sets of synthetic reviews of one level, served as IMDBDataModule serves IMDB: token-id
    arrays with 0/1 labels, length-bucketed training batches, length-sorted evaluation. The sets come from data.seed
    (each split its own stream, so train_size never changes val or test); the batch order from data.order_seed (the
    run's seed). input_dim, task, metric, metric_mode and chance are not settings: they describe the task (binary
    classification, accuracy, 0.5 by guessing) to the model, the checkpoint callback and the report."""

    def __init__(self, levels: int = 4, train_size: int = 4000, val_size: int = 1000, test_size: int = 2000,
                 batch_size: int = 64, eval_batch_size: int = 500, seed: int = 0, order_seed: int | None = None,
                 bucket: bool = True, filler_rate: float = 0.1, pair_rate: float = 0.1, input_dim: int = 0,
                 task: str = "classify", metric: str = "acc", metric_mode: str = "max", chance: float = 0.5):
        super().__init__()

        def whole(value, low):
            return isinstance(value, int) and not isinstance(value, bool) and value >= low

        def rate(value):
            return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1

        checks = [
            ("data.levels", levels, whole(levels, 1) and levels <= 4, "1, 2, 3 or 4"),
            ("data.train_size", train_size, whole(train_size, 1), "an integer >= 1"),
            ("data.val_size", val_size, whole(val_size, 1), "an integer >= 1"),
            ("data.test_size", test_size, whole(test_size, 1), "an integer >= 1"),
            ("data.batch_size", batch_size, whole(batch_size, 1), "an integer >= 1"),
            ("data.eval_batch_size", eval_batch_size, whole(eval_batch_size, 1), "an integer >= 1"),
            ("data.seed", seed, whole(seed, 0), "an integer >= 0"),
            ("data.order_seed", order_seed, order_seed is None or whole(order_seed, 0), "null or an integer >= 0"),
            ("data.bucket", bucket, isinstance(bucket, bool), "true or false"),
            ("data.filler_rate", filler_rate, rate(filler_rate), "a number from 0 to 1"),
            ("data.pair_rate", pair_rate, rate(pair_rate), "a number from 0 to 1"),
            ("data.input_dim", input_dim, input_dim == 0, "0 (token ids)"),
            ("data.task", task, task == "classify", "classify"),
            ("data.metric", metric, metric == "acc", "acc"),
            ("data.metric_mode", metric_mode, metric_mode == "max", "max"),
            ("data.chance", chance, chance == 0.5, "0.5 (the classes are balanced)"),
        ]
        for key, value, ok, allowed in checks:
            if not ok:
                raise ValueError(f"{key}={value!r} is not allowed: expected {allowed}")
        self.level, self.filler_rate, self.pair_rate = levels, filler_rate, pair_rate
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.batch_size, self.eval_batch_size, self.bucket = batch_size, eval_batch_size, bucket
        self.seed = seed
        self.order_seed = seed if order_seed is None else order_seed
        self.vocab = list(VOCAB)
        self.stoi = {word: i for i, word in enumerate(self.vocab)}
        self.tokens: dict[str, list[list[str]]] = {}  # split -> the documents' tokens (ids are their vocab indices)
        self.rule_labels: dict[str, np.ndarray] = {}  # split -> (n, 4) sign of every level's rule
        self.datasets: dict[str, ReviewDataset] = {}

    @property
    def num_tokens(self) -> int:
        return len(self.vocab)

    @property
    def max_len(self) -> int:
        """The longest document the grammar can write at this level (predict keeps this many tokens): a clause holds
        at most its strength + 3 phrases (with a pair and a filler), each phrase 3 tokens and a separator."""
        phrases = {1: 2 * (3 + 3), 2: 2 * (3 + 3),  # 2 sentences of strength <= 3
                   3: 3 * ((3 + 3) + (2 + 3)),  # 3 sentences: <= 3 phrases before "but", <= 2 after
                   4: 5 * (1 + 3) + (3 + 3) + 4 * (1 + 3)}[self.level]  # 5 clauses before "but"; 1 long, 4 short
        return 4 * phrases

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        for i, (split, n) in enumerate(self.sizes.items()):  # each split its own stream: sizes never interact
            rng = np.random.default_rng([self.seed, self.level, i])
            docs, labels = generate_reviews(n, self.level, rng, self.filler_rate, self.pair_rate)
            self.tokens[split], self.rule_labels[split] = docs, labels
            ids = [np.asarray([self.stoi[t] for t in doc], dtype=np.int64) for doc in docs]  # (T_i,) each
            self.datasets[split] = ReviewDataset(ids, (labels[:, self.level - 1] > 0).astype(np.float32))

    def step_targets(self, split: str) -> tuple[list[str], list[np.ndarray]]:
        """The exact probe targets of every document of a split, in the order of datasets[split]: COLUMNS and one
        float32 array (T_i, 4) per document, row t aligned with token id t (documents are never truncated). The
        document column uses this level's rule (step_values)."""
        self.setup()
        return list(COLUMNS), [step_values(doc, self.level) for doc in self.tokens[split]]

    def _loader(self, split: str, batch_size: int, train: bool) -> DataLoader:
        ds = self.datasets[split]
        sampler = BucketSampler(ds.lengths, batch_size, self.order_seed) if train and self.bucket else None
        if sampler is not None:
            self._train_sampler, sampler.skip, self._skip_batches = sampler, self._skip_batches * batch_size, 0
        if not train:  # evaluation order does not matter: sort by length for the least padding
            sampler = np.argsort(ds.lengths, kind="stable").tolist() if self.bucket else None
        shuffle = train and sampler is None
        return DataLoader(ds, batch_size=batch_size, sampler=sampler, shuffle=shuffle,
                          generator=torch.Generator().manual_seed(self.order_seed) if shuffle else None,
                          collate_fn=functools.partial(collate, longest_first=True))

    def state_dict(self) -> dict:
        """Stored in every checkpoint: what predict needs to turn text ("not good acting .") into the same ids."""
        return {"vocab": list(self.vocab), "max_len": self.max_len, "truncate": "tail", "tokenizer": "whitespace"}
