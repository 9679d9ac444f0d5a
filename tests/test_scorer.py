"""Knowing scores, the balancer and RelevanceScorer: ranges, independence, gradients, I/O."""

import json

import pytest
import torch
from batch_contract import assert_kept_match, assert_scores_match

import arr_coc.scorer as scorer_module
from arr_coc.balancing import TensionBalancer
from arr_coc.errors import CheckpointFormatError, ModelNotFoundError
from arr_coc.knowing import appearance, information_score, perspectival_score
from arr_coc.scorer import RelevanceScorer
from arr_coc.texture import texture_array
from testkit.drawing import as_batch, gradient, noise, scene, shapes, text

QUERY_DIM = 24


@pytest.fixture(scope="module")
def images():
    return [scene(224, 168), shapes(224, 168, seed=3), text(224, 168), noise(224, 168), gradient(224, 168)]


@pytest.mark.parametrize("grid", [(6, 8), (12, 16)])
def test_all_scores_in_unit_range(images, grid):
    scorer = RelevanceScorer(QUERY_DIM)
    out = scorer.score(as_batch(*images), grid, torch.randn(len(images), QUERY_DIM))
    for name in ("information", "perspectival", "participatory", "relevance"):
        value = getattr(out, name)
        assert value.shape == (len(images), *grid), name
        assert torch.isfinite(value).all() and value.min() >= 0 and value.max() <= 1, name
    assert torch.allclose(out.weights.sum(dim=1), torch.ones(len(images), *grid))


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_constant_image_gives_finite_scores(value):
    scorer = RelevanceScorer(QUERY_DIM)
    out = scorer.score(torch.full((2, 3, 56, 56), value), (4, 4), torch.zeros(2, QUERY_DIM))
    for name in ("information", "perspectival", "participatory", "relevance"):
        assert torch.isfinite(getattr(out, name)).all(), name
    assert torch.equal(out.information, torch.zeros(2, 4, 4))
    assert torch.equal(out.perspectival, torch.zeros(2, 4, 4))


def test_information_is_higher_on_busy_regions():
    image = as_batch(scene(448, 336))
    half = torch.cat([image[..., :224], torch.rand(1, 3, 336, 224)], dim=-1)
    info = information_score(texture_array(half, (12, 16)))[0]
    assert info[:, 10:].mean() > info[:, :6].mean()


def test_perspectival_finds_the_odd_one_out():
    image = torch.full((1, 3, 112, 112), 0.5)
    image[:, 0, 28:56, 56:84] = 1.0  # one red square on grey
    salience = perspectival_score(texture_array(image, (4, 4)))[0]
    assert salience.argmax() == 1 * 4 + 2


def test_batch_matches_lone_scores_within_tolerance(images):
    scorer = RelevanceScorer(QUERY_DIM).eval()
    for parameter in scorer.parameters():  # trained-like weights, so the learned layers matter
        parameter.data.add_(torch.randn_like(parameter) * 0.2)
    batch = as_batch(*images)
    queries = torch.randn(len(images), QUERY_DIM)
    with torch.inference_mode():
        together = scorer(batch, (6, 8), queries)
        for index in range(len(images)):
            alone = scorer(batch[index : index + 1], (6, 8), queries[index : index + 1])
            assert_scores_match(alone[0], together[index])
            for k in (5, 12, 24):
                kept_alone = torch.sort(torch.topk(alone[0].flatten(), k).indices).values
                kept_together = torch.sort(torch.topk(together[index].flatten(), k).indices).values
                assert_kept_match(alone[0], kept_alone, kept_together)


def test_learned_modules_run_once_per_batch(images):
    scorer = RelevanceScorer(QUERY_DIM).eval()
    calls = {"participatory": 0, "balancer": 0}
    scorer.participatory.register_forward_hook(
        lambda *_: calls.__setitem__("participatory", calls["participatory"] + 1)
    )
    scorer.balancer.mixer.register_forward_hook(lambda *_: calls.__setitem__("balancer", calls["balancer"] + 1))
    with torch.inference_mode():
        scorer(as_batch(*images), (6, 8), torch.randn(len(images), QUERY_DIM))
    assert calls == {"participatory": 1, "balancer": 1}


