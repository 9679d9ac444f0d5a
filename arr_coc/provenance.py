"""Which VLM a relevance scorer was trained for, and the check that it is served beside that one.

A scorer's queries are means of one VLM's input embeddings (DESIGN.md, "Where a
scorer comes from"); beside another VLM the same scorer ranks noise. So a scorer
checkpoint records, in its ``config.json`` under ``trained_for``, a
:class:`ScorerProvenance`:

- ``vlm``: the hub id or path of the VLM it was trained for (for people and error
  messages; never compared);
- ``fingerprint``: ``"sha256:<64 hex digits>"`` of that VLM's input-embedding table
  (compared).

Recording it, wherever a scorer is saved (training, distillation, calibration)::

    from arr_coc.provenance import ScorerProvenance

    record = ScorerProvenance.of(pipeline.vlm)  # a LoadedVLM; or a checkpoint dir / hub id, e.g. "Qwen/Qwen2.5-VL-3B-Instruct"
    scorer.save(out, trained_for=record)  # or: scorer.trained_for = record; scorer.save(out)

:meth:`arr_coc.scorer.RelevanceScorer.load` reads it back into ``scorer.trained_for``
(``None`` for a checkpoint written before records existed: loaded, with a warning
that its VLM is unknown), and :func:`check_scorer_fits` refuses a scorer beside
another VLM with :class:`~arr_coc.errors.ScorerMismatchError`, naming both; the VLM
pipeline, the relevance model and ``arr-coc models import`` call it before anything
is served or stored. :func:`arr_coc.scorer.record_trained_for` adds a record to an
existing checkpoint without touching its weights.

The fingerprint (:func:`embedding_fingerprint`) is sha256 over the table's shape
``(V, D)`` and, for every ``ceil(V / 256)``-th row from row 0 (at most 256 rows, all
``D`` columns), the values rounded to bfloat16 (round to nearest even), as 16-bit
little-endian patterns. Why bfloat16: a table stored in float32 or bfloat16 and
loaded in float32 or bfloat16, on a CPU or a GPU, rounds to the same bfloat16 values,
so every such load of one checkpoint gives one fingerprint, bit for bit, while a
table that was trained further or drawn from another seed gives another. A float16
load of a float32 or bfloat16 checkpoint would round twice and differ, so for a
loaded VLM the rows are read from its checkpoint's safetensors as stored (a few
hundred rows, not the model) whenever its source can be read, and from memory only
otherwise. Rows are sampled, not all read: two tables that differ only in rows the
stride skips share a fingerprint.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from arr_coc.errors import CheckpointFormatError, ModelNotFoundError, ScorerMismatchError
from arr_coc.input_embeddings import open_input_embeddings
from arr_coc.vocabulary import TRAIN_SCORER_COMMAND

FINGERPRINT_ROWS = 256
"""At most this many rows of the input-embedding table enter the fingerprint."""
FINGERPRINT_PATTERN = r"^sha256:[0-9a-f]{64}$"
PACKAGE = Path(__file__).resolve().parent


class ScorerProvenance(BaseModel):
    """The VLM a scorer was trained for: ``vlm`` (id or path, for messages) and ``fingerprint`` (compared)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    vlm: str = Field(..., min_length=1, description="hub id or path of the VLM the scorer was trained for")
    fingerprint: str = Field(
        ..., pattern=FINGERPRINT_PATTERN, description="sha256 of that VLM's input-embedding table (vlm_fingerprint)"
    )

    @classmethod
    def of(cls, model: Any, vlm: str | None = None) -> ScorerProvenance:
        """The record of ``model`` (anything :func:`vlm_fingerprint` takes); ``vlm`` names it (default: its source).

        A bare tensor has no name: pass ``vlm`` with it.
        """
        return cls(vlm=vlm or _name_of(model), fingerprint=vlm_fingerprint(model))

    def short(self) -> str:
        """``vlm (sha256:0123abcd…)``: how messages name it."""
        return f"{self.vlm} (input embeddings {self.fingerprint[:15]}…)"


