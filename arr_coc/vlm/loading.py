"""Loading a Qwen-VL checkpoint (hub id or local directory) with its processor.

Real checkpoints and the offline testbed models go through :func:`load_vlm`, the
same ``AutoConfig`` / ``AutoProcessor`` / ``<Family>ForConditionalGeneration``
``from_pretrained`` calls. Weights are read from safetensors only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoProcessor, PreTrainedModel, ProcessorMixin
from transformers.utils import is_accelerate_available

from arr_coc.errors import CheckpointFormatError, ModelNotFoundError, UnsupportedModelError
from arr_coc.vlm.families import Family, family_of_model_type
from arr_coc.vlm.vision_attention import use_packed_vision_attention
from arr_coc.vocabulary import device_name, dtype_name

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class LoadedVLM:
    """A model ready to answer: ``model`` in eval mode on ``device`` in ``dtype``.

    hidden_size: width ``D`` of the LLM, of its input embeddings and of the merger
        outputs (the query embedding lives in this space).
    context_length: ``max_position_embeddings`` of the LLM, in tokens.
    eos_token_ids: ids that end an answer.
    """

    source: str
    family: Family
    model: PreTrainedModel
    processor: ProcessorMixin
    device: torch.device
    dtype: torch.dtype

    @property
    def config(self):
        return self.model.config

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.text_config.hidden_size)

    @property
    def context_length(self) -> int:
        return int(self.model.config.text_config.max_position_embeddings)

    @property
    def merge_size(self) -> int:
        return int(self.model.config.vision_config.spatial_merge_size)

    @property
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_id)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        ids = self.model.generation_config.eos_token_id
        if ids is None:
            ids = self.tokenizer.eos_token_id
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        return tuple(sorted({int(i) for i in ids}))

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.eos_token_ids[0])


def default_device() -> torch.device:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on CUDA, fp32 elsewhere (CPU bf16 matmuls are slow and inexact)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def parse_device(device: str | torch.device | None) -> torch.device:
    """A name of the vocabulary (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``), a torch device, or ``None`` (auto)."""
    if isinstance(device, torch.device):
        return device
    name = device_name(device or "auto")
    return default_device() if name == "auto" else torch.device(name)


def parse_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """A name of :data:`arr_coc.vocabulary.DTYPES` or an alias (``"bf16"``), a torch dtype, or ``None`` (by device)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = dtype_name(dtype or "auto")
    return default_dtype(device) if name == "auto" else getattr(torch, name)


def resolved_names(device: str | None, dtype: str | None) -> dict[str, str]:
    """``{"device": "cpu", "dtype": "float32"}``: what ``auto`` (or an alias) means on this machine, for run configs."""
    resolved = parse_device(device)
    return {"device": str(resolved), "dtype": str(parse_dtype(dtype, resolved)).removeprefix("torch.")}


def resolve_source(source: str | Path) -> str:
    """A checkpoint directory (checked to hold ``config.json``) or a hub id; :class:`ModelNotFoundError` otherwise."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(f"{path} is a file; a checkpoint is a directory", field="model")
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} has no config.json: not a checkpoint directory", field="model")
        return str(path)
    text = str(source)
    if _HUB_ID.match(text) and not text.startswith((".", "~")):
        return text
    raise ModelNotFoundError(f"no checkpoint directory at {path}, and {text!r} is not a hub id", field="model")


def read_family(source: str | Path) -> Family:
    """The family of the checkpoint at ``source``, from its config alone."""
    resolved = resolve_source(source)
    try:
        config = AutoConfig.from_pretrained(resolved)
    except ValueError as error:
        raise UnsupportedModelError(f"{resolved}: {error}", field="model") from error
    except OSError as error:
        raise ModelNotFoundError(f"cannot read the config of {resolved}: {error}", field="model") from error
    return family_of_model_type(config.model_type)


def load_vlm(
    source: str | Path,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    attn_implementation: str = "sdpa",
) -> LoadedVLM:
    """Load processor and model from a hub id or a local directory.

    Args:
        source: ``owner/name`` hub id (cached or reachable) or a checkpoint directory.
        device: see :func:`parse_device`; default CUDA when available.
        dtype: see :func:`parse_dtype`; default bf16 on CUDA, fp32 on CPU.

    Raises:
        ModelNotFoundError: no such directory, or the hub id cannot be fetched.
        UnsupportedModelError: the config is not Qwen2-VL, Qwen2.5-VL or Qwen3-VL.
        CheckpointFormatError: no safetensors weights, or weights missing or misshapen.
    """
    device = parse_device(device)
    dtype = parse_dtype(dtype, device)
    family = read_family(source)
    resolved = resolve_source(source)
    try:
        processor = AutoProcessor.from_pretrained(resolved)
    except OSError as error:
        raise ModelNotFoundError(f"cannot load the processor of {resolved}: {error}", field="model") from error
    # Straight onto the GPU when accelerate is installed; else load on CPU and move.
    placement = {"device_map": str(device)} if is_accelerate_available() and device.type != "cpu" else {}
    try:
        model, info = family.model_cls().from_pretrained(
            resolved,
            dtype=dtype,
            use_safetensors=True,
            attn_implementation=attn_implementation,
            output_loading_info=True,
            **placement,
        )
    except OSError as error:
        raise CheckpointFormatError(f"no loadable safetensors weights in {resolved}: {error}", field="model") from error
    except RuntimeError as error:  # shape mismatches
        raise CheckpointFormatError(f"weights in {resolved} do not fit its config: {error}", field="model") from error
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        # transformers would fill them with random values; a served model must never be half-loaded
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise CheckpointFormatError(f"weights missing from {resolved}: {shown}", field="model")
    model.to(device)
    model.eval()
    model.requires_grad_(False)
    use_packed_vision_attention(model.model.visual)
    return LoadedVLM(source=str(source), family=family, model=model, processor=processor, device=device, dtype=dtype)