def test_score_images_groups_sizes_and_keeps_order(images):
    scorer = RelevanceScorer(QUERY_DIM).eval()
    mixed = [as_batch(images[0])[0], as_batch(scene(112, 84))[0], as_batch(images[1])[0]]
    grids = [(6, 8), (3, 4), (6, 8)]
    queries = torch.randn(3, QUERY_DIM)
    calls = []
    scorer.participatory.register_forward_hook(lambda module, args, out: calls.append(tuple(args[0].shape)))
    with torch.inference_mode():
        scored = scorer.score_images(mixed, grids, queries)
        assert [tuple(s.relevance.shape) for s in scored] == grids
        assert sorted(shape[0] for shape in calls) == [1, 2]  # one call per distinct size
        for image, grid, query, scores in zip(mixed, grids, queries, scored):
            assert_scores_match(scorer(image[None], grid, query[None])[0], scores.relevance)
    with pytest.raises(ValueError):
        scorer.score_images(mixed, grids[:2], queries)


def test_known_texture_cells_are_used_instead_of_recomputed(images, monkeypatch):
    scorer = RelevanceScorer(QUERY_DIM).eval()
    mixed = [as_batch(images[0])[0], as_batch(images[1])[0]]
    queries = torch.randn(2, QUERY_DIM)
    with torch.inference_mode():
        fresh = scorer.score_images(mixed, [(6, 8)] * 2, queries)
        known = [fresh[0].texture, None]
        computed = []
        original = scorer_module.texture_array
        monkeypatch.setattr(
            scorer_module, "texture_array", lambda x, *a, **k: computed.append(x.shape[0]) or original(x, *a, **k)
        )
        again = scorer.score_images(mixed, [(6, 8)] * 2, queries, textures=known)
    assert computed == [1], "only the unknown image's texture is computed"
    for a, b in zip(fresh, again):
        assert_scores_match(a.relevance, b.relevance)


def test_query_changes_participatory_score(images):
    scorer = RelevanceScorer(QUERY_DIM)
    batch = as_batch(images[0], images[0])
    out = scorer.score(batch, (6, 8), torch.randn(2, QUERY_DIM, generator=torch.Generator().manual_seed(1)))
    assert not torch.allclose(out.participatory[0], out.participatory[1])


def test_untrained_balancer_weights_are_equal():
    balancer = TensionBalancer(QUERY_DIM)
    scores = torch.rand(3, 3, 5, 7)
    weights = balancer.weights(scores, torch.randn(3, QUERY_DIM))
    assert torch.allclose(weights, torch.full_like(weights, 1 / 3))
    assert torch.allclose(balancer(scores, torch.randn(3, QUERY_DIM)), scores.mean(dim=1), atol=1e-6)


def test_same_seed_same_weights_other_seed_different():
    a, b, c = RelevanceScorer(QUERY_DIM), RelevanceScorer(QUERY_DIM), RelevanceScorer(QUERY_DIM, seed=1)
    for (name, x), y, z in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(x, y), name
    assert any(not torch.equal(x, z) for x, z in zip(a.state_dict().values(), c.state_dict().values()))


def test_gradients_reach_every_learned_parameter(images):
    scorer = RelevanceScorer(QUERY_DIM)
    optimizer = torch.optim.SGD(scorer.parameters(), lr=0.5)
    batch, queries = as_batch(*images[:2]), torch.randn(2, QUERY_DIM)
    target = torch.zeros(2, 6, 8)
    target[:, 2:4, 3:6] = 1.0
    for step in range(2):  # zero-initialized output layers pass gradient back from step 2 on
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy(scorer(batch, (6, 8), queries), target)
        loss.backward()
        optimizer.step()
    for name, parameter in scorer.named_parameters():
        if name.startswith("balancer.explore."):  # fitted to the selection's outcome (test_exploration.py)
            assert parameter.grad is None, name
            continue
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert any(n.startswith("stem.") for n, _ in scorer.named_parameters())
    assert any(n.startswith("participatory.") for n, _ in scorer.named_parameters())
    assert any(n.startswith("balancer.") for n, _ in scorer.named_parameters())


