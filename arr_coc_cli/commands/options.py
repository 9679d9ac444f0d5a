"""Argument types shared by the sub-commands; importing this (or building the parser) loads no torch."""

from __future__ import annotations

import argparse

from arr_coc.vocabulary import DEVICE_HELP, DTYPE_HELP, METHODS, device_name, dtype_name


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


def _argument_type(parse):
    """``parse`` as an argparse type: its error message is shown as is."""

    def argument(text: str) -> str:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    argument.__name__ = parse.__name__
    return argument


def add_device(parser: argparse.ArgumentParser, dtype: bool = True) -> None:
    """``--device`` (and ``--dtype``), with the names and defaults of ``ARR_COC_DEVICE`` / ``ARR_COC_DTYPE``."""
    parser.add_argument("--device", type=_argument_type(device_name), default="auto", help=DEVICE_HELP)
    if dtype:
        parser.add_argument("--dtype", type=_argument_type(dtype_name), default="auto", help=DTYPE_HELP)


def add_method(parser: argparse.ArgumentParser, default: str | None, help: str) -> None:
    """``--method``: one of :data:`arr_coc.vocabulary.METHODS`, in every command."""
    parser.add_argument("--method", choices=METHODS, default=default, help=help)