def embedding_fingerprint(table) -> str:
    """``"sha256:<hex>"`` of an input-embedding table ``[V, D]``: a tensor (any dtype, any device) or a
    safetensors slice (read lazily: only the sampled rows). See the module docstring for the rule."""
    shape = tuple(table.get_shape() if hasattr(table, "get_shape") else table.shape)
    if len(shape) != 2 or min(shape) < 1:
        raise CheckpointFormatError(f"an input-embedding table is [V, D], got shape {shape}", field="model")
    step = math.ceil(shape[0] / FINGERPRINT_ROWS)
    rows = torch.as_tensor(table[::step]).detach().to("cpu").to(torch.bfloat16).contiguous()
    digest = hashlib.sha256(f"arr-coc input embeddings v1 {shape[0]}x{shape[1]} step {step}\n".encode())
    digest.update(rows.view(torch.int16).numpy().astype("<i2").tobytes())
    return f"sha256:{digest.hexdigest()}"


def vlm_fingerprint(model: Any) -> str:
    """The fingerprint of a VLM's input embeddings (identical across fp32/bf16 loads, CPU or GPU).

    ``model``: a :class:`~arr_coc.vlm.loading.LoadedVLM` (read from its checkpoint as
    stored, else from memory), a checkpoint directory or hub id (``str`` / ``Path``:
    read as stored), a transformers model (its ``get_input_embeddings()``), a
    :class:`ScorerProvenance` (its own fingerprint) or the table itself, a tensor ``[V, D]``.
    """
    if isinstance(model, ScorerProvenance):
        return model.fingerprint
    if isinstance(model, torch.Tensor):
        return embedding_fingerprint(model)
    if isinstance(model, (str, Path)):
        with open_input_embeddings(model) as table:
            return embedding_fingerprint(table)
    source = getattr(model, "source", None)
    if source is not None and hasattr(model, "model"):  # a LoadedVLM
        try:
            with open_input_embeddings(source) as table:
                return embedding_fingerprint(table)
        except (ModelNotFoundError, CheckpointFormatError):
            model = model.model
    if hasattr(model, "get_input_embeddings"):
        return embedding_fingerprint(model.get_input_embeddings().weight)
    raise TypeError(f"cannot fingerprint a {type(model).__name__}: pass a LoadedVLM, a checkpoint, a model or a tensor")


def vlm_name(source: str | Path) -> str:
    """How a VLM is named in records and messages: its hub id or path, and a checkpoint shipped in this
    package relative to it (``arr_coc/assets/vqa-testbed``), so a record does not depend on the install."""
    text = str(source)
    if re.match(r"^[\w.-]+:", text):  # a reference such as model-store:<tag>
        return text
    path = Path(text).expanduser()
    if path.exists():
        resolved = path.resolve()
        if resolved.is_relative_to(PACKAGE):
            return str(Path(PACKAGE.name) / resolved.relative_to(PACKAGE))
    return text


def _name_of(model: Any) -> str:
    if isinstance(model, (str, Path)):
        return vlm_name(model)
    if isinstance(model, ScorerProvenance):
        return model.vlm
    source = getattr(model, "source", None) or getattr(model, "name_or_path", None)
    if not source:
        raise ValueError(f"a {type(model).__name__} does not say which VLM it is: pass vlm='<id or path>'")
    return vlm_name(source)


def check_scorer_fits(scorer, model: Any, vlm: str | None = None) -> None:
    """Refuse ``scorer`` beside ``model`` (anything :func:`vlm_fingerprint` takes) when it was trained for another VLM.

    A scorer with no record (``scorer.trained_for is None``: untrained, or an old
    checkpoint) passes. ``vlm`` names ``model`` in the message (default: its source).
    Raises :class:`~arr_coc.errors.ScorerMismatchError` (``field="scorer"``) naming both VLMs.
    """
    record: ScorerProvenance | None = getattr(scorer, "trained_for", None)
    if record is None:
        return
    served = model if isinstance(model, ScorerProvenance) else ScorerProvenance.of(model, vlm)
    if served.fingerprint == record.fingerprint:
        return
    where = getattr(scorer, "checkpoint", None)
    raise ScorerMismatchError(
        f"the scorer{f' at {where}' if where else ''} was trained for the VLM {record.short()}, but it is loaded "
        f"beside {served.short()}: its queries come from another embedding table. Serve it with the VLM it was "
        f"trained for, or train one for this VLM: {TRAIN_SCORER_COMMAND.replace('<id>', served.vlm)}",
        field="scorer",
    )
