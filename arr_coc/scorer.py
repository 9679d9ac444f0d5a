"""RelevanceScorer: texture -> three ways of knowing -> balancing, with safetensors I/O.

``RelevanceScorer(query_dim)(images [B, 3, H, W], grid (H', W'), query_embeds [B, D])``
returns relevance ``[B, H', W']`` in [0, 1], one score per visual token.
:meth:`RelevanceScorer.score` also gives what the ``arr-coc`` selection balances that
relevance against: each token's appearance cell ``[B, 3, H', W']`` and the balancer's
exploration weight ``[B]``. Every
module runs once per batch; nothing crosses images, so an image's scores alone and
in a batch agree within float noise (1e-5), not bitwise: kernels are picked by
batch size. :meth:`RelevanceScorer.score_images` scores images of mixed sizes,
one call per distinct size.

A checkpoint is a directory with ``config.json`` (the constructor arguments, the
calibration for ``auto`` budgets among them, and ``trained_for``: the VLM it was
trained for, see :mod:`arr_coc.provenance`) and ``model.safetensors`` (the
weights); nothing is ever unpickled. Record the VLM when saving:
``scorer.save(path, trained_for=ScorerProvenance.of(vlm))``; a checkpoint without a
record loads with a warning (its VLM is unknown and unchecked).

Why not ``huggingface_hub.PyTorchModelHubMixin``: it writes the same two files, but
its ``from_pretrained`` accepts any ``config.json`` whose keys fit the constructor
and reports a missing or foreign checkpoint as the hub's own exceptions. Here a
checkpoint carries a ``format`` tag and loading raises the library's typed errors
(``ModelNotFoundError``, ``CheckpointFormatError`` with ``field="scorer"``), which
the service and the CLI turn into clear messages; the W&B artifact and the
BentoML model store copy the directory as it is. Adopting the mixin would mean
wrapping its loader in those checks, about what ``load`` is now.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from arr_coc.adaptive import Calibration
from arr_coc.balancing import TensionBalancer
from arr_coc.errors import CheckpointFormatError, ModelNotFoundError
from arr_coc.knowing import (
    ParticipatoryScorer,
    ShapeStem,
    appearance_cells,
    information_score,
    perspectival_score,
)
from arr_coc.provenance import ScorerProvenance
from arr_coc.texture import DEFAULT_PIXELS_PER_CELL, check_images, texture_and_pixels, texture_array

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "arr-coc-relevance-scorer"
TRAINED_FOR = "trained_for"  # the config.json key of the ScorerProvenance record
LEGACY_OPTIONS = {"stem_channels": 0, "explore_head": False}
"""What a checkpoint written before these options existed was built with."""
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScorerConfig:
    """Constructor arguments of :class:`RelevanceScorer`; ``seed`` fixes the initial weights."""

    query_dim: int
    hidden: int = 32
    embed_dim: int = 32
    pixels_per_cell: int = DEFAULT_PIXELS_PER_CELL
    stem_channels: int = 16  # ShapeStem features per token (0: the participatory map reads texture cells only)
    stem_pixels_per_cell: int = 4  # 4: the texture's own working pixels, no second pass over the image
    explore: float = 0.5  # the exploration weight an untrained head gives, and the constant one without a head
    explore_head: bool = True
    seed: int = 0
    calibration_scale: float = 1.0  # Platt scaling of the relevance into target probabilities (arr_coc.adaptive)
    calibration_shift: float = 0.0
    calibration_coverage_table: tuple[tuple[float, float], ...] = ()  # (coverage, threshold) pairs, ascending coverage


@dataclass
class ScorerOutput:
    """Every intermediate of one scoring pass; maps are ``[B, H', W']``."""

    texture: torch.Tensor  # [B, 13, H', W']
    cells: torch.Tensor  # [B, 3, H', W'] appearance, the similarity of arr-coc's coverage term
    explore: torch.Tensor  # [B] exploration weight in [0, 1]
    information: torch.Tensor
    perspectival: torch.Tensor
    participatory: torch.Tensor
    weights: torch.Tensor  # [B, 3, H', W'] mixing weights
    relevance: torch.Tensor
    timings_ms: dict[str, float]


class RelevanceScorer(nn.Module):
    """Scores every visual token of an image against a question, in [0, 1].

    ``trained_for``: the VLM it was trained for (:class:`ScorerProvenance`), ``None`` when
    unknown (a new scorer, or a checkpoint without a record); ``checkpoint``: the
    directory it was loaded from, if any.
    """

    def __init__(self, query_dim: int, **options) -> None:
        super().__init__()
        self.trained_for: ScorerProvenance | None = None
        self.checkpoint: str | None = None
        self.config = ScorerConfig(query_dim=query_dim, **options)
        self.calibrate(
            Calibration(
                scale=self.config.calibration_scale,
                shift=self.config.calibration_shift,
                coverage_table=self.config.calibration_coverage_table,
            )
        )
        config = self.config
        if not 0.0 < config.explore < 1.0:
            raise ValueError(f"explore must be in (0, 1), got {config.explore}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.stem = ShapeStem(config.stem_channels, config.stem_pixels_per_cell) if config.stem_channels else None
            self.participatory = ParticipatoryScorer(query_dim, config.hidden, config.embed_dim, config.stem_channels)
            self.balancer = TensionBalancer(
                query_dim, config.hidden, explore=config.explore if config.explore_head else None
            )

    @property
    def query_dim(self) -> int:
        return self.config.query_dim

    def calibrate(self, calibration: Calibration) -> None:
        """Set how relevance becomes an ``auto`` budget (fitted by ``arr-coc calibrate``); saved with the checkpoint."""
        self.calibration = calibration
        self.config = replace(
            self.config,
            calibration_scale=calibration.scale,
            calibration_shift=calibration.shift,
            calibration_coverage_table=calibration.coverage_table,
        )

    def score(
        self,
        images: torch.Tensor,
        grid: tuple[int, int],
        query_embeds: torch.Tensor,
        texture: torch.Tensor | None = None,
    ) -> ScorerOutput:
        """All stages of scoring ``images [B, 3, H, W]`` (in [0, 1]) on ``grid`` for ``query_embeds [B, D]``.

        ``texture [B, 13, H', W']``, when given, is these images' texture cells computed
        before (e.g. cached); the shape stem still reads ``images``.
        """
        if query_embeds.dim() != 2 or query_embeds.shape != (images.shape[0], self.query_dim):
            raise ValueError(
                f"query_embeds must be [{images.shape[0]}, {self.query_dim}], got {tuple(query_embeds.shape)}"
            )
        timings: dict[str, float] = {}
        start = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal start
            now = time.perf_counter()
            timings[stage] = (now - start) * 1000.0
            start = now

        device = next(self.parameters()).device
        config = self.config
        stem_side = config.stem_pixels_per_cell if self.stem is not None else 0
        pixels = None
        if texture is None:
            texture, pixels = texture_and_pixels(images.to(device), grid, config.pixels_per_cell, stem_side)
        elif stem_side:
            rows, cols = grid
            pixels = F.adaptive_avg_pool2d(
                check_images(images).to(device).float(), (rows * stem_side, cols * stem_side)
            )
        texture = texture.to(device)
        lap("texture")
        information = information_score(texture)
        perspectival = perspectival_score(texture)
        lap("knowing_fixed")
        query_embeds = query_embeds.to(device)
        stem = None if pixels is None else self.stem(pixels.clamp(0.0, 1.0))
        participatory = self.participatory(texture, query_embeds, stem)
        lap("participatory")
        stacked = torch.stack([information, perspectival, participatory], dim=1)
        context = self.balancer.context(stacked, query_embeds)
        weights = self.balancer.weights(stacked, query_embeds, context)
        relevance = (weights * stacked).sum(dim=1)
        if self.balancer.explore is None:
            explore = torch.full((texture.shape[0],), self.config.explore, device=device)
        else:
            explore = self.balancer.exploration(context)
        lap("balancing")
        return ScorerOutput(
            texture,
            appearance_cells(texture),
            explore,
            information,
            perspectival,
            participatory,
            weights,
            relevance,
            timings,
        )

    def forward(self, images: torch.Tensor, grid: tuple[int, int], query_embeds: torch.Tensor) -> torch.Tensor:
        """Relevance ``[B, H', W']`` in [0, 1]."""
        return self.score(images, grid, query_embeds).relevance

    def score_images(
        self,
        images: Sequence[torch.Tensor],
        grids: Sequence[tuple[int, int]],
        query_embeds: torch.Tensor,
        textures: Sequence[torch.Tensor | None] | None = None,
    ) -> list[ScorerOutput]:
        """Scores per image of ``images`` (each ``[3, H_b, W_b]``) for ``query_embeds [B, D]``.

        Images that share a size and a grid are scored in one batched call. ``textures``
        gives known texture cells ``[13, H'_b, W'_b]`` (or ``None``) per image. Returns
        one :class:`ScorerOutput` per image, each map without its batch dimension.
        """
        if not (len(images) == len(grids) == query_embeds.shape[0]):
            raise ValueError(f"{len(images)} images, {len(grids)} grids and {query_embeds.shape[0]} queries")
        device = next(self.parameters()).device
        groups: dict[tuple, list[int]] = {}
        for index, (image, grid) in enumerate(zip(images, grids)):
            groups.setdefault((tuple(image.shape), tuple(grid)), []).append(index)
        textures = [None] * len(images) if textures is None else list(textures)
        scores: list[ScorerOutput | None] = [None] * len(images)
        for (_, grid), members in groups.items():
            batch = torch.stack([images[i] for i in members]).to(device)
            known = [textures[i] for i in members]
            texture = None
            if all(t is not None for t in known):
                texture = torch.stack(known)
            elif any(t is not None for t in known):  # fill the unknown ones, in one call
                missing = [j for j, t in enumerate(known) if t is None]
                filled = texture_array(batch[missing], grid, self.config.pixels_per_cell)
                for j, cells in zip(missing, filled):
                    known[j] = cells
                texture = torch.stack([t.to(device) for t in known])
            out = self.score(batch, grid, query_embeds[members].to(device), texture=texture)
            for i, member in enumerate(members):
                scores[member] = ScorerOutput(
                    out.texture[i],
                    out.cells[i],
                    out.explore[i],
                    out.information[i],
                    out.perspectival[i],
                    out.participatory[i],
                    out.weights[i],
                    out.relevance[i],
                    out.timings_ms,
                )
        return scores

    def save(self, path: str | Path, trained_for: ScorerProvenance | None = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into directory ``path``.

        ``trained_for`` (e.g. ``ScorerProvenance.of(pipeline.vlm)``) records the VLM this
        scorer was trained for and becomes ``self.trained_for``; without it the record
        already held (from :meth:`load`, or set before) is written, or none.
        """
        if trained_for is not None:
            if not isinstance(trained_for, ScorerProvenance):
                raise TypeError(f"trained_for must be a ScorerProvenance, got {type(trained_for).__name__}")
            self.trained_for = trained_for
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        weights = {name: tensor.detach().cpu().contiguous() for name, tensor in self.state_dict().items()}
        save_file(weights, str(path / WEIGHTS_FILE), metadata={"format": FORMAT})
        config = {"format": FORMAT, **asdict(self.config)}
        if self.trained_for is not None:
            config[TRAINED_FOR] = self.trained_for.model_dump()
        (path / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> RelevanceScorer:
        """Load a directory written by :meth:`save`; typed errors for missing or bad files.

        The ``trained_for`` record becomes ``scorer.trained_for``; a malformed one is a
        :class:`CheckpointFormatError`, a missing one a logged warning (unknown VLM).
        """
        path = Path(path)
        if not path.is_dir():
            raise ModelNotFoundError(f"no scorer checkpoint directory at {path}", field="scorer")
        try:
            config = json.loads((path / CONFIG_FILE).read_text())
            known = {f.name for f in fields(ScorerConfig)}
            if not isinstance(config, dict) or config.pop("format", None) != FORMAT:
                raise CheckpointFormatError(f"{path / CONFIG_FILE} is not a relevance-scorer config", field="scorer")
            trained_for = parse_trained_for(config.pop(TRAINED_FOR, None), path / CONFIG_FILE)
            if not known.issuperset(config):
                raise CheckpointFormatError(f"{path / CONFIG_FILE} is not a relevance-scorer config", field="scorer")
            scorer = cls(**{**LEGACY_OPTIONS, **config})
            scorer.load_state_dict(load_file(str(path / WEIGHTS_FILE)), strict=True)
        except CheckpointFormatError:
            raise
        except FileNotFoundError as error:
            raise CheckpointFormatError(
                f"incomplete checkpoint: {error.filename} is missing", field="scorer"
            ) from error
        except (ValueError, SafetensorError, RuntimeError, TypeError, OSError) as error:
            raise CheckpointFormatError(f"unreadable checkpoint at {path}: {error}", field="scorer") from error
        scorer.trained_for, scorer.checkpoint = trained_for, str(path)
        if trained_for is None:
            logger.warning(
                "the scorer at %s does not record the VLM it was trained for (unknown VLM): it is used unchecked; "
                "arr_coc.scorer.record_trained_for adds the record",
                path,
            )
        return scorer.to(device).eval()


def parse_trained_for(record, where: Path) -> ScorerProvenance | None:
    """The ``trained_for`` record of a checkpoint's config (``None``: absent); malformed -> :class:`CheckpointFormatError`."""
    if record is None:
        return None
    try:
        return ScorerProvenance.model_validate(record)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'record'}: {e['msg']}" for e in error.errors())
        raise CheckpointFormatError(
            f"{where} has a malformed '{TRAINED_FOR}' record ({problems}); it must be "
            '{"vlm": "<id or path>", "fingerprint": "sha256:<64 hex digits>"}',
            field="scorer",
        ) from None


def record_trained_for(path: str | Path, trained_for: ScorerProvenance) -> Path:
    """Record in the checkpoint at ``path`` the VLM it was trained for, rewriting only its ``config.json``.

    The weights file is left as it is, and every other config value is kept as
    written, so the scorer scores exactly as before. The checkpoint is loaded first
    (typed errors for a missing or broken one). Returns ``path``.
    """
    path = Path(path)
    RelevanceScorer.load(path)
    config = json.loads((path / CONFIG_FILE).read_text())
    config[TRAINED_FOR] = ScorerProvenance.model_validate(trained_for).model_dump()
    (path / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return path
