"""A question embedding that needs no VLM: signed feature hashing of words.

The scorer's query normally comes from the VLM (mean of its input embeddings of
the question tokens). Without a VLM, e.g. ``arr-coc relevance`` with no ``--model``,
``hash_embedding`` gives a deterministic ``[D]`` vector: each lower-cased word and
word bigram is hashed (BLAKE2b) to a dimension and a sign, and the sum is
L2-normalized. Same text, same vector, on every machine.
"""

from __future__ import annotations

import hashlib
import re

import torch

from arr_coc.errors import InvalidQuestionError

_WORD = re.compile(r"[\w']+", re.UNICODE)


def check_question(question: str, max_chars: int | None = None) -> str:
    """Strip ``question``; raise :class:`InvalidQuestionError` when empty or too long."""
    if not isinstance(question, str):
        raise InvalidQuestionError(f"expected a string, got {type(question).__name__}", field="question")
    question = question.strip()
    if not question:
        raise InvalidQuestionError("the question is empty", field="question")
    if max_chars is not None and len(question) > max_chars:
        raise InvalidQuestionError(f"{len(question)} characters exceeds the limit of {max_chars}", field="question")
    return question


def hash_embedding(question: str, dim: int) -> torch.Tensor:
    """``[dim]`` float32 unit vector of the words and bigrams of ``question``."""
    words = _WORD.findall(check_question(question).lower())
    features = words + [f"{a} {b}" for a, b in zip(words, words[1:])]
    vector = torch.zeros(dim)
    for feature in features:
        digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
        value = int.from_bytes(digest, "little")
        vector[value % dim] += 1.0 if (value >> 63) & 1 else -1.0
    norm = vector.norm()
    return vector / norm if norm > 0 else vector
