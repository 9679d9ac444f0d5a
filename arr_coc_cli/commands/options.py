"""Argument types shared by the sub-commands; importing this (or building the parser) loads no torch."""

from __future__ import annotations

import argparse


def parse_budget(text: str) -> int | float | str:
    """``"64"`` -> 64 tokens; ``"0.25"`` -> a quarter of the tokens; ``"auto"`` -> as many as the question needs."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"budget must be an int, a float or 'auto', got {text!r}") from None


def add_wandb_mode(parser: argparse.ArgumentParser) -> None:
    """``--wandb auto|online|offline|off`` of the commands that log a W&B run."""
    parser.add_argument(
        "--wandb",
        default="auto",
        choices=["auto", "online", "offline", "off"],
        help="auto: online with WANDB_API_KEY, else offline (WANDB_MODE wins)",
    )
