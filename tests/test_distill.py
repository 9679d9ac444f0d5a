"""Teacher maps from the VLM itself (attention, attribution), their shards, and the loss a scorer learns them with."""

from __future__ import annotations

import pytest
import torch

from arr_coc.distill.config import distill_config
from arr_coc.distill.maps import Pair, compute_shard, load_teacher_maps, parse_shard, save_shard, shard_path
from arr_coc.distill.teachers import TeacherConfig, layer_range, teacher_map, visual_attention
from arr_coc.errors import InvalidConfigError
from arr_coc.metrics import recall_at_budget
from arr_coc.tasks.shapes_vqa import ShapesVQA
from arr_coc.training.data import processor_grid
from arr_coc.training.loss import soft_ranking, teacher_loss, teacher_top
from arr_coc.vlm.types import AnswerRequest, GenerationParams

FAMILIES = ("qwen2-vl", "qwen2.5-vl", "qwen3-vl")
EARLY = (0.0, 0.25)  # the embedded testbed's question-to-image attention lives in its first layers


@pytest.fixture(scope="module")
def embedded():
    from arr_coc.vlm.pipeline import VLMPipeline

    return VLMPipeline.from_pretrained(None, device="cpu", dtype="float32", decode="eager")


@pytest.fixture(scope="module")
def heldout(embedded):
    return ShapesVQA(12, "heldout", 0, processor_grid(embedded.vlm.processor))


def mean_top_recall(pipeline, dataset, config: TeacherConfig, budget: float = 0.1) -> float:
    recalls = []
    for i in range(len(dataset)):
        sample = dataset[i]
        if not sample.target_mask.any():  # a count of a colour that is not there
            continue
        found = teacher_map(pipeline.vlm, sample.image, sample.question, config)
        flat = found.relevance.flatten()
        k = max(1, round(budget * flat.numel()))
        recalls.append(recall_at_budget(flat.topk(k).indices, sample.target_mask))
    return sum(recalls) / len(recalls)


@pytest.mark.parametrize("teacher", ["attention", "attribution"])
def test_teacher_map_is_a_grid_in_unit_range_explaining_the_models_own_answer(embedded, heldout, teacher) -> None:
    sample = heldout[0]
    config = TeacherConfig(teacher=teacher, answer_tokens=4, layers=EARLY)
    found = teacher_map(embedded.vlm, sample.image, sample.question, config)
    assert found.grid == embedded.token_grid(sample.image).grid and tuple(found.relevance.shape) == found.grid
    assert found.relevance.dtype == torch.float32 and torch.isfinite(found.relevance).all()
    assert float(found.relevance.min()) >= 0.0 and float(found.relevance.max()) == pytest.approx(1.0)
    alone = embedded.answer(
        AnswerRequest(sample.image, sample.question, method="none", budget=1.0, generation=GenerationParams(4))
    )
    assert found.answer_ids[: len(alone.token_ids)] == alone.token_ids  # the all-token greedy answer, EOS kept
    again = teacher_map(embedded.vlm, sample.image, sample.question, config)
    assert torch.equal(again.relevance, found.relevance)


@pytest.mark.parametrize(("teacher", "floor"), [("attention", 0.5), ("attribution", 0.3)])
def test_teachers_find_the_object_the_question_names(embedded, heldout, teacher, floor) -> None:
    # A random 10 % keeps 10 % of the target in expectation; the model's own attention keeps most of it.
    recall = mean_top_recall(embedded, heldout, TeacherConfig(teacher=teacher, answer_tokens=4, layers=EARLY))
    assert recall >= floor, recall


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("teacher", ["attention", "attribution"])
def test_teachers_run_on_every_family(testbed_pipeline, family, teacher) -> None:
    from PIL import Image

    pipeline = testbed_pipeline(family)
    image = Image.new("RGB", (224, 168), (30, 30, 30))
    image.paste((220, 40, 40), (40, 40, 100, 100))
    found = teacher_map(pipeline.vlm, image, "What colour is the square?", TeacherConfig(teacher=teacher))
    assert tuple(found.relevance.shape) == found.grid and torch.isfinite(found.relevance).all()
    assert float(found.relevance.max()) == pytest.approx(1.0) and len(found.answer_ids) >= 1


def test_attention_sinks_get_nothing_and_rows_sum_to_one() -> None:
    attention = torch.tensor([[[0.5, 0.3, 0.1, 0.1]], [[0.7, 0.1, 0.1, 0.1]]])  # [H=2, R=1, N=4]
    norms = torch.tensor([100.0, 1.0, 1.2, 0.9])  # token 0 has a massive activation
    kept = visual_attention(attention, norms, sink_ratio=20.0)
    assert torch.equal(kept[..., 0], torch.zeros(2, 1))
    assert torch.allclose(kept.sum(-1), torch.ones(2, 1))
    assert torch.allclose(kept[0, 0, 1:], torch.tensor([0.6, 0.2, 0.2]))
    no_sink = visual_attention(attention, torch.ones(4), sink_ratio=20.0)
    assert torch.allclose(no_sink, attention / attention.sum(-1, keepdim=True))


def test_layer_range_and_teacher_config_errors() -> None:
    assert list(layer_range((0.25, 0.75), 8)) == [2, 3, 4, 5]
    assert list(layer_range((0.0, 0.01), 8)) == [0]  # at least one layer
    assert list(layer_range((0.99, 1.0), 8)) == [7]
    with pytest.raises(ValueError, match="layers"):
        TeacherConfig(layers=(0.7, 0.2))
    with pytest.raises(ValueError):
        TeacherConfig(teacher="saliency")


