"""Training examples of the synthetic VQA task, encoded for the VLM in DataLoader workers.

Each :class:`TrainingExample` holds the stock prompt inputs, the answer ids, and what the
generator knows of the scene per merged visual token: probe labels, object owners, the
question's target tokens and, for count questions, the box-centre tokens of the counted objects.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from arr_coc.tasks.shapes_vqa import COLOURS, SHAPES, ShapesVQA, centre_tokens, owner_labels, token_owners
from arr_coc.vlm.grid import merged_grid
from arr_coc.vlm.inputs import EncodedRequest, encode_request


@dataclass
class TrainingExample:
    """One encoded example: the stock prompt inputs plus the answer ids (answer word(s) + end token)."""

    encoded: EncodedRequest
    answer_ids: torch.Tensor  # [A]
    labels: torch.Tensor  # [4, H', W'] per-token colour, shape, centre, same-colour count (see token_labels)
    owners: torch.Tensor  # [H', W'] 1 + index of the object covering each token, 0 on background (token_owners)
    target: torch.Tensor  # [H', W'] bool: the tokens of the object(s) the question is about
    subject_id: int  # token id of the question's subject word (a shape or a colour)
    counted: torch.Tensor | None = None  # [H', W'] bool: box-centre tokens of the counted objects (count questions)


class ExampleSet(torch.utils.data.Dataset):
    """``ShapesVQA`` samples encoded by the VLM's processor (runs in DataLoader workers)."""

    def __init__(self, processor, dataset: ShapesVQA, end_token_id: int, context_length: int) -> None:
        self.processor = processor
        self.dataset = dataset
        self.end_token_id = end_token_id
        self.context_length = context_length

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> TrainingExample:
        sample, scene = self.dataset.sample_and_scene(index)
        encoded = encode_request(self.processor, sample.image, sample.question, self.context_length, 4)
        words = self.processor.tokenizer(sample.answer, add_special_tokens=False)["input_ids"]
        answer = torch.tensor([*words, self.end_token_id], dtype=torch.long)
        grid = merged_grid(encoded.image_grid_thw, int(self.processor.image_processor.merge_size))
        subject = subject_word(sample.question)
        subject_id = self.processor.tokenizer.convert_tokens_to_ids(subject)
        owners = token_owners(scene, grid)
        counted = centre_tokens(scene, grid, subject) if sample.kind == "count" else None
        return TrainingExample(
            encoded, answer, owner_labels(scene, owners), owners, sample.target_mask, subject_id, counted
        )


def subject_word(question: str) -> str:
    """The colour or shape word a task question is about."""
    words = [w.strip("?") for w in question.split()]
    return next(w for w in words if w in COLOURS or w in SHAPES)


def collate_examples(examples: list[TrainingExample]) -> list[TrainingExample]:
    """A batch is the list of its examples (rows differ in length; :func:`answer_rows` pads them)."""
    return examples
