"""Training the VQA testbed: a tiny Qwen2.5-VL learns the synthetic VQA task from scratch.

The model is transformers' own ``Qwen2_5_VLForConditionalGeneration`` built from a
config (``arr_coc.vlm.testbed.build_testbed(size="vqa")``, the testbed tokenizer
extended with the task's answer words) and trained end to end, vision tower
included, with cross-entropy on the answer word and the end token.

The vision tower also gets dense supervision while it trains: a linear probe
(:class:`TokenProbe`, discarded after training) reads the colour, the shape and
"an object's centre is here" of every visual token off the merger outputs, with
labels from the generator (:func:`arr_coc.tasks.shapes_vqa.token_labels`). A
model trained from scratch otherwise has to discover colours and shapes through
a single answer token, which on 2 CPU cores stalls at chance for hundreds of steps.
With ``probe_pre`` the probe also reads the kept tokens of the examples dropped
before the tower, labelled with what those tokens alone can show
(:func:`kept_labels`: the same-colour count counts the objects still visible).

The LLM gets three hints while it trains, from the generator's target masks: in
its first layer, one head at the question's subject word ("star" in "What colour
is the star?") should attend to the visual tokens of the object(s) the question
is about; the subject word's hidden state after that layer should already read
out as the answer (through the model's own final norm and LM head); in its second
layer, one head at the answering position should attend to the subject word.
Without them a from-scratch LLM sits at chance for thousands of steps (the answer
needs two attention hops and a value path through both); with them it learns the
lookup in a few hundred. Attention weights need eager attention in the LLM while
training; the saved model is a stock checkpoint and serves with SDPA. With
``count_hint``, a count question's first-layer hint asks instead for attention shared
evenly between the colour word and the box-centre token of each counted object
(:func:`count_hint_loss`): all of a head's attention on the counted objects averages
them, and the average of two red objects is that of four, so a model hinted that way
counted by the share of the objects that are red. ``count_hint_head`` puts that hint
on another first-layer head than the target hint's: a first-layer query at "red" is
the word's embedding alone, the same in a count question as in a shape question, which
wants all of head 0 on the object.

Every example goes through the serving path's pruned prefill: a random share of
the visual tokens is kept (keep ratio uniform in ``[min_keep, 1]``, a uniformly
random subset), dropped either after the vision tower (``post``: the tower sees
the whole image) or before it (``pre``, a ``pre_share`` of the examples: the tower
runs on the kept patches only, :func:`arr_coc.vlm.pre_encoder.encode_kept`), and
the LLM sees only the kept tokens at their ORIGINAL 3-row M-RoPE positions
(:func:`arr_coc.vlm.pruning.prune_row`), so the model learns to answer from any
subset at either stage without favouring one selection method. A ``target_share``
of the examples instead keeps what a relevance selector keeps at a small budget:
most of the target tokens (each with a probability drawn from [0.6, 1]) and a few
others (a share drawn from [0, ``target_extra``]), from the generator's target
masks, an oracle rather than any one method. Random subsets of 10 % or more never
show the model an answer from a handful of tokens, and counting from them failed
(held-out tokens of the counted colour alone: 0.32 accuracy). ``init`` starts
from a trained checkpoint instead of random weights (fine-tuning). Data comes from
:class:`arr_coc.tasks.shapes_vqa.ShapesVQA` (``train`` split), drawn in a
DataLoader worker while the model trains. Deterministic for a seed on one machine.

No W&B here: the loop reports through a :class:`TestbedLogger`
(``training_hooks.jobs.train_testbed_job`` logs to W&B).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from arr_coc.evaluation import evaluate_variant
from arr_coc.tasks.shapes_vqa import (
    ANSWER_WORDS,
    COLOURS,
    KINDS,
    MAX_OBJECTS,
    SHAPES,
    QuestionKind,
    ShapesVQA,
    centre_tokens,
    owner_labels,
    token_owners,
)
from arr_coc.training.config import validate
from arr_coc.training.data import processor_grid
from arr_coc.training.loop import NullLogger
from arr_coc.variants import get_variant
from arr_coc.vlm.decoding import pad_rows
from arr_coc.vlm.grid import merged_grid
from arr_coc.vlm.growth import Growth, grow_model
from arr_coc.vlm.inputs import EncodedRequest, encode_request
from arr_coc.vlm.loading import LoadedVLM, load_vlm
from arr_coc.vlm.pipeline import VLMPipeline
from arr_coc.vlm.pre_encoder import encode_kept
from arr_coc.vlm.pruning import encode_images, encoder_outputs, full_positions, prune_row
from arr_coc.vlm.testbed import build_testbed

IGNORE = -100


class TrainTestbedConfig(BaseModel):
    """Everything one testbed training run depends on (the W&B run config)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    steps: int = Field(2400, ge=1, description="optimizer steps")
    batch_size: int = Field(24, ge=1, description="examples per step")
    lr: float = Field(2e-3, gt=0, description="AdamW peak learning rate (cosine decay to 5 %)")
    vision_lr_scale: float = Field(1.0, gt=0, description="learning-rate factor of the vision tower")
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(100, ge=0)
    min_keep: float = Field(0.1, gt=0, le=1, description="smallest kept share of visual tokens (augmentation)")
    pre_share: float = Field(0.5, ge=0, le=1, description="share of examples whose tokens are dropped before the tower")
    target_share: float = Field(
        0.0, ge=0, le=1, description="share of examples keeping most target tokens and few others (small budgets)"
    )
    target_extra: float = Field(0.1, ge=0, le=1, description="largest share of non-target tokens those examples keep")
    distractors: bool = Field(
        False, description="those examples take their non-target tokens from the other objects first (look-alikes)"
    )
    kinds: tuple[QuestionKind, ...] = Field(
        KINDS, min_length=1, description="question kinds drawn for training; one listed twice is drawn twice as often"
    )
    balance_counts: bool = Field(False, description="the probe's same-colour count head weighs every count equally")
    freeze_embeddings: bool = Field(
        False, description="keep the input embeddings (the shipped scorer's queries) fixed while fine-tuning"
    )
    init: str = Field("", description="checkpoint to start from (fine-tuning); empty = random weights from seed")
    probe_weight: float = Field(0.5, ge=0, description="weight of the per-token probe loss on the vision tower")
    probe_pre: bool = Field(
        False, description="probe the kept tokens of the examples dropped before the tower too (visible counts)"
    )
    hint_weight: float = Field(0.5, ge=0, description="weight of the LLM's hints (two attention maps, one read-out)")
    count_hint: bool = Field(
        False, description="count questions: the first hint spreads attention over the counted centres and the word"
    )
    count_hint_head: int = Field(
        0, ge=0, description="first-layer head the count hint steers; 0 replaces the target hint, others add to it"
    )
    count_hint_word_weight: float = Field(
        1.0, gt=0, description="the word's share in the count hint, in units of one centre's share"
    )
    count_hint_weight: float = Field(1.0, ge=0, description="the count hint's weight among the LLM's hints")
    seed: int = Field(0, ge=0, description="seeds the initial weights, the data order and the token dropping")
    heldout_size: int = Field(96, ge=1, description="held-out samples answered at each evaluation")
    eval_every: int = Field(400, ge=0, description="steps between held-out evaluations (0 = only at the end)")
    workers: int = Field(1, ge=0, description="DataLoader workers drawing and processing scenes")
    growth: Growth = Field(
        default_factory=Growth, description="larger sizes for the init checkpoint (arr_coc.vlm.growth); 0 keeps"
    )
    device: str = Field(
        "cpu",
        pattern=r"^(cpu|cuda(:\d+)?)$",
        description="where the model trains: cpu, cuda or cuda:N (data is drawn on CPU)",
    )
    stop_after: int = Field(0, ge=0, description="end the run after this many steps, whatever the schedule (0 = steps)")
    time_budget_s: float = Field(
        0.0, ge=0, description="stop early at this many seconds of training (0 = run all steps); see train_testbed"
    )
    out: str = Field("testbed-checkpoint", description="directory of the trained checkpoint")


