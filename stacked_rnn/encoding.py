"""Text to token ids and back, as the run's task tokenised its data: the one place predict, generate, probe and the
diagnostics turn text into ids.

The task stored how in every checkpoint (its data module's state_dict: vocab, max_len, truncate, tokenizer):
- words (IMDB): lowercase words, ! and ?;
- whitespace (the generated tasks): every whitespace-separated token, punctuation and markers included;
- chars (the language models): every character.
"""

from __future__ import annotations

import numpy as np

from stacked_rnn.tasks.batches import truncate_ids
from stacked_rnn.tasks.imdb_corpus import UNK_ID, tokenise


def text_tokens(text: str, data_state: dict) -> list[str]:
    """The tokens of a text as the model's task tokenised its data."""
    tokenizer = data_state.get("tokenizer", "words")
    if tokenizer == "chars":
        return list(text)
    if tokenizer == "whitespace":
        return text.lower().split()
    return tokenise(text)


def encode_text(text: str, data_state: dict, truncate: bool = True) -> np.ndarray:
    """Token ids (T,) of one text, cut as in training (truncate=False: whole); unknown tokens map to id 1 (<unk>), an
    empty text to one."""
    stoi = {token: i for i, token in enumerate(data_state["vocab"])}
    ids = np.asarray([stoi.get(token, UNK_ID) for token in text_tokens(text, data_state)] or [UNK_ID], dtype=np.int64)
    return truncate_ids(ids, data_state["max_len"], data_state["truncate"]) if truncate else ids


def decode_ids(ids, data_state: dict) -> str:
    """Text of token ids: characters joined as they are (chars), other tokens with spaces."""
    tokens = [data_state["vocab"][i] for i in ids]
    return "".join(tokens) if data_state.get("tokenizer") == "chars" else " ".join(tokens)
