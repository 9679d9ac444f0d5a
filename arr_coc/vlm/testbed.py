"""Offline testbed models: a tiny Qwen-VL of each family with random weights.

``build_testbed(dir, family)`` writes a complete checkpoint directory (config,
``model.safetensors``, tokenizer, chat template, image and video processor
configs) with ``save_pretrained``; :func:`arr_coc.vlm.loading.load_vlm` loads it
with ``from_pretrained`` exactly like a real checkpoint, with no network. The
vision tower has the real structure (patch 14 or 16, 2x2 spatial merge, window
attention for Qwen2.5-VL, DeepStack for Qwen3-VL) at toy width, so token grids,
M-RoPE positions and pruning behave as in the real models. The weights come from
a fixed seed: the same family and seed give byte-identical files. The answers are
noise until a trained checkpoint replaces it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import GenerationConfig, Qwen2VLImageProcessor

from arr_coc.vlm.families import Family, family_by_name
from arr_coc.vlm.testbed_tokenizer import build_tokenizer, chat_template

DEFAULT_FAMILY = "qwen2.5-vl"
EMBEDDED = "qwen2.5-vl-vqa"  # the trained testbed shipped in the package: the default model
ASSETS = Path(__file__).resolve().parents[1] / "assets"
EMBEDDED_MODEL = ASSETS / "vqa-testbed"
"""The trained VQA testbed (a tiny Qwen2.5-VL, see its model card ``README.md``)."""
EMBEDDED_SCORER = ASSETS / "vqa-scorer"
"""The relevance scorer trained against :data:`EMBEDDED_MODEL` on the same task."""
MIN_TOKENS = 4  # merged visual tokens of the smallest resized image
MAX_TOKENS = 256  # merged visual tokens of the largest resized image
CONTEXT_LENGTH = 2048
COMPLETE_MARKER = "model.safetensors"

_TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=CONTEXT_LENGTH,
    rms_norm_eps=1e-6,
    initializer_range=0.05,
)


@dataclass(frozen=True)
class TestbedSize:
    """Widths of a testbed model: ``toy`` for the equivalence tests, ``vqa`` for the trained default.

    text_*: the LLM; vision_*: the tower (Qwen2.5-VL layout: windows of 4x4 merged
    tokens, full attention in ``vision_full_blocks``); max_tokens: merged visual
    tokens of the largest resized image.
    """

    text_hidden: int
    text_intermediate: int
    text_layers: int
    vision_hidden: int
    vision_intermediate: int
    vision_depth: int
    vision_heads: int
    vision_full_blocks: tuple[int, ...]
    max_tokens: int


SIZES = {
    "toy": TestbedSize(64, 128, 2, 32, 64, 2, 2, (1,), MAX_TOKENS),
    "vqa": TestbedSize(128, 256, 3, 64, 128, 4, 4, (1, 3), MAX_TOKENS),
}


def _text_config(family: Family, token_ids: dict[str, int], vocab_size: int, size: TestbedSize) -> dict:
    text = dict(
        _TEXT,
        hidden_size=size.text_hidden,
        intermediate_size=size.text_intermediate,
        num_hidden_layers=size.text_layers,
    )
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    pairs = head_dim // 2
    if family.deepstack:
        # Qwen3-VL interleaves the T/H/W frequencies; sections count rotary pairs.
        rope = {
            "rope_type": "default",
            "rope_theta": 5e5,
            "mrope_section": [pairs // 2, pairs // 4, pairs // 4],
            "mrope_interleaved": True,
        }
        extra = {"head_dim": head_dim}
    else:
        third = pairs * 3 // 8
        rope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [pairs - 2 * third, third, third]}
        extra = {}
    return dict(
        text,
        **extra,
        vocab_size=vocab_size,
        rope_parameters=rope,
        bos_token_id=token_ids["<|endoftext|>"],
        eos_token_id=token_ids["<|im_end|>"],
        pad_token_id=token_ids["<|endoftext|>"],
    )


def _vision_config(family: Family, size: TestbedSize) -> dict:
    out = size.text_hidden
    common = dict(patch_size=family.patch_size, spatial_merge_size=2, temporal_patch_size=2, initializer_range=0.05)
    widths = dict(depth=size.vision_depth, num_heads=size.vision_heads)
    if family.name == "qwen2-vl":
        return dict(
            common,
            **widths,
            embed_dim=size.vision_hidden,
            hidden_size=out,
            mlp_ratio=size.vision_intermediate // size.vision_hidden,
        )
    if family.name == "qwen2.5-vl":
        # window of 4x4 merged tokens (112 px); the full-attention blocks see the whole image
        return dict(
            common,
            **widths,
            hidden_size=size.vision_hidden,
            intermediate_size=size.vision_intermediate,
            out_hidden_size=out,
            window_size=4 * 2 * family.patch_size,
            fullatt_block_indexes=list(size.vision_full_blocks),
        )
    return dict(
        common,
        depth=size.vision_depth + 1,
        num_heads=size.vision_heads,
        hidden_size=size.vision_hidden,
        intermediate_size=size.vision_intermediate,
        out_hidden_size=out,
        num_position_embeddings=64,
        deepstack_visual_indexes=[0, 1],
        hidden_act="gelu_pytorch_tanh",
    )


def testbed_processor(family: Family, tokenizer, min_tokens: int = MIN_TOKENS, max_tokens: int = MAX_TOKENS):
    """The family's processor bounded to ``min_tokens``..``max_tokens`` merged visual tokens per image."""
    token_pixels = (2 * family.patch_size) ** 2
    mean_std = {} if family.deepstack is False else {"image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    pixels = dict(min_pixels=min_tokens * token_pixels, max_pixels=max_tokens * token_pixels)
    sizes = dict(patch_size=family.patch_size, merge_size=2, temporal_patch_size=2)
    image_processor = Qwen2VLImageProcessor(**pixels, **sizes, **mean_std)
    video_processor = family.video_processor_cls()(
        **sizes, **mean_std, size={"shortest_edge": pixels["min_pixels"], "longest_edge": pixels["max_pixels"]}
    )
    return family.processor_cls()(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=chat_template(with_default_system=not family.deepstack),
    )


def build_testbed(
    directory: str | Path, family: str = DEFAULT_FAMILY, seed: int = 0, size: str = "toy", words: tuple[str, ...] = ()
) -> Path:
    """Write the tiny ``family`` model of ``size`` (:data:`SIZES`) into ``directory`` (created; files overwritten).

    ``words`` are added to the tokenizer as whole-word tokens (a task's answer
    words). Returns the directory. Deterministic: same arguments, same bytes.
    """
    spec = family_by_name(family)
    shape = SIZES[size]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(words)
    token_ids = {
        t: tokenizer.convert_tokens_to_ids(t)
        for t in tokenizer.all_special_tokens
        + ["<|im_start|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    }
    config = spec.config_cls()(
        text_config=_text_config(spec, token_ids, len(tokenizer), shape),
        vision_config=_vision_config(spec, shape),
        image_token_id=token_ids["<|image_pad|>"],
        video_token_id=token_ids["<|video_pad|>"],
        vision_start_token_id=token_ids["<|vision_start|>"],
        vision_end_token_id=token_ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    config.dtype = torch.float32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = spec.model_cls()(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=token_ids["<|endoftext|>"],
        eos_token_id=[token_ids["<|im_end|>"], token_ids["<|endoftext|>"]],
        pad_token_id=token_ids["<|endoftext|>"],
    )
    model.save_pretrained(directory, safe_serialization=True)
    testbed_processor(spec, tokenizer, max_tokens=shape.max_tokens).save_pretrained(directory)
    return directory


def testbed_source(name: str, root: str | Path | None = None) -> Path:
    """Checkpoint directory of a testbed by name: :data:`EMBEDDED` (shipped, trained) or a family (random, built)."""
    if name == EMBEDDED:
        return EMBEDDED_MODEL
    return ensure_testbed(name, root)


def default_root() -> Path:
    """``$ARR_COC_HOME/testbed`` when set, else ``~/.cache/arr-coc/testbed``."""
    home = os.environ.get("ARR_COC_HOME")
    base = Path(home).expanduser() if home else Path.home() / ".cache" / "arr-coc"
    return base / "testbed"


def ensure_testbed(family: str = DEFAULT_FAMILY, root: str | Path | None = None, seed: int = 0) -> Path:
    """``root/family`` (seed 0) or ``root/family-seed<seed>``, built there first if absent.

    Safe when several processes start at once: each builds into a private
    temporary directory and renames it into place; the first rename wins.
    """
    family_by_name(family)
    root = Path(root) if root is not None else default_root()
    target = root / (family if seed == 0 else f"{family}-seed{seed}")
    if (target / COMPLETE_MARKER).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{family}-", dir=root))
    try:
        build_testbed(staging, family, seed)
        try:
            os.replace(staging, target)
        except OSError:
            if not (target / COMPLETE_MARKER).is_file():
                shutil.rmtree(target, ignore_errors=True)
                os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
