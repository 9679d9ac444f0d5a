"""The names a user types, one list each: the same in the CLI, ``ARR_COC_*`` settings, the HTTP API and W&B.

Selection methods, question kinds, stages, decode modes, testbed families, devices and dtypes. Dtypes
are torch's own names (``float32``, ``bfloat16``, ``float16``); the short forms
(``fp32``, ``bf16``, ``fp16``, ``half``, ``float``) are accepted everywhere and stored
and logged as the long ones. Torch-free: ``arr-coc --help`` imports this module.
"""

from __future__ import annotations

import re
from typing import Literal, get_args

PRUNING_METHODS = ("arr-coc", "uniform", "random", "divprune", "cdpruner")
"""Methods that keep a budget of the visual tokens, ``arr-coc`` first: the built-in variants, the rows of a
quality table and the recall table of scorer training."""
METHODS = ("none", *PRUNING_METHODS)
"""Selection methods: ``none`` keeps every token (``arr_coc.selection.SELECTORS`` holds one selector per name)."""
FEATURE_METHODS = frozenset({"divprune", "cdpruner"})
"""Methods that select from the vision tower's merged features (stage ``post`` only)."""
PRE_METHODS = tuple(method for method in PRUNING_METHODS if method not in FEATURE_METHODS)
"""Pruning methods that can also select before the vision tower (stage ``pre``)."""
QuestionKind = Literal["colour", "shape", "count"]
QUESTION_KINDS: tuple[QuestionKind, ...] = get_args(QuestionKind)
"""What a question of the synthetic VQA task asks for, one per template: a colour, a shape, a count."""
COVERAGE_MEANING = (
    "the share of the question's target tokens to keep, in (0, 1] "
    "(beside a scorer never calibrated: the share of the image's relevance mass)"
)
"""What ``coverage`` means, in every help text (``arr_coc.adaptive`` says how the count follows from it)."""
STAGES = ("post", "pre")
"""Where selection happens: ``post`` on the tower's outputs, ``pre`` on pixels + question before the tower."""
DECODE_MODES = ("auto", "eager", "static", "graph")
TESTBED_FAMILIES = ("qwen2.5-vl-vqa", "qwen2-vl", "qwen2.5-vl", "qwen3-vl")
SCORER_STATES = ("trained", "untrained")
"""A deployment's relevance scorer: ``trained`` (a checkpoint, or the shipped one with the shipped testbed) or
``untrained`` (seeded random weights); the ``scorer`` of answers, ``/v1/models`` and serve runs."""
TRAIN_SCORER_COMMAND = "arr-coc distill-scorer --model <id> --images DIR --out DIR"
"""The one command that trains a scorer for a VLM, taught by that VLM itself on unlabelled images."""

DTYPES = ("auto", "float32", "bfloat16", "float16")
"""``auto`` is bfloat16 on CUDA and float32 elsewhere (CPU bf16 matmuls are slow and inexact)."""
DTYPE_ALIASES = {"fp32": "float32", "float": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
DEVICE_HELP = "auto (cuda when visible, else cpu), cpu, cuda, cuda:N"
DTYPE_HELP = "auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16, float16 (or fp32, bf16, fp16)"
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


class UnknownNameError(ValueError):
    """A device or dtype name outside this vocabulary."""


def dtype_name(text: str) -> str:
    """The canonical dtype name of ``text`` (``"bf16"`` -> ``"bfloat16"``); :class:`UnknownNameError` otherwise."""
    name = str(text).strip().lower()
    name = DTYPE_ALIASES.get(name, name)
    if name not in DTYPES:
        raise UnknownNameError(f"unknown dtype {text!r}; use one of: {DTYPE_HELP}")
    return name


def device_name(text: str) -> str:
    """The canonical device name of ``text`` (``"CUDA:0"`` -> ``"cuda:0"``); :class:`UnknownNameError` otherwise."""
    name = str(text).strip().lower()
    if not _DEVICE.match(name):
        raise UnknownNameError(f"unknown device {text!r}; use one of: {DEVICE_HELP}")
    return name
