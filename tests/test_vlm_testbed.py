"""Testbed models and checkpoint loading: deterministic builds, offline loads, typed errors, CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from arr_coc.errors import CheckpointFormatError, ModelNotFoundError, UnsupportedModelError
from arr_coc.vlm.families import FAMILIES
from arr_coc.vlm.loading import load_vlm, parse_dtype, read_family
from arr_coc.vlm.testbed import build_testbed, ensure_testbed
from arr_coc.vlm.testbed_tokenizer import SPECIAL_TOKENS
from arr_coc_cli.main import main

pytestmark = pytest.mark.server

REPO = Path(__file__).resolve().parents[1]


def file_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def test_same_seed_gives_byte_identical_files_across_processes(tmp_path, testbed_dir):
    family = "qwen3-vl"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    code = "import sys; from arr_coc.vlm.testbed import build_testbed; build_testbed(sys.argv[1], sys.argv[2])"
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "other"), family], check=True, env=env, timeout=120)
    first, second = file_bytes(testbed_dir(family)), file_bytes(tmp_path / "other")
    assert {"model.safetensors", "config.json", "tokenizer.json", "processor_config.json"} <= set(first)
    assert first == second


def test_another_seed_gives_other_weights(tmp_path, testbed_dir):
    build_testbed(tmp_path / "seed1", "qwen2.5-vl", seed=1)
    ours = file_bytes(tmp_path / "seed1")
    base = file_bytes(testbed_dir("qwen2.5-vl"))
    assert ours["model.safetensors"] != base["model.safetensors"]
    assert ours["tokenizer.json"] == base["tokenizer.json"]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_loads_back_offline_through_the_real_loader(testbed_dir, family):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    directory = testbed_dir(family)
    assert read_family(directory).name == family
    vlm = load_vlm(directory, device="cpu")
    assert vlm.family.name == family and vlm.dtype == torch.float32
    assert type(vlm.model).__name__ == FAMILIES[family].model_class
    assert vlm.model.config.vision_config.patch_size == FAMILIES[family].patch_size
    tokenizer = vlm.tokenizer
    for token in SPECIAL_TOKENS:
        assert tokenizer.convert_tokens_to_ids(token) != tokenizer.unk_token_id
    assert tokenizer.convert_tokens_to_ids("<|image_pad|>") == vlm.image_token_id
    assert vlm.model.config.text_config.vocab_size == len(tokenizer)
    prompt = vlm.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi?"}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Hi?<|im_end|>\n" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    # any text round-trips through the byte-level tokenizer
    sample = "Wie viele Äpfel? 3 × 🍎"
    assert tokenizer.decode(tokenizer(sample, add_special_tokens=False)["input_ids"]) == sample


def test_ensure_testbed_builds_once(tmp_path, monkeypatch):
    monkeypatch.setenv("ARR_COC_HOME", str(tmp_path))
    path = ensure_testbed("qwen2-vl")
    assert path == tmp_path / "testbed" / "qwen2-vl" and (path / "model.safetensors").is_file()
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert ensure_testbed("qwen2-vl") == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "testbed").iterdir()] == ["qwen2-vl"]  # no staging left behind


def test_missing_directory(tmp_path):
    with pytest.raises(ModelNotFoundError):
        load_vlm(tmp_path / "nothing-here")
    with pytest.raises(ModelNotFoundError, match="config.json"):
        load_vlm(tmp_path)
    with pytest.raises(ModelNotFoundError):  # a hub id that is neither cached nor reachable (offline)
        load_vlm("arr-coc-tests/no-such-model")
    with pytest.raises(ModelNotFoundError, match="hub id"):
        load_vlm("not a path nor an id")


def test_unsupported_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UnsupportedModelError, match="bert"):
        load_vlm(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    with pytest.raises(UnsupportedModelError):
        load_vlm(tmp_path)


def test_weights_must_be_safetensors(tmp_path, testbed_dir):
    directory = tmp_path / "pickled"
    shutil.copytree(testbed_dir("qwen2-vl"), directory)
    (directory / "model.safetensors").unlink()
    with pytest.raises(CheckpointFormatError):
        load_vlm(directory)
    torch.save({"lm_head.weight": torch.zeros(1)}, directory / "pytorch_model.bin")
    with pytest.raises(CheckpointFormatError):
        load_vlm(directory)
    # safetensors that do not cover the model are refused, never completed with random values
    save_file({"unrelated": torch.zeros(1)}, directory / "model.safetensors")
    with pytest.raises(CheckpointFormatError, match="missing"):
        load_vlm(directory)
    save_file({"lm_head.weight": torch.zeros(1)}, directory / "model.safetensors")
    with pytest.raises(CheckpointFormatError):
        load_vlm(directory)


def test_parse_dtype():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert parse_dtype(None, cpu) is torch.float32 and parse_dtype("auto", cuda) is torch.bfloat16
    assert parse_dtype("bf16", cpu) is torch.bfloat16 and parse_dtype("fp32", cuda) is torch.float32
    with pytest.raises(ValueError):
        parse_dtype("int8", cpu)


def test_cli_testbed_build_then_answer_json(tmp_path, capsys, monkeypatch):
    assert main(["testbed", "build", str(tmp_path / "tb"), "--family", "qwen2-vl"]) == 0
    assert (tmp_path / "tb" / "model.safetensors").is_file()
    from testkit.drawing import scene

    scene(160, 120).save(tmp_path / "image.png")
    capsys.readouterr()
    argv = [
        "answer",
        str(tmp_path / "image.png"),
        "Where?",
        "--model",
        str(tmp_path / "tb"),
        "--method",
        "divprune",
        "--budget",
        "3",
        "--max-new-tokens",
        "4",
        "--json",
    ]
    assert main(argv) == 0
    payload = json.loads(capsys.readouterr().out)
    assert set(payload) >= {"answer", "token_ids", "kept_tokens", "total_tokens", "kept", "timings_ms"}
    assert payload["kept_tokens"] == len(payload["kept"]) == 3
    assert payload["total_tokens"] == payload["grid"][0] * payload["grid"][1] > 3
    assert 1 <= len(payload["token_ids"]) <= 4
    assert {"vision", "scoring", "prefill", "decode"} <= set(payload["timings_ms"])
    assert main([*argv, "--decode", "static"]) == 0
    assert json.loads(capsys.readouterr().out)["token_ids"] == payload["token_ids"]
    assert main([*argv, "--stage", "pre"]) == 2, "divprune needs the tower's features"
    assert "stage 'post' only" in capsys.readouterr().err
    pre = [*argv[:6], "uniform", *argv[7:], "--stage", "pre"]
    assert main(pre) == 0 and json.loads(capsys.readouterr().out)["kept_tokens"] == 3
    assert main([*argv, "--decode", "fast"]) == 2
    assert "invalid choice: 'fast'" in capsys.readouterr().err


def test_cli_answer_defaults_to_the_embedded_testbed(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ARR_COC_HOME", str(tmp_path / "home"))
    from testkit.drawing import shapes

    shapes(100, 100).save(tmp_path / "image.png")
    assert main(["answer", str(tmp_path / "image.png"), "What?", "--max-new-tokens", "3", "--stream"]) == 0
    assert not (tmp_path / "home").exists(), "the embedded default ships trained; nothing is built"
    assert "kept" in capsys.readouterr().err
    assert main(["answer", str(tmp_path / "image.png"), "", "--json"]) == 2
    assert "question" in capsys.readouterr().err
