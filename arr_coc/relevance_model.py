"""Relevance without the LLM: the VLM's processor and input embeddings plus the scorer.

The relevance runner needs the token grid of each image (the processor), the query
embedding of each question (the mean of the VLM's input embeddings of the question
tokens) and the :class:`RelevanceScorer`; it does not need the LLM or the vision
tower. :class:`RelevanceModel` loads exactly those pieces: the processor through
``AutoProcessor`` (of whose image processor it runs only the resize: the VLM runner
runs the whole processor once), and only the ``embed_tokens`` matrix ``[V, D]`` out of the
checkpoint's safetensors (one shard read, not the whole model). Its scores equal
those :class:`arr_coc.vlm.pipeline.VLMPipeline` computes inside its own pass.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from safetensors import safe_open
from transformers import AutoProcessor
from transformers.utils import cached_file

from arr_coc.errors import CheckpointFormatError, ModelNotFoundError
from arr_coc.query import check_question
from arr_coc.scorer import RelevanceScorer
from arr_coc.vlm.grid import resized_token_grid
from arr_coc.vlm.loading import parse_device, parse_dtype, read_family, resolve_source

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


@dataclass
class RelevanceMap:
    """Scores of one image's visual tokens.

    grid: ``(H', W')``; relevance: ``[H', W']`` float32 on CPU in [0, 1];
    query: ``[D]`` the question's embedding (for question-aware selectors);
    cells: ``[3, H', W']`` each token's appearance and explore: the exploration weight
    in [0, 1], what ``arr-coc``'s coverage term balances the relevance against.
    """

    grid: tuple[int, int]
    relevance: torch.Tensor
    query: torch.Tensor
    cells: torch.Tensor
    explore: float


def _embedding_key(names) -> str:
    candidates = [n for n in names if n.endswith("embed_tokens.weight") and "visual" not in n]
    if len(candidates) != 1:
        raise CheckpointFormatError(f"expected one input-embedding tensor, found {candidates}", field="model")
    return candidates[0]


def load_input_embeddings(source: str) -> torch.Tensor:
    """The LLM's input-embedding matrix ``[V, D]`` of a checkpoint, as stored."""
    try:
        index_path = cached_file(source, INDEX_FILE, _raise_exceptions_for_missing_entries=False)
        if index_path is not None:
            weight_map = json.loads(Path(index_path).read_text())["weight_map"]
            key = _embedding_key(weight_map)
            shard = cached_file(source, weight_map[key])
        else:
            shard = cached_file(source, SINGLE_FILE)
            key = None
        with safe_open(shard, framework="pt") as weights:
            key = key or _embedding_key(weights.keys())
            return weights.get_tensor(key)
    except OSError as error:
        raise ModelNotFoundError(f"cannot read the safetensors weights of {source}: {error}", field="model") from error


class RelevanceModel:
    """Processor + question embeddings + scorer: ``score(images, questions) -> [RelevanceMap]``."""

    def __init__(self, processor, embeddings: torch.Tensor, scorer: RelevanceScorer, dtype: torch.dtype) -> None:
        if scorer.query_dim != embeddings.shape[1]:
            raise CheckpointFormatError(
                f"the scorer takes {scorer.query_dim}-d queries but the VLM's embeddings are {embeddings.shape[1]}-d",
                field="scorer",
            )
        self.processor = processor
        self.device = next(scorer.parameters()).device
        # Same values the VLM would embed with: cast to its dtype first, then to float32.
        self.embeddings = embeddings.to(self.device, dtype).float()
        self.scorer = scorer.eval()

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path,
        scorer: str | Path | RelevanceScorer | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
    ) -> RelevanceModel:
        """Load the processor and embeddings of ``model`` (hub id or directory) and a scorer."""
        device = parse_device(device)
        dtype = parse_dtype(dtype, device)
        read_family(model)  # typed errors for missing or unsupported checkpoints
        source = resolve_source(model)
        embeddings = load_input_embeddings(source)
        if isinstance(scorer, (str, Path)):
            scorer = RelevanceScorer.load(scorer)
        scorer = (scorer or RelevanceScorer(query_dim=int(embeddings.shape[1]))).to(device)
        return cls(AutoProcessor.from_pretrained(source), embeddings, scorer, dtype)

    def question_embedding(self, question: str) -> torch.Tensor:
        """``[D]`` float32: mean input embedding of the question's tokens."""
        question = check_question(question)
        ids = self.processor.tokenizer(question, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        return self.embeddings[ids.to(self.device)].mean(dim=0)

    def warm_up(self) -> None:
        """Score one synthetic 224x224 image, so the first real request pays no first-call costs."""
        self.score([Image.linear_gradient("L").resize((224, 224)).convert("RGB")], ["What colour is the circle?"])

    @torch.inference_mode()
    def score(self, images: Sequence[Image.Image], questions: Sequence[str]) -> list[RelevanceMap]:
        """Relevance of every visual token of each image for its question; one scorer call per image size."""
        if len(images) == 0 and len(questions) == 0:
            return []
        bridges = [resized_token_grid(self.processor.image_processor, image) for image in images]
        queries = torch.stack([self.question_embedding(question) for question in questions])  # [B, D]
        if len(bridges) != len(queries):
            raise ValueError(f"{len(bridges)} images but {len(queries)} questions")
        scored = self.scorer.score_images([b.image for b in bridges], [b.grid for b in bridges], queries)
        return [
            RelevanceMap(
                bridge.grid, out.relevance.float().cpu(), query.cpu(), out.cells.float().cpu(), float(out.explore)
            )
            for bridge, out, query in zip(bridges, scored, queries)
        ]
