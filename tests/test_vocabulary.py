"""One vocabulary: the CLI, the settings, the HTTP API and the W&B run configs take and report the same names."""

from __future__ import annotations

import argparse

import pytest
import torch

from arr_coc.selection import SELECTORS
from arr_coc.settings import Settings
from arr_coc.vlm.loading import parse_device, parse_dtype, resolved_names
from arr_coc.vocabulary import METHODS, STAGES, UnknownNameError, device_name, dtype_name
from arr_coc_cli.main import build_parser
from front.schemas import AnswerRequestBody


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action | None:
    return next((a for a in parser._actions if flag in a.option_strings), None)


def test_dtype_and_device_names_are_canonical_everywhere():
    assert [dtype_name(t) for t in ("bf16", "BFloat16", "fp32", "float", "half", "auto")] == [
        "bfloat16",
        "bfloat16",
        "float32",
        "float32",
        "float16",
        "auto",
    ]
    assert [device_name(t) for t in ("CUDA:1", " cpu ", "auto")] == ["cuda:1", "cpu", "auto"]
    settings = Settings(dtype="bf16", device="CPU")
    assert (settings.dtype, settings.device) == ("bfloat16", "cpu")
    args = build_parser().parse_args(["answer", "x.png", "q", "--dtype", "bf16", "--device", "CUDA:0"])
    assert (args.dtype, args.device) == ("bfloat16", "cuda:0")
    assert parse_dtype("bf16", torch.device("cpu")) is torch.bfloat16 and parse_device("cpu") == torch.device("cpu")
    assert resolved_names("cpu", "fp32") == {"device": "cpu", "dtype": "float32"}
    assert resolved_names("cpu", "auto") == {"device": "cpu", "dtype": "float32"}


def test_every_command_with_a_device_defaults_to_auto_like_the_server():
    with_device = {name: p for name, p in subcommands().items() if option(p, "--device")}
    assert {"answer", "eval", "quality", "train-scorer"} <= set(with_device)
    for name, parser in with_device.items():
        assert option(parser, "--device").default == Settings().device == "auto", name
        if dtype := option(parser, "--dtype"):
            assert dtype.default == Settings().dtype == "auto", name


def test_every_method_option_lists_the_registry():
    assert tuple(SELECTORS) == METHODS
    commands = subcommands()
    for name in ("answer", "eval", "relevance"):
        assert tuple(option(commands[name], "--method").choices) == METHODS, name
    assert tuple(option(commands["quality"], "--methods").choices) == METHODS
    schema = AnswerRequestBody.model_json_schema()["properties"]
    assert tuple(schema["method"]["enum"]) == METHODS
    assert tuple(schema["stage"]["anyOf"][0]["enum"]) == STAGES


@pytest.mark.parametrize("bad", ["int8", "", "bf"])
def test_unknown_dtypes_are_refused_alike(bad, capsys):
    with pytest.raises(UnknownNameError):
        dtype_name(bad)
    with pytest.raises(ValueError, match="unknown dtype"):
        Settings(dtype=bad)
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["answer", "x.png", "q", "--dtype", bad])
    assert exit_.value.code == 2 and "unknown dtype" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "cuda0", ""])
def test_unknown_devices_are_refused_alike(bad, capsys):
    with pytest.raises(UnknownNameError):
        device_name(bad)
    with pytest.raises(ValueError, match="unknown device"):
        Settings(device=bad)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "--device", bad])
    assert "unknown device" in capsys.readouterr().err


def test_relevance_takes_the_feature_methods_from_the_vlm(capsys):
    import json

    from arr_coc.vlm.testbed import EMBEDDED_MODEL
    from arr_coc_cli.main import main

    assert main(["relevance", "--method", "divprune"]) == 2
    assert "divprune selects from the VLM's features: name one with --model" in capsys.readouterr().err
    assert main(["relevance", "--method", "divprune", "--model", str(EMBEDDED_MODEL), "--budget", "5", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["kept_tokens"] == 5 and len(set(shown["kept"])) == 5 and shown["kept"] == sorted(shown["kept"])
