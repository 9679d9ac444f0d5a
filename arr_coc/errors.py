"""Typed exceptions of the ARR-COC library.

Every error raised on bad input derives from :class:`ArrCocInputError` and names the
offending ``field`` plus a human ``detail`` (the limit that was broken), so the
service can map it to one JSON body ``{"error", "field", "detail"}`` in one place.
Failures of a model or its files derive from :class:`ArrCocModelError`.
"""

from __future__ import annotations


class ArrCocError(Exception):
    """Base class of every error this library raises on purpose."""

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail if field is None else f"{field}: {detail}")
        self.field = field
        self.detail = detail

    @property
    def kind(self) -> str:
        """Short snake-case name of the error class, e.g. ``invalid_budget``."""
        name = type(self).__name__.removesuffix("Error")
        return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


class ArrCocInputError(ArrCocError, ValueError):
    """The caller passed something outside the documented limits."""


class InvalidImageError(ArrCocInputError):
    """Bytes that do not decode to an image, or an image of unusable size."""


class ImageTooLargeError(InvalidImageError):
    """Image larger than the configured byte or pixel limit (decompression bomb)."""


class InvalidGridError(ArrCocInputError):
    """A visual-token grid that is empty or finer than the image's pixels."""


class InvalidRelevanceError(ArrCocInputError):
    """Appearance cells or an exploration weight, given with a relevance map, that do not fit its grid or range."""


class InvalidBudgetError(ArrCocInputError):
    """A budget that is not an int >= 1 or a finite float in (0, 1]."""


class UnknownMethodError(ArrCocInputError):
    """A pruning method name that the registry does not know."""


class UnknownVariantError(ArrCocInputError):
    """A variant name that the registry does not know."""


class InvalidStageError(ArrCocInputError):
    """A pruning stage other than ``post`` or ``pre``, or ``pre`` with a method that needs the tower's features."""


class InvalidQuestionError(ArrCocInputError):
    """An empty question, or one longer than the model's context allows."""


class InvalidGenerationConfigError(ArrCocInputError):
    """Generation parameters outside their ranges (temperature, top_p, ...)."""


class ArrCocModelError(ArrCocError, RuntimeError):
    """A model or checkpoint could not be loaded or run."""


class ModelNotFoundError(ArrCocModelError):
    """A checkpoint directory or hub id that does not exist (or is unreachable)."""


class UnsupportedModelError(ArrCocModelError):
    """A checkpoint whose ``model_type`` is not a supported Qwen-VL family."""


class MissingChatTemplateError(UnsupportedModelError):
    """A model whose processor has no chat template, asked to write questions (an instruction-tuned one can)."""


class CheckpointFormatError(ArrCocModelError):
    """A scorer checkpoint whose files are missing, not safetensors, or inconsistent."""


class ScorerMismatchError(ArrCocModelError):
    """A scorer checkpoint loaded beside another VLM than the one it was trained for (their input embeddings differ)."""


class UnknownDatasetError(ArrCocInputError):
    """A dataset name (or split) that no loader knows."""


class EmptyDatasetError(ArrCocInputError):
    """A dataset or evaluation limit that would give no samples."""


class NoImagesError(EmptyDatasetError):
    """A folder (or question file) that holds no readable image; ``field`` names the option (``images``)."""


class NoQuestionsError(EmptyDatasetError):
    """A question file, or a model asked to write questions, that gives no usable (image, question) pair."""


class InvalidConfigError(ArrCocInputError):
    """A job config file that does not parse, or parameters outside their ranges."""


class InvalidRecipeError(InvalidConfigError):
    """A recipe whose stages do not chain: an unknown kind, a missing config file, an ``init`` naming no earlier
    stage, or a ``--from`` stage whose input was never made."""


class NoRunsError(ArrCocInputError):
    """A run folder, file or W&B project that holds no readable runs."""
