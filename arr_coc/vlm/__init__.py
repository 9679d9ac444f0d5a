"""The VLM half of ARR-COC: Qwen-VL loading, offline testbed models, pruned generation.

Public API (imported lazily, so ``arr_coc.vlm.types`` stays light):

- ``VLMPipeline.from_pretrained(model=None, scorer=None, device=None, dtype=None)``;
  ``.answer_batch(requests) -> list[AnswerResult]``, ``.answer(request)``,
  ``.stream(request) -> AnswerStream`` (iterate text deltas, then ``.result``),
  ``.validate(request)``, ``.token_grid(image)``, ``.question_embedding(question)``.
- ``load_vlm(source, device=None, dtype=None) -> LoadedVLM``.
- ``build_testbed(dir, family, seed=0)``, ``ensure_testbed(family, root=None)``.
- ``token_grid(processor, image) -> TokenGrid`` (grid ``(H', W')`` + resized image).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "VLMPipeline": "arr_coc.vlm.pipeline",
    "AnswerStream": "arr_coc.vlm.pipeline",
    "LoadedVLM": "arr_coc.vlm.loading",
    "load_vlm": "arr_coc.vlm.loading",
    "build_testbed": "arr_coc.vlm.testbed",
    "ensure_testbed": "arr_coc.vlm.testbed",
    "TokenGrid": "arr_coc.vlm.grid",
    "token_grid": "arr_coc.vlm.grid",
    "FAMILIES": "arr_coc.vlm.families",
    "AnswerRequest": "arr_coc.vlm.types",
    "AnswerResult": "arr_coc.vlm.types",
    "GenerationParams": "arr_coc.vlm.types",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'arr_coc.vlm' has no attribute {name!r}")
