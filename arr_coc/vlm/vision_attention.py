"""One attention call per vision-tower layer, however many images or windows it holds.

The Qwen-VL towers attend within sequences: one per image in full-attention
layers, one per window in Qwen2.5-VL's window layers. Without a flash-attention
package, transformers runs SDPA once per sequence, after a ``.tolist()`` of the
lengths (a host sync) in every layer: at 448x448 a Qwen2.5-VL-3B tower makes 16
windows x 28 layers = 448 small attention calls, and on one H200 it took 41 ms
at every budget, launch-bound (``docs/gpu/gpu_check-2026-11-28-h200.txt``).

Here the sequences of a layer are attended in one SDPA call as a batch
``[N, heads, L_max, head_dim]``: a reshape when they share one length (same-size
images, whole windows), else gathered into a padded batch with a key mask and
scattered back to their packed order. It is registered with transformers'
``AttentionInterface`` under a name containing ``flash``, which is what makes the
towers hand over the packed sequence with its ``cu_seqlens`` (their varlen path)
and compute ``L_max`` once per forward. It is set on the vision config after
loading: at load time transformers would look for a flash kernel by that name.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

PACKED_VISION_ATTENTION = "packed_flash_sdpa"


def packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    cu_seq_lens_q: torch.Tensor | None = None,
    max_length_q: int | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention within each packed sequence, in one SDPA call.

    Args:
        query, key, value: ``[1, heads, T, head_dim]``, the sequences back to back.
        cu_seq_lens_q: ``[N + 1]`` sequence boundaries (0 .. T), the same for keys.
        max_length_q: the longest sequence ``L_max`` (a Python int).

    Returns:
        ``([1, T, heads, head_dim], None)``, the layout of transformers' attention functions.
    """
    if cu_seq_lens_q is None or max_length_q is None:
        raise ValueError("packed vision attention needs cu_seq_lens_q and max_length_q (the varlen call)")
    bounds = cu_seq_lens_q.to(torch.long)
    heads, tokens, head_dim = query.shape[1:]
    sequences, longest = bounds.numel() - 1, int(max_length_q)
    if sequences * longest == tokens:  # all of one length (same-size images, whole windows): a reshape
        batched = [s[0].view(heads, sequences, longest, head_dim).transpose(0, 1) for s in (query, key, value)]
        out = F.scaled_dot_product_attention(*batched, dropout_p=dropout, scale=scaling)  # [N, H, L_max, D]
        return out.permute(0, 2, 1, 3).reshape(1, tokens, heads, head_dim), None
    offsets = torch.arange(longest, device=query.device)
    attendable = offsets[None] < (bounds[1:] - bounds[:-1])[:, None]  # [N, L_max]
    gather = (bounds[:-1, None] + offsets[None]).clamp_max(tokens - 1)  # [N, L_max] token per padded slot
    padded = [s[0][:, gather].transpose(0, 1) for s in (query, key, value)]  # [N, H, L_max, D] each
    out = F.scaled_dot_product_attention(
        *padded, attn_mask=attendable[:, None, None, :], dropout_p=dropout, scale=scaling
    )  # [N, H, L_max, D]
    token = torch.arange(tokens, device=query.device)
    sequence = torch.searchsorted(bounds[1:], token, right=True)  # [T]
    slot = sequence * longest + token - bounds[sequence]  # each token's row in the padded batch
    return out.transpose(1, 2).reshape(sequences * longest, heads, head_dim)[slot].unsqueeze(0), None


AttentionInterface.register(PACKED_VISION_ATTENTION, packed_attention)


def use_packed_vision_attention(tower: torch.nn.Module) -> None:
    """Make a Qwen-VL vision tower (``model.model.visual``) attend with :func:`packed_attention`."""
    tower.config._attn_implementation = PACKED_VISION_ATTENTION


@contextmanager
def vision_attention(tower: torch.nn.Module, implementation: str) -> Iterator[None]:
    """Run a vision tower with another attention implementation (e.g. stock ``sdpa``) inside the block."""
    config = tower.config
    previous = config._attn_implementation
    config._attn_implementation = implementation
    try:
        yield
    finally:
        config._attn_implementation = previous
