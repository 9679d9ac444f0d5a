"""A scorer knows its model: the fingerprint of a VLM's input embeddings, the record a checkpoint keeps,
and the refusal to load a scorer beside another VLM (pipeline, relevance model, `models import`)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from arr_coc.errors import CheckpointFormatError, ScorerMismatchError
from arr_coc.input_embeddings import load_input_embeddings
from arr_coc.provenance import ScorerProvenance, check_scorer_fits, embedding_fingerprint, vlm_fingerprint, vlm_name
from arr_coc.scorer import RelevanceScorer, record_trained_for
from arr_coc.vlm.loading import load_vlm
from arr_coc.vlm.testbed import EMBEDDED_MODEL, EMBEDDED_SCORER, ensure_testbed
from testkit.drawing import scene

ROOT = Path(__file__).resolve().parents[1]
WIDTH = 64  # the toy testbeds' hidden size


@pytest.fixture(scope="module")
def seed1(testbed_root):
    """The toy Qwen2.5-VL testbed drawn from another seed: same shapes, other embeddings."""
    return ensure_testbed("qwen2.5-vl", testbed_root, seed=1)


@pytest.fixture()
def scorer_for_seed0(tmp_path, testbed_dir):
    """A scorer checkpoint that records the seed-0 toy Qwen2.5-VL as its VLM."""
    return RelevanceScorer(WIDTH, seed=3).save(tmp_path / "scorer", trained_for=ScorerProvenance.of(testbed_dir()))


def test_fingerprint_is_the_same_for_every_load_of_one_checkpoint(testbed_dir):
    stored = vlm_fingerprint(testbed_dir())
    table = load_input_embeddings(testbed_dir())  # float32, as stored
    assert stored.startswith("sha256:") and len(stored) == 7 + 64
    assert embedding_fingerprint(table) == stored
    assert embedding_fingerprint(table.to(torch.bfloat16)) == stored  # a bf16 load of it
    assert embedding_fingerprint(table.to(torch.bfloat16).float()) == stored
    for dtype in ("float32", "bfloat16"):
        vlm = load_vlm(testbed_dir(), device="cpu", dtype=dtype)
        assert vlm_fingerprint(vlm) == stored  # read from its checkpoint
        assert vlm_fingerprint(vlm.model) == stored  # from the weights in memory
    half = load_vlm(testbed_dir(), device="cpu", dtype="float16")
    assert vlm_fingerprint(half) == stored, "a float16 load is fingerprinted from its checkpoint as stored"


def test_fingerprint_tells_models_apart(testbed_dir, seed1):
    fingerprints = {vlm_fingerprint(path) for path in (testbed_dir(), seed1, testbed_dir("qwen2-vl"), EMBEDDED_MODEL)}
    assert len(fingerprints) == 4
    table = load_input_embeddings(testbed_dir())
    nudged = table.clone()
    nudged[0, 0] += 0.25  # row 0 is always sampled
    assert embedding_fingerprint(nudged) != embedding_fingerprint(table)
    assert embedding_fingerprint(table[:-1]) != embedding_fingerprint(table)  # the shape counts


def test_record_names_the_model_and_survives_save_and_load(tmp_path, testbed_dir):
    record = ScorerProvenance.of(testbed_dir())
    assert record.vlm == str(testbed_dir()) and record.fingerprint == vlm_fingerprint(testbed_dir())
    assert ScorerProvenance.of(EMBEDDED_MODEL).vlm == "arr_coc/assets/vqa-testbed"  # not where it is installed
    assert vlm_name("Qwen/Qwen2.5-VL-3B-Instruct") == "Qwen/Qwen2.5-VL-3B-Instruct"
    with pytest.raises(ValueError, match="vlm="):
        ScorerProvenance.of(torch.zeros(4, 2))  # a bare table has no name
    assert ScorerProvenance.of(torch.zeros(4, 2), vlm="mine").vlm == "mine"

    scorer = RelevanceScorer(WIDTH)
    path = scorer.save(tmp_path / "a", trained_for=record)
    assert json.loads((path / "config.json").read_text())["trained_for"] == record.model_dump()
    loaded = RelevanceScorer.load(path)
    assert loaded.trained_for == record and loaded.checkpoint == str(path)
    again = RelevanceScorer.load(loaded.save(tmp_path / "b"))  # a re-save keeps the record
    assert again.trained_for == record
    with pytest.raises(TypeError):
        scorer.save(tmp_path / "c", trained_for=record.model_dump())


def test_a_checkpoint_without_a_record_loads_with_a_warning(tmp_path, caplog):
    path = RelevanceScorer(WIDTH).save(tmp_path / "old")
    assert "trained_for" not in json.loads((path / "config.json").read_text())
    with caplog.at_level(logging.WARNING, logger="arr_coc.scorer"):
        scorer = RelevanceScorer.load(path)
    assert scorer.trained_for is None
    assert any("unknown VLM" in message and str(path) in message for message in caplog.messages)
    check_scorer_fits(scorer, torch.randn(10, WIDTH), vlm="any")  # unknown: nothing to check against


@pytest.mark.parametrize(
    "record, complaint",
    [
        ("Qwen/Qwen2.5-VL-3B-Instruct", "record"),
        ({"vlm": "x"}, "fingerprint"),
        ({"vlm": "x", "fingerprint": "md5:abc"}, "fingerprint"),
        ({"vlm": "x", "fingerprint": "sha256:" + "0" * 63}, "fingerprint"),
        ({"vlm": "", "fingerprint": "sha256:" + "0" * 64}, "vlm"),
        ({"vlm": "x", "fingerprint": "sha256:" + "0" * 64, "seed": 1}, "seed"),
        (None, None),
    ],
)
def test_a_malformed_record_is_a_clear_error(tmp_path, record, complaint):
    path = RelevanceScorer(WIDTH).save(tmp_path / "ckpt")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "trained_for": record}))
    if complaint is None:  # null is the same as no record
        assert RelevanceScorer.load(path).trained_for is None
        return
    with pytest.raises(CheckpointFormatError, match="malformed 'trained_for' record") as caught:
        RelevanceScorer.load(path)
    assert caught.value.field == "scorer" and complaint in caught.value.detail


def test_record_trained_for_rewrites_only_the_config(tmp_path, testbed_dir):
    path = RelevanceScorer(WIDTH, seed=5).save(tmp_path / "old")
    weights = (path / "model.safetensors").read_bytes()
    before = RelevanceScorer.load(path).eval()
    record_trained_for(path, ScorerProvenance.of(testbed_dir()))
    after = RelevanceScorer.load(path).eval()
    assert (path / "model.safetensors").read_bytes() == weights
    assert after.trained_for == ScorerProvenance.of(testbed_dir())
    images, query = torch.rand(2, 3, 112, 84), torch.randn(2, WIDTH)
    with torch.inference_mode():
        assert torch.equal(before(images, (4, 3), query), after(images, (4, 3), query))


def test_the_shipped_scorer_records_the_shipped_testbed():
    scorer = RelevanceScorer.load(EMBEDDED_SCORER)
    assert scorer.trained_for == ScorerProvenance(
        vlm="arr_coc/assets/vqa-testbed", fingerprint=vlm_fingerprint(EMBEDDED_MODEL)
    )


def test_pipeline_refuses_a_scorer_trained_for_another_vlm(testbed_dir, seed1, scorer_for_seed0):
    from arr_coc.vlm.pipeline import VLMPipeline

    with pytest.raises(ScorerMismatchError) as caught:
        VLMPipeline.from_pretrained(seed1, scorer=scorer_for_seed0, device="cpu", dtype="float32", decode="eager")
    message = str(caught.value)
    assert caught.value.field == "scorer" and caught.value.kind == "scorer_mismatch"
    assert str(testbed_dir()) in message and str(seed1) in message  # both VLMs named
    assert vlm_fingerprint(testbed_dir())[:15] in message and vlm_fingerprint(seed1)[:15] in message
    assert str(scorer_for_seed0) in message and "arr-coc distill-scorer --model" in message
    fitting = VLMPipeline.from_pretrained(
        testbed_dir(), scorer=scorer_for_seed0, device="cpu", dtype="float32", decode="eager"
    )
    assert fitting.scorer.trained_for.vlm == str(testbed_dir())


def test_relevance_model_refuses_a_scorer_trained_for_another_vlm(testbed_dir, seed1, scorer_for_seed0):
    from arr_coc.relevance_model import RelevanceModel

    with pytest.raises(ScorerMismatchError, match="trained for the VLM .* but it is loaded beside"):
        RelevanceModel.from_pretrained(seed1, scorer=scorer_for_seed0, device="cpu")
    model = RelevanceModel.from_pretrained(testbed_dir(), scorer=scorer_for_seed0, device="cpu")
    assert model.provenance == ScorerProvenance.of(testbed_dir())
    assert model.score([scene(112, 84)], ["Where?"])[0].relevance.dim() == 2  # it serves


def test_models_import_refuses_a_scorer_of_another_vlm(tmp_path, seed1, scorer_for_seed0, testbed_dir):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "arr_coc_cli",
            "models",
            "import",
            "--vlm",
            str(seed1),
            "--scorer",
            str(scorer_for_seed0),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2, result.stderr
    assert (
        "trained for the VLM" in result.stderr and str(testbed_dir()) in result.stderr and str(seed1) in result.stderr
    )
    assert not (tmp_path / "bentoml" / "models").exists() or not any((tmp_path / "bentoml" / "models").iterdir())


def test_calibrate_records_the_vlm_of_a_checkpoint_without_one_and_refuses_another(tmp_path):
    from arr_coc_cli.main import main

    width = load_input_embeddings(EMBEDDED_MODEL).shape[1]
    unrecorded = RelevanceScorer(width, seed=2).save(tmp_path / "old")
    assert main(["calibrate", "--scorer", str(unrecorded), "--size", "16", "--seed", "5"]) == 0
    assert RelevanceScorer.load(unrecorded).trained_for == ScorerProvenance.of(EMBEDDED_MODEL)
    elsewhere = RelevanceScorer(width, seed=2).save(
        tmp_path / "other", trained_for=ScorerProvenance(vlm="another/vlm", fingerprint="sha256:" + "0" * 64)
    )
    assert main(["calibrate", "--scorer", str(elsewhere), "--size", "16", "--seed", "5"]) == 2
    assert RelevanceScorer.load(elsewhere).calibration.coverage_table == ()  # nothing written
