"""An A/B split of the requests that name no variant, sticky per caller.

``ARR_COC_TRAFFIC="arr-coc-25=0.5,full=0.5"`` gives each registered variant a
positive weight (weights are normalised, so ``3,1`` and ``0.75,0.25`` are one split).
A caller is placed by a hash of its key, so one caller sees one variant for as long
as the split stands, and changing a weight moves only the callers near a boundary:

- the API key it authenticates with (hashed, never stored or logged),
- else the ``X-Arr-Coc-User`` header,
- else nothing: the request is placed at random.

Requests that name a variant (or an OpenAI ``model``) are served what they name.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from arr_coc.variants import VARIANTS

USER_HEADER = "x-arr-coc-user"


class InvalidTrafficError(ValueError):
    """``ARR_COC_TRAFFIC`` does not parse, names an unknown variant or gives a weight that is not positive."""


@dataclass(frozen=True)
class Arm:
    variant: str
    share: float  # in (0, 1]; the arms' shares sum to 1


@dataclass(frozen=True)
class TrafficSplit:
    """Variants and their shares of the traffic, in the order given."""

    arms: tuple[Arm, ...]

    @classmethod
    def parse(cls, spec: str) -> TrafficSplit | None:
        """``"a=0.5,b=0.5"`` -> the split; ``""`` -> ``None`` (no split: the default variant serves)."""
        entries = [entry.strip() for entry in spec.split(",") if entry.strip()]
        if not entries:
            return None
        weights: dict[str, float] = {}
        for entry in entries:
            name, sep, weight = (part.strip() for part in entry.partition("="))
            if not sep or not name:
                raise InvalidTrafficError(f"traffic entry {entry!r} is not VARIANT=WEIGHT, e.g. arr-coc-25=0.5")
            if name not in VARIANTS:
                raise InvalidTrafficError(
                    f"traffic names unknown variant {name!r}; registered: {', '.join(sorted(VARIANTS))}"
                )
            if name in weights:
                raise InvalidTrafficError(f"traffic names {name!r} twice")
            try:
                value = float(weight)
            except ValueError:
                raise InvalidTrafficError(f"the weight of {name!r} is not a number: {weight!r}") from None
            if not value > 0 or value == float("inf"):
                raise InvalidTrafficError(f"the weight of {name!r} must be a positive number, got {weight!r}")
            weights[name] = value
        total = sum(weights.values())
        return cls(tuple(Arm(name, value / total) for name, value in weights.items()))

    def assign(self, caller: str | None, rng: random.Random | None = None) -> str:
        """The variant of ``caller`` (its key); a random one, by share, for ``None``."""
        point = _unit_point(caller) if caller else (rng or random).random()
        edge = 0.0
        for arm in self.arms:
            edge += arm.share
            if point < edge:
                return arm.variant
        return self.arms[-1].variant  # the last edge may round below 1

    def shares(self) -> dict[str, float]:
        return {arm.variant: arm.share for arm in self.arms}


def _unit_point(key: str) -> float:
    """``key``'s fixed place in [0, 1): the first 8 bytes of its SHA-256."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def caller_key(headers, api_keys: tuple[bytes, ...]) -> str | None:
    """The key a request's caller is placed by: its API key (when keys are on), else ``X-Arr-Coc-User``, else ``None``.

    ``headers``: a case-insensitive mapping (Starlette's ``Headers``).
    """
    if api_keys:
        scheme, _, token = (headers.get("authorization") or "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return "key:" + token.strip()
    user = (headers.get(USER_HEADER) or "").strip()
    return "user:" + user if user else None
