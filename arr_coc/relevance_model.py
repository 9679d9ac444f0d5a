"""Relevance without the LLM: the VLM's processor and input embeddings plus the scorer.

The relevance runner needs the token grid of each image (the processor), the query
embedding of each question (the mean of the VLM's input embeddings of the question
tokens) and the :class:`RelevanceScorer`; it does not need the LLM or the vision
tower. :class:`RelevanceModel` loads exactly those pieces: the processor through
``AutoProcessor`` (of whose image processor it runs only the resize: the VLM runner
runs the whole processor once), and only the ``embed_tokens`` matrix ``[V, D]`` out of the
checkpoint's safetensors (one shard read, not the whole model). Its scores equal
those :class:`arr_coc.vlm.pipeline.VLMPipeline` computes inside its own pass. A
scorer that records another VLM than these embeddings' is refused
(:func:`arr_coc.provenance.check_scorer_fits`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from transformers import AutoProcessor

from arr_coc.errors import CheckpointFormatError
from arr_coc.input_embeddings import load_input_embeddings
from arr_coc.provenance import ScorerProvenance, check_scorer_fits, embedding_fingerprint, vlm_name
from arr_coc.query import check_question
from arr_coc.scorer import RelevanceScorer
from arr_coc.vlm.grid import resized_token_grid
from arr_coc.vlm.loading import parse_device, parse_dtype, read_family, resolve_source


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


class RelevanceModel:
    """Processor + question embeddings + scorer: ``score(images, questions) -> [RelevanceMap]``.

    ``embeddings [V, D]`` as stored in the VLM's checkpoint; ``vlm`` names that VLM.
    ``provenance`` is the VLM's own record (what a scorer trained beside it records).
    """

    def __init__(
        self, processor, embeddings: torch.Tensor, scorer: RelevanceScorer, dtype: torch.dtype, vlm: str = "the VLM"
    ) -> None:
        if scorer.query_dim != embeddings.shape[1]:
            raise CheckpointFormatError(
                f"the scorer takes {scorer.query_dim}-d queries but the VLM's embeddings are {embeddings.shape[1]}-d",
                field="scorer",
            )
        self.provenance = ScorerProvenance(vlm=vlm, fingerprint=embedding_fingerprint(embeddings))
        check_scorer_fits(scorer, self.provenance)
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
        return cls(AutoProcessor.from_pretrained(source), embeddings, scorer, dtype, vlm=vlm_name(model))

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