def test_shards_cover_the_pairs_once(embedded, heldout, tmp_path) -> None:
    pairs = [Pair(heldout[i].image, heldout[i].question, f"heldout:{i}") for i in range(5)]
    config = TeacherConfig(teacher="attention", answer_tokens=2, layers=EARLY)
    for k in (0, 1):
        records = compute_shard(embedded.vlm, pairs, (k, 2), config, progress=False)
        assert [r.index for r in records] == list(range(k, 5, 2))
        save_shard(records, shard_path(tmp_path, "attention", (k, 2)), config, total=5)
    loaded = load_teacher_maps(tmp_path, "attention", 5)
    assert [r.index for r in loaded] == [0, 1, 2, 3, 4]
    assert [r.question for r in loaded] == [p.question for p in pairs]
    direct = teacher_map(embedded.vlm, pairs[3].image, pairs[3].question, config).relevance
    assert torch.allclose(loaded[3].teacher, direct, atol=1e-3)  # stored as float16
    with pytest.raises(InvalidConfigError, match="computed for 5 pairs"):
        load_teacher_maps(tmp_path, "attention", 6)
    with pytest.raises(InvalidConfigError, match="no attribution teacher shards"):
        load_teacher_maps(tmp_path, "attribution", 5)
    shard_path(tmp_path, "attention", (1, 2)).unlink()
    with pytest.raises(InvalidConfigError, match="miss 2 of 5"):
        load_teacher_maps(tmp_path, "attention", 5)


def test_a_pair_in_two_shards_is_an_error(embedded, heldout, tmp_path) -> None:
    pairs = [Pair(heldout[i].image, heldout[i].question, f"heldout:{i}") for i in range(2)]
    config = TeacherConfig(teacher="attention", answer_tokens=2, layers=EARLY)
    records = compute_shard(embedded.vlm, pairs, (0, 1), config, progress=False)
    save_shard(records, shard_path(tmp_path, "attention", (0, 1)), config, total=2)
    save_shard(records[:1], shard_path(tmp_path, "attention", (0, 2)), config, total=2)
    with pytest.raises(InvalidConfigError, match="in two shards"):
        load_teacher_maps(tmp_path, "attention", 2)


@pytest.mark.parametrize("text", ["2/2", "-1/3", "1", "a/b", "1/0"])
def test_bad_shards_are_config_errors(text) -> None:
    with pytest.raises(InvalidConfigError, match="shard"):
        parse_shard(text)
    with pytest.raises(InvalidConfigError, match="shard"):
        distill_config({"shard": text})
    assert parse_shard("3/4") == (3, 4)


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"images": "a", "questions": "b"}, "not both"),
        ({"self_questions": 3}, "image folder"),
        ({"teacher": "labels", "images": "a"}, "labels"),
        ({"teacher": "saliency"}, "teacher"),
        ({"teacher_layers": [0.6, 0.1]}, "layers"),
    ],
)
def test_bad_distill_configs_name_the_problem(values, match) -> None:
    with pytest.raises(InvalidConfigError, match=match):
        distill_config(values)


def test_teacher_top_and_soft_ranking() -> None:
    teacher = torch.tensor([[[0.0, 0.2], [1.0, 0.5]]])  # [1, 2, 2]
    assert teacher_top(teacher, 0.25).flatten().tolist() == [False, False, True, False]
    assert teacher_top(teacher, 0.3).flatten().tolist() == [False, False, True, True]  # ceil(0.3 * 4) = 2
    agreeing = teacher.clone()
    reversed_ = 1.0 - teacher
    assert float(soft_ranking(agreeing, teacher, 0.1)) < float(soft_ranking(reversed_, teacher, 0.1))
    flat = torch.full_like(teacher, 0.5)
    assert float(soft_ranking(flat, torch.zeros_like(teacher), 0.1)) == 0.0  # a flat teacher orders nothing
    relevance = torch.rand(2, 3, 3, requires_grad=True)
    loss, parts = teacher_loss(relevance.clamp(0.01, 0.99), torch.rand(2, 3, 3), top_share=0.2)
    loss.backward()
    assert set(parts) == {"bce", "rank"} and relevance.grad.abs().sum() > 0


def test_layers_are_chosen_by_answer_fidelity_without_labels(embedded) -> None:
    from arr_coc.distill.layers import choose_layers

    train = ShapesVQA(8, "train", 5, processor_grid(embedded.vlm.processor))
    pairs = [Pair(train[i].image, train[i].question, f"train:{i}") for i in range(len(train))]
    choice = choose_layers(embedded, pairs, TeacherConfig(answer_tokens=4), candidates=[(0.75, 1.0), (0.0, 0.25)])
    assert set(choice.fidelity) == {(0.75, 1.0), (0.0, 0.25)}
    assert all(0.0 <= f <= 1.0 for f in choice.fidelity.values())
    # on the embedded testbed the first layers' attention points at what it answers from, the last ones' does not
    assert choice.layers == (0.0, 0.25) and choice.fidelity[(0.0, 0.25)] > choice.fidelity[(0.75, 1.0)]
    with pytest.raises(InvalidConfigError, match="at least one pair"):
        choose_layers(embedded, [], TeacherConfig())


def test_the_launch_overrides_file_is_a_valid_distill_config() -> None:
    import json
    from pathlib import Path

    overrides = json.loads((Path(__file__).parents[1] / "launch/overrides/distill-scorer.json").read_text())
    config = distill_config(overrides)
    assert (config.teacher, config.teacher_layers, parse_shard(config.shard)) == ("attention", "auto", (0, 8))