def test_save_load_round_trip(tmp_path, images):
    scorer = RelevanceScorer(QUERY_DIM, hidden=16, seed=7)
    with torch.no_grad():
        for parameter in scorer.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)  # not the seeded init
    scorer.save(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    loaded = RelevanceScorer.load(tmp_path / "ckpt")
    assert loaded.config == scorer.config
    batch, queries = as_batch(*images), torch.randn(len(images), QUERY_DIM)
    with torch.inference_mode():
        assert torch.equal(scorer.eval()(batch, (6, 8), queries), loaded(batch, (6, 8), queries))


def test_load_missing_directory(tmp_path):
    with pytest.raises(ModelNotFoundError):
        RelevanceScorer.load(tmp_path / "absent")


@pytest.mark.parametrize(
    "damage", ["no-weights", "no-config", "bad-json", "wrong-format", "pickle-weights", "wrong-shape"]
)
def test_load_damaged_checkpoint(tmp_path, damage):
    path = RelevanceScorer(QUERY_DIM).save(tmp_path / "ckpt")
    config = json.loads((path / "config.json").read_text())
    if damage == "no-weights":
        (path / "model.safetensors").unlink()
    elif damage == "no-config":
        (path / "config.json").unlink()
    elif damage == "bad-json":
        (path / "config.json").write_text("{not json")
    elif damage == "wrong-format":
        (path / "config.json").write_text(json.dumps({**config, "format": "something-else"}))
    elif damage == "pickle-weights":
        torch.save(RelevanceScorer(QUERY_DIM).state_dict(), path / "model.safetensors")
    elif damage == "wrong-shape":
        (path / "config.json").write_text(json.dumps({**config, "hidden": 8}))
    with pytest.raises(CheckpointFormatError):
        RelevanceScorer.load(path)


def test_query_of_wrong_size_is_refused():
    with pytest.raises(ValueError):
        RelevanceScorer(QUERY_DIM)(torch.rand(1, 3, 56, 56), (2, 2), torch.zeros(1, QUERY_DIM + 1))


def test_score_gives_appearance_cells_and_an_exploration_weight_per_image(images):
    scorer = RelevanceScorer(QUERY_DIM, explore=0.3).eval()
    with torch.inference_mode():
        out = scorer.score(as_batch(*images), (6, 8), torch.randn(len(images), QUERY_DIM))
    assert out.cells.shape == (len(images), 3, 6, 8)
    assert float(out.cells.min()) >= 0.0 and float(out.cells.max()) <= 1.0
    assert torch.equal(out.cells, appearance(out.texture)[:, :3])
    assert out.explore.shape == (len(images),)
    assert torch.allclose(out.explore, torch.full((len(images),), 0.3))  # an untrained head gives its initial weight


def test_exploration_head_reads_the_question(images):
    scorer = RelevanceScorer(QUERY_DIM).eval()
    for parameter in scorer.balancer.explore.parameters():
        parameter.data.add_(torch.randn_like(parameter) * 0.5)
    batch = as_batch(images[0], images[0])
    with torch.inference_mode():
        out = scorer.score(batch, (6, 8), torch.randn(2, QUERY_DIM))
    assert float((out.explore[0] - out.explore[1]).abs()) > 1e-4
    assert bool(((out.explore > 0) & (out.explore < 1)).all())


def test_a_checkpoint_from_before_the_stem_and_the_exploration_head_loads(tmp_path, images):
    legacy = RelevanceScorer(QUERY_DIM, stem_channels=0, explore_head=False, explore=0.4)
    path = legacy.save(tmp_path / "legacy")
    config = json.loads((path / "config.json").read_text())
    for key in ("stem_channels", "stem_pixels_per_cell", "explore_head"):
        del config[key]
    (path / "config.json").write_text(json.dumps(config))
    loaded = RelevanceScorer.load(path)
    assert loaded.stem is None and loaded.balancer.explore is None
    query = torch.randn(1, QUERY_DIM)
    with torch.inference_mode():
        out = loaded.score(as_batch(images[0]), (6, 8), query)
        assert torch.equal(out.relevance, legacy.eval().score(as_batch(images[0]), (6, 8), query).relevance)
    assert torch.allclose(out.explore, torch.tensor([0.4]))  # no head: the constant it was built with


@pytest.mark.parametrize("explore", [0.0, 1.0, -0.5, float("nan")])
def test_an_exploration_weight_outside_the_open_unit_interval_is_refused(explore):
    with pytest.raises(ValueError, match="explore"):
        RelevanceScorer(QUERY_DIM, explore=explore)


def test_a_stem_that_cannot_patchify_is_refused():
    with pytest.raises(ValueError, match="multiple of 4"):
        RelevanceScorer(QUERY_DIM, stem_pixels_per_cell=6)
