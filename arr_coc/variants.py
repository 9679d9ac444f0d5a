"""Variants: the unit that is served, evaluated and compared.

A variant is a name plus a VLM, a pruning method, a budget, a stage (``post``: select
from the vision tower's outputs; ``pre``: select before the tower, which then runs on
the kept tokens only) and a scorer checkpoint.
``VARIANTS`` is the one registry; W&B runs carry ``Variant.as_config()`` so that
dashboards compare variants on the same metrics. A request may also name a method
and budget directly: :func:`ad_hoc` turns them into a variant named ``method@budget``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from arr_coc.adaptive import AUTO, AutoBudget
from arr_coc.errors import UnknownVariantError
from arr_coc.selection import as_budget, check_method, check_stage, resolve_budget
from arr_coc.vocabulary import PRE_METHODS, PRUNING_METHODS


class Variant(BaseModel):
    """One servable configuration. Empty ``vlm``/``scorer`` mean the deployment's own."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    name: str
    method: str
    budget: int | float | AutoBudget
    stage: str = "post"
    vlm: str = ""
    scorer: str = ""

    @field_validator("method")
    @classmethod
    def _known_method(cls, method: str) -> str:
        return check_method(method)

    @field_validator("budget", mode="before")
    @classmethod
    def _valid_budget(cls, budget):
        budget = as_budget(budget)
        resolve_budget(budget, 1)
        return budget

    @model_validator(mode="after")
    def _valid_stage(self) -> Variant:
        check_stage(self.stage, self.method)
        return self

    def as_config(self, **extra) -> dict:
        """Flat dict for a W&B run config."""
        budget = AUTO if isinstance(self.budget, AutoBudget) else self.budget
        adaptive = self.budget.model_dump() if isinstance(self.budget, AutoBudget) else {}
        return {
            "variant": self.name,
            "method": self.method,
            "budget": budget,
            "stage": self.stage,
            "vlm": self.vlm,
            "scorer": self.scorer,
            **adaptive,
            **extra,
        }


# the fixed budgets of the built-in variants, in percent of the image's visual tokens
PERCENTS = (3, 5, 10, 25, 50)


def _builtin() -> dict[str, Variant]:
    variants = [Variant(name="full", method="none", budget=1.0)]
    for method in PRUNING_METHODS:
        for percent in PERCENTS:
            variants.append(Variant(name=f"{method}-{percent}", method=method, budget=percent / 100))
    for method in PRE_METHODS:  # chosen before the vision tower, which runs on the kept only
        for percent in PERCENTS:
            variants.append(Variant(name=f"{method}-pre-{percent}", method=method, budget=percent / 100, stage="pre"))
    variants.append(
        Variant(name="arr-coc-auto", method="arr-coc", budget=AutoBudget())
    )  # as many as each question needs
    variants.append(Variant(name="arr-coc-pre-auto", method="arr-coc", budget=AutoBudget(), stage="pre"))
    return {v.name: v for v in variants}


VARIANTS: dict[str, Variant] = _builtin()


def get_variant(name: str) -> Variant:
    """The registered variant ``name``; :class:`UnknownVariantError` otherwise."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise UnknownVariantError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}", field="variant") from None


def ad_hoc(method: str, budget: int | float | AutoBudget | str, stage: str = "post") -> Variant:
    """A variant for a request that names its method, budget (and stage) itself (typed errors if bad)."""
    check_method(method)
    budget = as_budget(budget)
    resolve_budget(budget, 1)
    check_stage(stage, method)
    suffix = "" if stage == "post" else f"@{stage}"
    return Variant(name=f"{method}@{budget}{suffix}", method=method, budget=budget, stage=stage)
