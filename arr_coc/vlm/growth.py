"""Growing a trained Qwen2.5-VL into a larger one that computes the same function.

A fine-tune that needs more capacity than a checkpoint has, but must keep its input
embeddings (the shipped relevance scorer's queries are those embeddings), cannot
change the hidden size. It can add depth and MLP width: :func:`grow_model` appends
LLM layers and vision blocks whose output projections are zero (each is the identity
on the residual stream) and widens MLPs with new hidden units whose output columns
are zero. The grown model answers exactly as the original until training moves the
new weights; their other weights are drawn from the config's initialiser.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from arr_coc.errors import InvalidConfigError

ZERO_OUTPUTS = ("self_attn.o_proj.", "mlp.down_proj.", "attn.proj.")
"""Output projections of a new layer or block (LLM attention, both MLPs, vision attention)."""


class Growth(BaseModel):
    """Target sizes; 0 keeps a size as it is. A size below the model's own is an error."""

    model_config = ConfigDict(extra="forbid")

    llm_layers: int = Field(0, ge=0, description="decoder layers of the LLM")
    llm_mlp: int = Field(0, ge=0, description="MLP width of every LLM layer")
    vision_depth: int = Field(0, ge=0, description="blocks of the vision tower")
    vision_mlp: int = Field(0, ge=0, description="MLP width of every vision block")

    @property
    def empty(self) -> bool:
        return not (self.llm_layers or self.llm_mlp or self.vision_depth or self.vision_mlp)


def grown_config(config, growth: Growth):
    """A copy of a Qwen2.5-VL ``config`` with the sizes of ``growth``.

    New vision blocks alternate windowed and full attention, the last one full.

    Raises:
        InvalidConfigError: a size smaller than the config's own.
    """
    text, vision = config.text_config, config.vision_config
    wanted = {
        "llm_layers": (growth.llm_layers, text.num_hidden_layers),
        "llm_mlp": (growth.llm_mlp, text.intermediate_size),
        "vision_depth": (growth.vision_depth, vision.depth),
        "vision_mlp": (growth.vision_mlp, vision.intermediate_size),
    }
    for name, (size, current) in wanted.items():
        if size and size < current:
            raise InvalidConfigError(f"{name}={size} would shrink the model (it has {current})", field=name)
    grown = config.__class__.from_dict(config.to_dict())
    text, vision = grown.text_config, grown.vision_config
    if growth.llm_layers:
        text.layer_types = list(text.layer_types) + [text.layer_types[-1]] * (growth.llm_layers - len(text.layer_types))
        text.num_hidden_layers = growth.llm_layers
    text.intermediate_size = growth.llm_mlp or text.intermediate_size
    vision.intermediate_size = growth.vision_mlp or vision.intermediate_size
    if growth.vision_depth:
        new = range(vision.depth, growth.vision_depth)
        full = [i for i in new if (growth.vision_depth - 1 - i) % 2 == 0]
        vision.fullatt_block_indexes = list(vision.fullatt_block_indexes) + full
        vision.depth = growth.vision_depth
    return grown


@torch.no_grad()
def grow_model(model: torch.nn.Module, growth: Growth, seed: int) -> torch.nn.Module:
    """A larger copy of ``model`` (any ``Qwen2_5_VLForConditionalGeneration``) that computes the same outputs.

    Weights of the same name and shape are copied; a widened weight keeps the old
    values in its leading block (new MLP units: random inputs, zero outputs); new
    layers and blocks are random with zero output projections. ``seed`` draws the
    new weights.
    """
    config = grown_config(model.config, growth)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        grown = model.__class__(config)
    grown.to(dtype=next(model.parameters()).dtype)
    old = model.state_dict()
    for name, weight in grown.state_dict().items():
        if name in old:
            source = old[name]
            if source.shape != weight.shape:
                if name.endswith("down_proj.weight"):
                    weight[:, source.shape[1] :] = 0
                weight[tuple(slice(0, n) for n in source.shape)] = source
            else:
                weight.copy_(source)
        elif any(part in name for part in ZERO_OUTPUTS):
            weight.zero_()
    grown.generation_config = model.generation_config
    return grown