def train_testbed_config(*layers) -> TrainTestbedConfig:
    """The validated config of defaults < ``layers`` (merged left to right)."""
    return validate(TrainTestbedConfig, *layers)


class TestbedLogger(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...


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


@dataclass
class TestbedResult:
    vlm: LoadedVLM
    losses: list[float] = field(default_factory=list)
    heldout_accuracy: float = float("nan")
    steps: int = 0  # steps taken
    planned_steps: int = 0  # where the cosine decay ends (``config.steps`` unless a time budget planned fewer)


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


class TokenProbe(torch.nn.Module):
    """Linear read-out of each visual token's colour, shape, centre flag and same-colour count from merger
    outputs ``[N, D]`` (the labels of :func:`arr_coc.tasks.shapes_vqa.token_labels`)."""

    def __init__(self, width: int, balance_counts: bool = False) -> None:
        super().__init__()
        self.balance_counts = balance_counts
        self.colour = torch.nn.Linear(width, 1 + len(COLOURS))
        self.shape = torch.nn.Linear(width, 1 + len(SHAPES))
        self.centre = torch.nn.Linear(width, 1)
        self.count = torch.nn.Linear(width, 1 + MAX_OBJECTS)

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Class-balanced loss of one image: ``features [N, D]``, ``labels [4, N]``; object and
        background tokens weigh equally (with ``balance_counts``, each same-colour count does)."""
        features = features.float()
        on_object = labels[0] > 0
        parts = []
        labels = labels.to(features.device)
        for head, target in ((self.colour, labels[0]), (self.shape, labels[1])):
            per_token = F.cross_entropy(head(features), target, reduction="none")
            parts.append(_balanced(per_token, on_object))
        count = F.cross_entropy(self.count(features), labels[3], reduction="none")
        if self.balance_counts:
            parts.append(torch.stack([count[labels[3] == c].mean() for c in labels[3].unique()]).mean())
        else:
            parts.append(_balanced(count, on_object))
        centre = F.binary_cross_entropy_with_logits(self.centre(features)[:, 0], labels[2].float(), reduction="none")
        parts.append(_balanced(centre, labels[2] > 0))
        return sum(parts)


def kept_labels(labels: torch.Tensor, owners: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """``[4, K]``: the probe labels ``labels [4, N]`` of the kept tokens ``kept [K]`` as a tower that saw
    only those tokens can know them: the same-colour count counts the objects still visible (those
    owning at least one kept token, ``owners [N]`` from :func:`token_owners`)."""
    labels = labels[:, kept].clone()
    owners = owners[kept]
    for colour in labels[0].unique().tolist():
        if colour == 0:
            continue
        same = labels[0] == colour
        labels[3, same] = owners[same].unique().numel()
    return labels


def _balanced(per_token: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    means = [per_token[group].mean() for group in (positive, ~positive) if group.any()]
    return sum(means) / len(means)


def _collate(examples: list[TrainingExample]) -> list[TrainingExample]:
    return examples


def random_subset(tokens: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """``[K]`` ascending raster indices of a uniformly random ``ratio`` share of ``tokens`` (at least one)."""
    keep = max(1, round(ratio * tokens))
    return torch.sort(torch.randperm(tokens, generator=generator)[:keep]).values


def target_subset(
    target: torch.Tensor, extra: float, generator: torch.Generator, owners: torch.Tensor | None = None
) -> torch.Tensor:
    """``[K]`` ascending indices: each target of ``target [H', W']`` with a probability drawn from [0.6, 1],
    and a share drawn from [0, ``extra``] of the other tokens (at least one token in all).

    With ``owners [H', W']`` (:func:`token_owners`), those other tokens come from the other objects
    first and from the background only when the objects run out, as a relevance selector that
    cannot tell a look-alike from the asked-for object keeps them (a question about an absent
    colour then shows the model the nearest colours, not random background).
    """
    flat = target.flatten().bool()
    # Three draws per call though two are read: the shipped weights were trained with this stream.
    target_draw, extra_draw, _ = torch.rand(3, generator=generator).tolist()
    targets = torch.nonzero(flat).flatten()
    kept_targets = targets[torch.rand(targets.numel(), generator=generator) < 0.6 + 0.4 * target_draw]
    others = torch.nonzero(~flat).flatten()
    count = round(extra_draw * extra * others.numel())
    if kept_targets.numel() + count == 0:
        count = 1
    order = torch.randperm(others.numel(), generator=generator)
    if owners is not None:
        on_object = owners.flatten()[others[order]] > 0
        order = torch.cat([order[on_object], order[~on_object]])
    kept_others = others[order[:count]]
    return torch.sort(torch.cat([kept_targets, kept_others])).values


def answer_rows(
    vlm: LoadedVLM,
    examples: Sequence[TrainingExample],
    keep_ratios: Sequence[float],
    generator: torch.Generator,
    pre: Sequence[bool] | None = None,
    focused: Sequence[bool] | None = None,
    target_extra: float = 0.1,
    distractors: bool = False,
):
    """Vision (with gradients) for all images, token dropping, pruned rows with their answers.

    Returns ``(rows, kept, features)``: per example an ``LLMRow`` of prompt + answer
    whose kept visual tokens (``kept [K_b]``, raster indices) are a random
    ``keep_ratio`` share at stock positions (or, where ``focused[b]``, a
    :func:`target_subset`), and the merger outputs: of every token ``[N_b, D]``, or
    of the kept tokens only ``[K_b, D]`` for the examples dropped before the tower
    (``pre[b]``).
    """
    pre = [False] * len(examples) if pre is None else list(pre)
    focused = [False] * len(examples) if focused is None else list(focused)
    kept_sets = []
    for example, ratio, focus in zip(examples, keep_ratios, focused):
        tokens = int(example.encoded.image_grid_thw.prod()) // vlm.merge_size**2
        if focus:
            owners = example.owners if distractors else None
            kept_sets.append(target_subset(example.target, target_extra, generator, owners))
        else:
            kept_sets.append(random_subset(tokens, ratio, generator))
    pixels = [e.encoded.pixel_values for e in examples]
    grids = [e.encoded.image_grid_thw for e in examples]
    if any(pre):
        vision = encode_kept(vlm, pixels, grids, [k if p else None for k, p in zip(kept_sets, pre)])
    else:
        vision = encode_images(vlm, pixels, grids)
    rows = []
    for example, image, kept, before in zip(examples, vision, kept_sets, pre):
        e = example.encoded
        ids = torch.cat([e.input_ids, example.answer_ids])
        types = torch.cat([e.mm_token_type_ids, torch.zeros_like(example.answer_ids)])
        positions = full_positions(vlm, ids, types, e.image_grid_thw)
        rows.append(prune_row(ids, positions, types, image, kept, vision_is_kept=before))
    return rows, kept_sets, [image.features for image in vision]


@dataclass
class StepLosses:
    answer: torch.Tensor  # mean cross-entropy of the answer tokens
    hints: torch.Tensor  # mean of the hints: -log(attention mass on the right tokens), read-out cross-entropy


@dataclass(frozen=True)
class CountHint:
    """Where and how strongly a count question's hint applies (``TrainTestbedConfig.count_hint_*``)."""

    head: int = 0  # first-layer head; 0 replaces the target hint, another head adds to it
    word_weight: float = 1.0  # the word's share, in units of one centre's share
    weight: float = 1.0  # the hint's weight among the LLM's hints

    @classmethod
    def from_config(cls, config: TrainTestbedConfig) -> CountHint | None:
        if not config.count_hint:
            return None
        return cls(config.count_hint_head, config.count_hint_word_weight, config.count_hint_weight)


def count_hint_loss(
    attention: torch.Tensor, subject: int, centres: torch.Tensor, word_weight: float = 1.0
) -> torch.Tensor:
    """Cross-entropy of one attention row ``[L]`` against the distribution that gives ``subject``
    ``w / (n + w)`` and each of the ``centres`` positions ``[n]`` (one per counted object, ``n`` may
    be 0) ``1 / (n + w)``, for ``w = word_weight``.

    A softmax head that puts all its mass on the counted objects averages them, and an
    average is the same for 2 objects as for 4. Keeping a share for the subject word
    itself makes the head's output ``(w v_subject + sum of n centre values) / (n + w)``,
    which tells ``n`` apart; the centres' part ``n / (n + w)`` separates 3 from 4 best near
    ``w = 3.5``.
    """
    slots = torch.cat([centres.new_tensor([subject]), centres])
    weights = torch.ones(slots.numel(), device=attention.device)
    weights[0] = word_weight
    return -(weights * torch.log(attention[slots] + 1e-6)).sum() / weights.sum()


def step_losses(
    vlm: LoadedVLM,
    rows,
    kept: Sequence[torch.Tensor],
    examples: Sequence[TrainingExample],
    count_hint: CountHint | None = None,
) -> StepLosses:
    """Teacher-forced answer loss over left-padded rows, and the attention hints (see the module docstring).

    With a ``count_hint``, a count question whose counted centres were all kept gets
    :func:`count_hint_loss` on first-layer head ``count_hint.head``: with head 0 instead of
    the mass on its target tokens, with another head besides it. Head 0's query at a
    colour word cannot tell a count question from a shape question (the first layer
    sees the word's embedding alone), and a shape question wants all of it on the object.
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
    heads = output.attentions[0].shape[1]
    if count_hint and not 0 <= count_hint.head < heads:
        raise ValueError(f"count_hint_head {count_hint.head} is not a head of the first layer (it has {heads})")
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
        if count_hint and example.counted is not None:
            centres = example.counted.flatten()[kept_b].to(image_slots.device)
            if int(centres.sum()) == int(example.counted.sum()):
                counting = output.attentions[0][b, count_hint.head, subject]  # [L]
                hint = count_hint_loss(counting, subject, image_slots[centres], count_hint.word_weight)
                hints.append(count_hint.weight * hint)
                if count_hint.head == 0:
                    continue
        on_target = example.target.flatten()[kept_b]
        if on_target.any():
            hints.append(-torch.log(first[b, subject, image_slots[on_target.to(image_slots.device)]].sum() + 1e-6))
    return StepLosses(answer, torch.stack(hints).mean() if hints else answer.new_zeros(()))


@dataclass
class Plan:
    """The number of steps a run takes: ``config.steps``, or fewer where a time budget says so."""

    steps: int


def schedule(config: TrainTestbedConfig, plan: Plan | None = None):
    """Linear warm-up, then cosine decay to 5 % of the peak at ``plan.steps`` (default ``config.steps``)."""
    plan = plan or Plan(config.steps)

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = min(1.0, (step - config.warmup_steps) / max(1, plan.steps - config.warmup_steps))
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


@torch.no_grad()
def heldout_accuracy(vlm: LoadedVLM, dataset: ShapesVQA, batch_size: int = 16) -> float:
    """Share of ``dataset`` answered right with all visual tokens, through the serving pipeline (greedy)."""
    was_training = vlm.model.training
    vlm.model.eval()
    records = list(
        evaluate_variant(VLMPipeline(vlm), get_variant("full"), dataset, batch_size=batch_size, max_new_tokens=4)
    )
    vlm.model.train(was_training)
    return sum(r.correct for r in records) / len(records)


TRAINING_ATTENTION = {"text_config": "eager", "vision_config": "sdpa", "": "sdpa"}
"""Eager attention in the LLM (its weights feed the attention hints), SDPA in the vision tower."""


def initial_model(
    directory: str | Path, seed: int, init: str = "", growth: Growth | None = None, device: str = "cpu"
) -> LoadedVLM:
    """The model training starts from, on ``device``: checkpoint ``init`` (grown by ``growth``, new weights
    from ``seed``, written to ``directory``), or the untrained VQA testbed (random weights from ``seed``)
    written to ``directory``."""
    growth = growth or Growth()
    if not init:
        build_testbed(directory, "qwen2.5-vl", seed=seed, size="vqa", words=ANSWER_WORDS)
    elif not growth.empty:
        start = load_vlm(init, device="cpu", dtype="float32")
        grow_model(start.model, growth, seed).save_pretrained(directory, safe_serialization=True)
        start.processor.save_pretrained(directory)
    else:
        directory = init
    return load_vlm(directory, device=device, dtype="float32", attn_implementation=TRAINING_ATTENTION)


def train_testbed(
    config: TrainTestbedConfig, logger: TestbedLogger | None = None, progress: bool = True
) -> TestbedResult:
    """Train the VQA testbed for ``config.steps`` steps and save it (model + processor) to ``config.out``.

    With ``config.time_budget_s``, the mean step time of the warm-up's second half
    sets how many steps fit in the budget, and the cosine decay ends there (logged as
    ``train/planned_steps``; replaying that many steps without a budget gives the same
    schedule). A run still past its budget stops at once, whatever the plan: replay
    it with ``steps`` = the planned steps and ``stop_after`` = the steps taken.
    """
    from tqdm.auto import tqdm

    logger = logger or NullLogger()
    out = Path(config.out)
    vlm = initial_model(out, config.seed, config.init, config.growth, config.device)
    model = vlm.model
    model.requires_grad_(True)
    model.train()
    grid_for = processor_grid(vlm.processor)
    train_set = ShapesVQA(config.steps * config.batch_size, "train", config.seed, grid_for, config.kinds)
    heldout = ShapesVQA(config.heldout_size, "heldout", config.seed, grid_for)
    end_id = vlm.tokenizer.convert_tokens_to_ids("<|im_end|>")
    loader = torch.utils.data.DataLoader(
        ExampleSet(vlm.processor, train_set, end_id, vlm.context_length),
        batch_size=config.batch_size,
        shuffle=False,
        num_workers=config.workers,
        collate_fn=_collate,
        persistent_workers=False,
        prefetch_factor=4 if config.workers else None,
    )
    if config.freeze_embeddings:
        model.get_input_embeddings().requires_grad_(False)
    vision = [p for n, p in model.named_parameters() if n.startswith("model.visual.") and p.requires_grad]
    rest = [p for n, p in model.named_parameters() if not n.startswith("model.visual.") and p.requires_grad]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        probe = TokenProbe(vlm.hidden_size, config.balance_counts).to(vlm.device)
    optimizer = torch.optim.AdamW(
        [{"params": rest + list(probe.parameters())}, {"params": vision, "lr": config.lr * config.vision_lr_scale}],
        lr=config.lr,
        weight_decay=config.weight_decay,
        betas=(0.9, 0.98),
    )
    plan = Plan(config.steps)
    stop = config.stop_after or config.steps
    step = 0
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(config, plan))
    generator = torch.Generator().manual_seed(config.seed)
    count_hint = CountHint.from_config(config)
    losses: list[float] = []
    accuracy = float("nan")
    started = time.perf_counter()
    timed_from = max(1, config.warmup_steps // 2)
    timer_start = started
    bar = tqdm(enumerate(loader, start=1), total=config.steps, desc="train-testbed", disable=not progress)
    for step, examples in bar:
        ratios = (config.min_keep + (1 - config.min_keep) * torch.rand(len(examples), generator=generator)).tolist()
        pre = (torch.rand(len(examples), generator=generator) < config.pre_share).tolist()
        focused = (
            (torch.rand(len(examples), generator=generator) < config.target_share).tolist()
            if config.target_share > 0  # no draw otherwise: earlier recipes replay bit for bit
            else None
        )
        rows, kept, features = answer_rows(
            vlm, examples, ratios, generator, pre, focused, config.target_extra, config.distractors
        )
        losses_now = step_losses(vlm, rows, kept, examples, count_hint)
        answer = losses_now.answer
        probed = [
            probe.loss(f, kept_labels(e.labels.flatten(1), e.owners.flatten(), k) if before else e.labels.flatten(1))
            for f, e, k, before in zip(features, examples, kept, pre)
            if config.probe_pre or not before
        ]
        probe_loss = torch.stack(probed).mean() if probed else answer.new_zeros(())
        loss = answer + config.probe_weight * probe_loss + config.hint_weight * losses_now.hints
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = float(torch.nn.utils.clip_grad_norm_([*model.parameters(), *probe.parameters()], 1.0))
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        losses.append(float(answer.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        metrics = {
            "train/loss": losses[-1],
            "train/probe_loss": float(probe_loss.detach()),
            "train/hint_loss": float(losses_now.hints.detach()),
            "train/lr": lr,
            "train/grad_norm": norm,
            "train/elapsed_s": time.perf_counter() - started,
        }
        if step == timed_from:
            timer_start = time.perf_counter()
        if config.time_budget_s and step == max(config.warmup_steps, timed_from + 1):
            elapsed = time.perf_counter() - started
            per_step = (time.perf_counter() - timer_start) / (step - timed_from)
            plan.steps = min(config.steps, step + max(0, int((config.time_budget_s - elapsed) / per_step)))
            bar.total = plan.steps
        metrics["train/planned_steps"] = plan.steps
        out_of_time = bool(config.time_budget_s) and time.perf_counter() - started >= config.time_budget_s
        last = step >= min(stop, plan.steps) or out_of_time
        if last or (config.eval_every and step % config.eval_every == 0):
            accuracy = heldout_accuracy(vlm, heldout)
            metrics["heldout/accuracy"] = accuracy
        logger.log(metrics, step)
        if last:
            break
    model.eval()
    model.requires_grad_(False)
    model.save_pretrained(out, safe_serialization=True)
    vlm.processor.save_pretrained(out)
    return TestbedResult(vlm, losses, accuracy, step, plan.steps)
