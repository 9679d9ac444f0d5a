"""``arr-coc relevance`` end to end, plus the hash query and the heatmap overlay it uses."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from arr_coc.errors import InvalidQuestionError
from arr_coc.heatmap import colorize, legend_height, overlay
from arr_coc.query import hash_embedding
from arr_coc.scorer import RelevanceScorer
from arr_coc_cli.main import main
from testkit.drawing import shapes


def test_default_run_on_the_sample(capsys):
    assert main(["relevance"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("grid 12x16: kept 48 of 192 tokens (arr-coc)")
    assert len(out.strip().splitlines()) == 1 + 12


def test_json_output_with_grid_budget_and_heatmap(tmp_path, capsys):
    image = tmp_path / "shapes.png"
    shapes(224, 168).save(image)
    heatmap = tmp_path / "heat.png"
    code = main(
        [
            "relevance",
            str(image),
            "what is red?",
            "--grid",
            "6",
            "8",
            "--budget",
            "10",
            "--json",
            "--heatmap",
            str(heatmap),
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["grid"] == [6, 8] and result["total_tokens"] == 48 and result["kept_tokens"] == 10
    assert len(result["relevance"]) == 6 and all(len(row) == 8 for row in result["relevance"])
    assert result["kept"] == sorted(result["kept"]) and len(set(result["kept"])) == 10
    assert Image.open(heatmap).size == (224, 168 + legend_height(224))  # legend strip below


def test_trained_scorer_checkpoint_is_used(tmp_path, capsys):
    path = RelevanceScorer(64, seed=5).save(tmp_path / "ckpt")
    main(["relevance", "--scorer", str(path), "--json"])
    with_checkpoint = json.loads(capsys.readouterr().out)["relevance"]
    main(["relevance", "--json"])
    assert json.loads(capsys.readouterr().out)["relevance"] != with_checkpoint


@pytest.mark.parametrize(
    "argv, message",
    [
        (["relevance", "--budget", "0"], "budget"),
        (["relevance", "--budget", "1.5"], "budget"),
        (["relevance", "--method", "best"], "method"),
        (["relevance", "--grid", "0", "3"], "grid"),
        (["relevance", "--grid", "400", "3"], "grid"),
        (["relevance", "/no/such/image.png"], "image"),
        (["relevance", "--scorer", "/no/such/ckpt"], "scorer"),
    ],
)
def test_bad_input_exits_2_with_a_message(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_empty_question_is_refused(capsys):
    assert main(["relevance", "arr_coc/assets/sample.png", "   "]) == 2
    assert "question" in capsys.readouterr().err


def test_console_script_and_module_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "arr_coc_cli", "relevance", "--json"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["grid"] == [12, 16]


def test_model_grid_and_embeddings(testbed_dir, capsys):
    from arr_coc.relevance_model import RelevanceModel

    model = str(testbed_dir("qwen2.5-vl"))
    assert main(["relevance", "--model", model, "--json", "--budget", "0.5"]) == 0
    result = json.loads(capsys.readouterr().out)
    expected = RelevanceModel.from_pretrained(model).score(
        [Image.open("arr_coc/assets/sample.png").convert("RGB")], ["Where is the red house?"]
    )[0]
    assert tuple(result["grid"]) == expected.grid
    assert torch.allclose(torch.tensor(result["relevance"]), expected.relevance, atol=1e-6)
    assert result["kept_tokens"] == round(0.5 * expected.grid[0] * expected.grid[1])
    assert main(["relevance", "--model", model, "--grid", "4", "4"]) == 2
    assert main(["relevance", "--model", "/no/such/model"]) == 2


def test_hash_embedding_is_deterministic_and_unit_norm():
    a, b = hash_embedding("What colour is the ball?", 64), hash_embedding("what colour is the ball", 64)
    assert torch.equal(a, b) and torch.isclose(a.norm(), torch.tensor(1.0))
    assert not torch.equal(a, hash_embedding("Where is the house?", 64))
    with pytest.raises(InvalidQuestionError):
        hash_embedding("", 64)


def test_heatmap_overlay_dims_dropped_tokens():
    image = Image.new("RGB", (40, 20), (200, 200, 200))
    relevance = torch.full((2, 4), 0.5)
    picture = np.asarray(overlay(image, relevance, kept=torch.tensor([0]), legend=False), dtype=float)
    assert picture.shape == (20, 40, 3)
    assert picture[:10, :10].mean() > 2 * picture[10:, 30:].mean()
    assert colorize(np.array([[0.0, 1.0]])).tolist() == [[[0, 0, 4], [252, 255, 164]]]
