"""The tasks: one LightningDataModule per module, each chosen by a data group (conf/data/<name>.yaml, `data=<name>`).

- imdb: IMDB sentiment (imdb_corpus downloads, reads, tokenises and caches it; batches pads and buckets it).
- adding: the adding problem (Hochreiter & Schmidhuber 1997), a long-range regression.
- synthetic_reviews: generated reviews whose word, phrase, sentence and document labels are known exactly.
- selective_copy: selective copying (Gu & Dao 2023), where a gate must read what the layer already holds.

A task describes itself to the rest of the package through its data group, never through its name: `input_dim`
(0: token ids through the embedding), `task` (classify | regress | tag), `num_classes` (tag), `metric` and
`metric_mode` (what picks the best checkpoint and what the report compares), and `chance` (the trivial answer's
score, drawn by the report). Every task yields batches (inputs, lengths, targets): inputs (B, T) token ids or (B, T, F)
features, lengths (B,) int64 on the CPU, targets (B,) or, for tag, (B, T) class ids with IGNORE where not scored.
A task with a vocabulary returns it from state_dict() (vocab, max_len, truncate, tokenizer), which Lightning stores in
every checkpoint, so that predict and diagnostics turn text into the same ids. The variable-length text tasks share
batches.TokenSequenceData: lengths kept on the CPU, and a mid-epoch resume that skips the batches already seen.
"""
