"""Which decoder layers the attention teacher reads, chosen without labels.

Where a model's question-to-image attention points at what it answers from
differs between models (the middle layers in published 7B models, the first
quarter in the embedded testbed). :func:`choose_layers` tries each candidate
range on a few pairs: the VLM answers from only the teacher map's top ``budget``
of the tokens, and the range whose answers most often equal the model's own
all-token answers (answer fidelity) wins; ties go to the earlier candidate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from arr_coc.distill.maps import Pair
from arr_coc.distill.teachers import TeacherConfig, teacher_map
from arr_coc.errors import InvalidConfigError
from arr_coc.vlm.pipeline import VLMPipeline
from arr_coc.vlm.types import AnswerRequest, GenerationParams

CANDIDATES: tuple[tuple[float, float], ...] = ((0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0), (0.0, 1.0))
PROBE_BUDGET = 0.05


@dataclass
class LayerChoice:
    """The chosen ``layers`` and the fidelity in [0, 1] of every candidate, in candidate order."""

    layers: tuple[float, float]
    fidelity: dict[tuple[float, float], float]


def choose_layers(
    pipeline: VLMPipeline,
    pairs: Sequence[Pair],
    config: TeacherConfig,
    candidates: Sequence[tuple[float, float]] = CANDIDATES,
    budget: float = PROBE_BUDGET,
) -> LayerChoice:
    """The candidate layer range whose teacher keeps the model's answers best on ``pairs`` (see the module doc)."""
    if not pairs:
        raise InvalidConfigError("choosing the teacher's layers needs at least one pair", field="layer_probe")
    generation = GenerationParams(max_new_tokens=config.answer_tokens)
    fidelity: dict[tuple[float, float], float] = {}
    references: list[list[int]] = []
    for layers in candidates:
        teacher = config.model_copy(update={"teacher": "attention", "layers": tuple(layers)})
        agree = 0
        for i, pair in enumerate(pairs):
            found = teacher_map(pipeline.vlm, pair.image, pair.question, teacher)
            if len(references) <= i:
                references.append(_answer_ids(found.answer_ids, pipeline))
            request = AnswerRequest(
                pair.image,
                pair.question,
                method="arr-coc",
                budget=budget,
                relevance=found.relevance,
                generation=generation,
            )
            agree += pipeline.answer(request).token_ids == references[i]
        fidelity[tuple(layers)] = agree / len(pairs)
    best = max(fidelity, key=lambda layers: (fidelity[layers], -list(fidelity).index(layers)))
    return LayerChoice(best, fidelity)


def _answer_ids(generated: list[int], pipeline: VLMPipeline) -> list[int]:
    """The teacher's greedy ids as an answer's ``token_ids`` (end-of-sequence not included)."""
    eos = set(pipeline.vlm.eos_token_ids)
    return [t for t in generated if t not in eos]
