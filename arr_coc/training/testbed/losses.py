"""The losses of one training step: the answer's cross-entropy and three hints to the LLM.

The hints come from the generator's target masks. In the first layer, head 0 at the
question's subject word ("star" in "What colour is the star?") should attend to the
target tokens; the subject word's hidden state after that layer should already read out
as the answer (through the model's own final norm and LM head); in the second layer,
head 0 at the answering position should attend to the subject word. The answer needs two
attention hops, and a from-scratch LLM stayed at chance without them. Attention weights
need eager attention in the LLM while training (:data:`arr_coc.training.testbed.model.TRAINING_ATTENTION`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from arr_coc.training.testbed.data import TrainingExample
from arr_coc.vlm.decoding import pad_rows
from arr_coc.vlm.loading import LoadedVLM
from arr_coc.vlm.pruning import encoder_outputs

IGNORE = -100


@dataclass
class StepLosses:
    answer: torch.Tensor  # mean cross-entropy of the answer tokens
    hints: torch.Tensor  # mean of the hints: -log(attention mass on the right tokens), read-out cross-entropy


def step_losses(
    vlm: LoadedVLM,
    rows,
    kept: Sequence[torch.Tensor],
    examples: Sequence[TrainingExample],
) -> StepLosses:
    """Teacher-forced answer loss over the left-padded ``rows`` of ``examples``, and the hints (module docstring).

    ``kept [K_b]`` per row: the raster indices of its kept visual tokens (:func:`arr_coc.training.testbed.rows.answer_rows`).
    """
    batch = pad_rows(rows, vlm.pad_token_id, vlm.device)
    lengths = [int(e.answer_ids.numel()) for e in examples]
    tail = max(lengths)
    output = vlm.model(
        input_ids=batch.input_ids,
        attention_mask=None if bool(batch.attention_mask.all()) else batch.attention_mask,
        position_ids=batch.position_ids,
        mm_encoder_outputs=encoder_outputs(vlm, rows),
        use_cache=False,
        logits_to_keep=tail + 1,
        output_attentions=True,
        output_hidden_states=True,
    )
    logits = output.logits[:, :-1].float()  # [B, tail, V]: position t predicts token t + 1
    labels = torch.full((len(rows), tail), IGNORE, dtype=torch.long, device=vlm.device)
    for b, length in enumerate(lengths):
        labels[b, tail - length :] = batch.input_ids[b, -length:]
    answer = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE)
    hints = []
    first, second = output.attentions[0][:, 0], output.attentions[1][:, 0]  # [B, L, L], head 0
    for b, (example, kept_b, length) in enumerate(zip(examples, kept, lengths)):
        ids = batch.input_ids[b, : batch.input_ids.shape[1] - length]
        subject = torch.nonzero(ids == example.subject_id).flatten()
        if subject.numel() == 0:
            continue
        subject = int(subject[-1])
        answering = ids.numel() - 1
        hints.append(-torch.log(second[b, answering, subject] + 1e-6))
        read_out = vlm.model.lm_head(vlm.model.model.language_model.norm(output.hidden_states[1][b, subject]))
        hints.append(F.cross_entropy(read_out[None].float(), example.answer_ids[:1].to(vlm.device)))
        image_slots = torch.nonzero(ids == vlm.image_token_id).flatten()
        on_target = example.target.flatten()[kept_b]
        if on_target.any():
            hints.append(-torch.log(first[b, subject, image_slots[on_target.to(image_slots.device)]].sum() + 1e-6))
    return StepLosses(answer, torch.stack(hints).mean() if hints else answer.new_zeros(()))
