"""A recipe: the stages that make a model, in order, each a command kind with its own config file.

A recipe file (YAML) holds ``stages``, a list of:

- ``name``: the stage's name; it writes its output to ``OUT/<name>``;
- ``kind``: the command it runs, one of :data:`STAGE_KINDS`;
- ``config``: its config file, relative to the recipe file (the keys of that command's config);
- ``init``: the name of an earlier stage whose output it starts from; what that means depends
  on the kind: the checkpoint a ``train-testbed`` stage fine-tunes (none: random weights),
  the VLM a ``train-scorer`` stage trains a scorer for, the scorer a ``calibrate`` stage
  calibrates (beside the VLM that scorer was trained for).

:func:`load_recipe` checks the chain before anything runs; :func:`plan_stages` resolves it
under an output directory. Problems are :class:`~arr_coc.errors.InvalidRecipeError`
naming the stage's field (``stages.3.kind``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from arr_coc.errors import InvalidConfigError, InvalidRecipeError
from arr_coc.training.config import load_config_file

StageKind = Literal["train-testbed", "train-scorer", "calibrate"]
STAGE_KINDS: tuple[str, ...] = get_args(StageKind)
INIT_KINDS: dict[str, tuple[str | None, ...]] = {
    "train-testbed": (None, "train-testbed"),
    "train-scorer": ("train-testbed",),
    "calibrate": ("train-scorer",),
}
"""The kinds of stage each kind may start from (``None``: no ``init``)."""


class Stage(BaseModel):
    """One stage as the recipe file writes it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., pattern=r"^[a-z0-9][a-z0-9-]*$", description="output directory under OUT")
    kind: str = Field(..., description="the command the stage runs")
    config: str = Field(..., min_length=1, description="config file, relative to the recipe file")
    init: str = Field("", description="an earlier stage whose output this one starts from")

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        if kind not in STAGE_KINDS:
            raise ValueError(f"unknown stage kind {kind!r}; use one of: {', '.join(STAGE_KINDS)}")
        return kind


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stages: list[Stage] = Field(..., min_length=1)


@dataclass(frozen=True)
class PlannedStage:
    """A stage resolved under an output directory: every path it reads and writes."""

    number: int  # 1-based position in the recipe
    name: str
    kind: str
    config: Path
    init: Path | None  # the ``init`` stage's output; None: random weights
    model: Path | None  # calibrate: the VLM its scorer was trained for; otherwise None
    out: Path


def load_recipe(path: str | Path) -> tuple[Recipe, Path]:
    """The checked recipe in ``path`` and the directory its config files are relative to.

    Raises:
        InvalidRecipeError: an unreadable file, an unknown kind, a config file that does not exist,
            a repeated name, or an ``init`` that names no earlier stage of a kind it can start from.
    """
    path = Path(path)
    try:
        values = load_config_file(path)
    except InvalidConfigError as error:
        raise InvalidRecipeError(error.detail, field="recipe") from None
    try:
        recipe = Recipe.model_validate(values)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "recipe"
        raise InvalidRecipeError(first["msg"].removeprefix("Value error, "), field=field) from None
    kinds: dict[str, str] = {}
    for index, stage in enumerate(recipe.stages):
        where = f"stages.{index}"
        if stage.name in kinds:
            raise InvalidRecipeError(f"stage name {stage.name!r} is used twice", field=f"{where}.name")
        if not (path.parent / stage.config).is_file():
            raise InvalidRecipeError(
                f"stage {stage.name!r}: no config file {path.parent / stage.config}", field=f"{where}.config"
            )
        if stage.init and stage.init not in kinds:
            raise InvalidRecipeError(
                f"stage {stage.name!r} starts from {stage.init!r}, which is not an earlier stage", field=f"{where}.init"
            )
        if kinds.get(stage.init) not in INIT_KINDS[stage.kind]:
            wanted = " or ".join("nothing" if k is None else f"a {k} stage" for k in INIT_KINDS[stage.kind])
            raise InvalidRecipeError(f"a {stage.kind} stage starts from {wanted}", field=f"{where}.init")
        kinds[stage.name] = stage.kind
    return recipe, path.parent


def plan_stages(recipe: Recipe, config_dir: Path, out: str | Path, start: str | None = None) -> list[PlannedStage]:
    """The stages from ``start`` (default: the first) to the last, resolved under ``out``."""
    out = Path(out)
    by_name = {stage.name: stage for stage in recipe.stages}
    planned = []
    for number, stage in enumerate(recipe.stages, start=1):
        model = None
        if stage.kind == "calibrate":
            model = out / by_name[stage.init].init
        planned.append(
            PlannedStage(
                number=number,
                name=stage.name,
                kind=stage.kind,
                config=config_dir / stage.config,
                init=out / stage.init if stage.init else None,
                model=model,
                out=out / stage.name,
            )
        )
    if start is None:
        return planned
    names = [stage.name for stage in planned]
    if start not in names:
        raise InvalidRecipeError(f"no stage named {start!r}; the stages are {', '.join(names)}", field="from")
    return planned[names.index(start) :]


def check_inputs(stages: list[PlannedStage]) -> None:
    """Raise :class:`~arr_coc.errors.InvalidRecipeError` if a stage reads an output that no earlier planned
    stage makes and that is not there already (``--from`` past a stage that never ran)."""
    made: set[Path] = set()
    for stage in stages:
        for path in (stage.init, stage.model):
            if path is not None and path not in made and not path.is_dir():
                raise InvalidRecipeError(
                    f"stage {stage.name!r} reads {path}, which does not exist: run the recipe from {path.name!r}",
                    field="from",
                )
        made.add(stage.out)
