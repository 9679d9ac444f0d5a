"""A checkpoint's input-embedding table ``[V, D]``, read from its safetensors without loading the model.

The relevance runner needs the LLM's input embeddings (its queries are means of
them) and a scorer's provenance needs a fingerprint of them; neither needs the
rest of the model. :func:`open_input_embeddings` finds the one ``embed_tokens``
tensor of the language model (not the vision tower's), in a single
``model.safetensors`` or through ``model.safetensors.index.json`` (one shard
opened), and yields it as a lazy safetensors slice: ``table.get_shape()`` costs
nothing, ``table[::step]`` reads only those rows. Values come in the dtype they
are stored in.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open

from arr_coc.errors import CheckpointFormatError, ModelNotFoundError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def embedding_key(names) -> str:
    """The one tensor name among ``names`` that holds the LLM's input embeddings."""
    candidates = [n for n in names if n.endswith("embed_tokens.weight") and "visual" not in n]
    if len(candidates) != 1:
        raise CheckpointFormatError(f"expected one input-embedding tensor, found {candidates}", field="model")
    return candidates[0]


@contextmanager
def open_input_embeddings(source: str | Path) -> Iterator:
    """The input-embedding table of checkpoint ``source`` (directory or hub id) as a safetensors slice.

    Raises :class:`ModelNotFoundError` when the weights cannot be read and
    :class:`CheckpointFormatError` when they hold no single input-embedding tensor.
    """
    from transformers.utils import cached_file  # hub ids resolve through the local cache

    source = str(source)
    try:
        index_path = cached_file(source, INDEX_FILE, _raise_exceptions_for_missing_entries=False)
        if index_path is not None:
            weight_map = json.loads(Path(index_path).read_text())["weight_map"]
            key = embedding_key(weight_map)
            shard = cached_file(source, weight_map[key])
        else:
            shard = cached_file(source, SINGLE_FILE)
            key = None
    except OSError as error:
        raise ModelNotFoundError(f"cannot read the safetensors weights of {source}: {error}", field="model") from error
    with safe_open(shard, framework="pt") as weights:
        yield weights.get_slice(key or embedding_key(weights.keys()))


def load_input_embeddings(source: str | Path) -> torch.Tensor:
    """The LLM's input-embedding matrix ``[V, D]`` of a checkpoint, as stored."""
    with open_input_embeddings(source) as table:
        return table[:]
