"""`arr-coc train-testbed`: the VQA testbed trains from scratch through the pruned-prefill path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from wandb_jobs import arr_coc, offline_env

from arr_coc.errors import InvalidConfigError
from arr_coc.synthetic import patch_grid
from arr_coc.tasks.shapes_vqa import COLOURS, SHAPES, ShapesVQA, centre_tokens, token_labels, token_owners
from arr_coc.training.testbed import (
    ExampleSet,
    TrainTestbedConfig,
    answer_rows,
    initial_model,
    train_testbed,
    train_testbed_config,
)
from arr_coc.training.testbed.data import subject_word
from arr_coc.training.testbed.losses import step_losses
from arr_coc.training.testbed.probe import TokenProbe, kept_labels
from arr_coc.training.testbed.schedule import Plan, schedule
from arr_coc.training.testbed.subsets import target_subset
from arr_coc.vlm.loading import load_vlm
from training_hooks.comparison.runfile import find_run_files, read_run

pytestmark = pytest.mark.slow


def test_token_labels_describe_what_each_token_shows() -> None:
    sample, scene = ShapesVQA(4, "train", seed=2).sample_and_scene(1)
    grid = patch_grid(28)(*scene.image.size)
    labels = token_labels(scene, grid)
    assert labels.shape == (4, *grid)
    assert int(labels[2].sum()) == len(scene.objects), "one centre token per object"
    colours = {int(c) for c in labels[0].unique()} - {0}
    assert colours == {1 + list(COLOURS).index(o.colour) for o in scene.objects}
    shapes = {int(s) for s in labels[1].unique()} - {0}
    assert shapes <= {1 + SHAPES.index(o.shape) for o in scene.objects}
    on_object = labels[0] > 0
    assert ((labels[1] > 0) == on_object).all() and ((labels[3] > 0) == on_object).all()
    for obj in scene.objects:
        same = sum(o.colour == obj.colour for o in scene.objects)
        colour_cells = labels[0] == 1 + list(COLOURS).index(obj.colour)
        assert (labels[3][colour_cells] == same).all()


def test_token_owners_name_the_object_the_labels_describe() -> None:
    _, scene = ShapesVQA(4, "train", seed=3).sample_and_scene(2)
    grid = patch_grid(28)(*scene.image.size)
    owners, labels = token_owners(scene, grid), token_labels(scene, grid)
    assert owners.shape == grid and set(owners.unique().tolist()) == set(range(len(scene.objects) + 1))
    for index, obj in enumerate(scene.objects):
        owned = owners == 1 + index
        assert (labels[0][owned] == 1 + list(COLOURS).index(obj.colour)).all()
        assert (labels[1][owned] == 1 + SHAPES.index(obj.shape)).all()
    assert ((owners > 0) == (labels[0] > 0)).all()


def test_kept_labels_count_only_the_objects_still_visible() -> None:
    # tokens: 0 background, 1-2 red object A, 3 red object B, 4 blue object C
    owners = torch.tensor([0, 1, 1, 2, 3])
    labels = torch.tensor(
        [
            [0, 1, 1, 1, 3],  # colour
            [0, 2, 2, 4, 1],  # shape
            [0, 1, 0, 1, 1],  # centre
            [0, 2, 2, 2, 1],  # same-colour objects in the scene
        ]
    )
    everything = kept_labels(labels, owners, torch.arange(5))
    assert torch.equal(everything, labels)
    without_b = kept_labels(labels, owners, torch.tensor([0, 2, 4]))
    assert torch.equal(without_b, torch.tensor([[0, 1, 3], [0, 2, 1], [0, 0, 1], [0, 1, 1]]))
    assert torch.equal(labels[3], torch.tensor([0, 2, 2, 2, 1])), "the input is not modified"


def test_count_questions_carry_the_centres_of_the_objects_they_count(untrained) -> None:
    from arr_coc.training.data import processor_grid

    vlm = untrained
    dataset = ShapesVQA(24, "train", 5, processor_grid(vlm.processor), kinds=("count", "colour"))
    examples = ExampleSet(vlm.processor, dataset, 0, vlm.context_length)
    seen = set()
    for index in range(len(dataset)):
        sample, scene = dataset.sample_and_scene(index)
        example = examples[index]
        if sample.kind != "count":
            assert example.counted is None
            continue
        grid = tuple(example.target.shape)
        assert example.counted.shape == grid
        assert torch.equal(example.counted, centre_tokens(scene, grid, subject_word(sample.question)))
        assert int(example.counted.sum()) == int(sample.answer), "one centre per counted object"
        assert not (example.counted & ~example.target).any(), "centres lie on the counted objects"
        seen.add(sample.answer)
    assert len(seen) >= 3, "the draw covers several counts"


def test_subject_word_is_the_shape_or_colour_asked_about() -> None:
    assert subject_word("What colour is the star?") == "star"
    assert subject_word("What shape is the white object?") == "white"
    assert subject_word("How many black objects are there?") == "black"
    with pytest.raises(StopIteration):
        subject_word("Where is the dog?")


def test_probe_loss_is_low_for_features_that_show_the_labels() -> None:
    torch.manual_seed(0)
    probe = TokenProbe(8)
    labels = torch.tensor([[0, 1, 2, 0], [0, 3, 1, 0], [0, 1, 0, 0], [0, 1, 2, 0]])
    noise = torch.randn(4, 8)
    before = probe.loss(noise, labels)
    optimizer = torch.optim.Adam(probe.parameters(), lr=0.1)
    features = torch.eye(4, 8) * 3
    for _ in range(100):
        optimizer.zero_grad()
        probe.loss(features, labels).backward()
        optimizer.step()
    assert probe.loss(features, labels) < 0.1 < before


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    return initial_model(tmp_path_factory.mktemp("vqa-untrained"), seed=0)


def test_training_rows_keep_a_random_share_at_stock_positions(untrained) -> None:
    from arr_coc.training.data import processor_grid
    from arr_coc.vlm.pruning import full_positions

    vlm = untrained
    examples = ExampleSet(
        vlm.processor,
        ShapesVQA(2, "train", 5, processor_grid(vlm.processor), kinds=("colour", "count")),
        vlm.tokenizer.convert_tokens_to_ids("<|im_end|>"),
        vlm.context_length,
    )
    batch = [examples[0], examples[1]]  # a colour question, then a count question with all its tokens
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        rows, kept, features = answer_rows(vlm, batch, [0.1, 1.0], generator)
    for example, row, kept_b, feats in zip(batch, rows, kept, features):
        tokens = example.encoded.num_visual_tokens
        assert feats.shape[0] == tokens
        assert torch.equal(kept_b, torch.sort(kept_b).values) and kept_b.unique().numel() == kept_b.numel()
        ids = torch.cat([example.encoded.input_ids, example.answer_ids])
        types = torch.cat([example.encoded.mm_token_type_ids, torch.zeros_like(example.answer_ids)])
        stock = full_positions(vlm, ids, types, example.encoded.image_grid_thw)
        image_slots = torch.nonzero(types == 1).flatten()
        slots = image_slots[kept_b]
        first = int(image_slots[0])
        assert torch.equal(row.positions[:, :first], stock[:, :first]), "text before the image is unchanged"
        kept_positions = row.positions[:, row.input_ids == vlm.image_token_id]
        assert torch.equal(kept_positions, stock[:, slots]), "kept tokens keep their original M-RoPE positions"
        assert torch.equal(row.input_ids[-example.answer_ids.numel() :], example.answer_ids)
    assert kept[0].numel() == max(1, round(0.1 * features[0].shape[0])) and kept[1].numel() == features[1].shape[0]
    losses = step_losses(vlm, rows, kept, batch)
    assert losses.answer.item() > 0 and losses.hints.item() > 0


def test_pre_rows_run_the_tower_on_the_kept_patches_only(untrained) -> None:
    from arr_coc.training.data import processor_grid
    from arr_coc.vlm.pre_encoder import encode_kept

    vlm = untrained
    examples = ExampleSet(
        vlm.processor,
        ShapesVQA(2, "train", 1, processor_grid(vlm.processor)),
        vlm.tokenizer.convert_tokens_to_ids("<|im_end|>"),
        vlm.context_length,
    )
    batch = [examples[0], examples[1]]
    with torch.no_grad():
        rows, kept, features = answer_rows(vlm, batch, [0.3, 0.5], torch.Generator().manual_seed(0), [True, False])
        (alone,) = encode_kept(vlm, [batch[0].encoded.pixel_values], [batch[0].encoded.image_grid_thw], [kept[0]])
    assert features[0].shape[0] == kept[0].numel() and features[1].shape[0] == batch[1].encoded.num_visual_tokens
    assert rows[0].vision.features.shape[0] == kept[0].numel() < batch[0].encoded.num_visual_tokens
    assert torch.allclose(rows[0].vision.features, alone.features, atol=1e-5)
    assert step_losses(vlm, rows, kept, batch).answer.item() > 0


def test_target_subsets_keep_most_targets_and_few_others() -> None:
    target = torch.zeros(12, 16, dtype=torch.bool)
    target[2:5, 3:6] = True  # 9 target tokens of 192
    flat = target.flatten()
    shares, others = [], []
    for seed in range(50):
        kept = target_subset(target, 0.1, torch.Generator().manual_seed(seed))
        assert torch.equal(kept, torch.sort(kept).values) and kept.unique().numel() == kept.numel()
        assert int(kept.min()) >= 0 and int(kept.max()) < flat.numel()
        shares.append(flat[kept].sum().item() / 9)
        others.append((~flat[kept]).sum().item())
    assert min(shares) >= 0.2 and 0.7 <= np.mean(shares) <= 0.9  # each target kept with p in [0.6, 1]
    assert max(others) <= round(0.1 * 183) and max(others) > 0
    only_targets = target_subset(target, 0.0, torch.Generator().manual_seed(0))
    assert flat[only_targets].all()
    nothing_to_find = target_subset(torch.zeros(4, 4, dtype=torch.bool), 0.0, torch.Generator().manual_seed(0))
    assert nothing_to_find.numel() == 1, "a row never goes without visual tokens"
    again = target_subset(target, 0.1, torch.Generator().manual_seed(7))
    assert torch.equal(again, target_subset(target, 0.1, torch.Generator().manual_seed(7)))


def test_target_subsets_with_distractors_take_other_objects_before_background() -> None:
    target = torch.zeros(12, 16, dtype=torch.bool)
    target[2:5, 3:6] = True  # 9 target tokens
    owners = torch.zeros(12, 16, dtype=torch.long)
    owners[2:5, 3:6] = 1
    owners[8:11, 10:14] = 2  # 12 tokens of another object
    owners[0, 0] = 3  # and one more: 13 look-alike tokens in all
    flat_target, flat_owners = target.flatten(), owners.flatten()
    seen_extra = set()
    for seed in range(50):
        plain = target_subset(target, 0.1, torch.Generator().manual_seed(seed))
        kept = target_subset(target, 0.1, torch.Generator().manual_seed(seed), owners)
        assert torch.equal(kept, torch.sort(kept).values) and kept.unique().numel() == kept.numel()
        assert kept.numel() == plain.numel(), "the same number of tokens, chosen elsewhere"
        extra = kept[~flat_target[kept]]
        on_object = flat_owners[extra] > 0
        seen_extra.add(int(extra.numel()))
        if extra.numel() <= 13:
            assert on_object.all(), "look-alikes come first"
        else:
            assert int(on_object.sum()) == 13, "then the background"
    assert max(seen_extra) > 13 and min(seen_extra) < 13, "both cases were drawn"
    absent = target_subset(torch.zeros_like(target), 0.1, torch.Generator().manual_seed(3), owners)
    assert (flat_owners[absent] > 0).all(), "an absent colour shows the other objects"


def test_a_count_balanced_probe_weighs_rare_counts_up() -> None:
    labels = torch.zeros(4, 40, dtype=torch.long)
    labels[0, :30], labels[1, :30], labels[3, :28], labels[3, 28:30] = 1, 1, 1, 4  # 28 tokens count 1, 2 count 4
    features = torch.zeros(40, 8)
    features[:30, 0], features[30:, 1] = 1.0, 1.0  # object or background, nothing more
    plain, balanced = TokenProbe(8), TokenProbe(8, balance_counts=True)
    balanced.load_state_dict(plain.state_dict())
    with torch.no_grad():
        plain.count.weight.zero_()
        plain.count.bias.zero_()
        plain.count.weight[1, 0] = plain.count.weight[0, 1] = 10.0  # objects count 1, background 0: the 4s missed
        balanced.count.load_state_dict(plain.count.state_dict())
    assert balanced.loss(features, labels) > plain.loss(features, labels) + 1.0, "missing the rare 4s costs more"


def test_training_draws_question_kinds_in_the_configured_shares() -> None:
    config = train_testbed_config({"kinds": ["colour", "shape", "count", "count"]})
    kinds = [s.kind for s in (ShapesVQA(400, "train", 1, kinds=config.kinds)[i] for i in range(400))]
    assert 0.42 < kinds.count("count") / 400 < 0.58 and {"colour", "shape"} <= set(kinds)
    assert TrainTestbedConfig().kinds == ("colour", "shape", "count")


def test_fine_tuning_starts_from_the_given_checkpoint(tmp_path) -> None:
    from arr_coc.vlm.testbed import EMBEDDED_MODEL

    start = load_vlm(EMBEDDED_MODEL, device="cpu", dtype="fp32")
    config = train_testbed_config(
        {
            "steps": 2,
            "batch_size": 2,
            "warmup_steps": 0,
            "lr": 1e-4,
            "heldout_size": 2,
            "eval_every": 0,
            "workers": 0,
            "pre_share": 1.0,
            "target_share": 1.0,
            "freeze_embeddings": True,
            "init": str(EMBEDDED_MODEL),
            "out": str(tmp_path / "tuned"),
        }
    )
    result = train_testbed(config, progress=False)
    assert result.losses[0] < 1.5, "a trained model's loss, not a random one's (about ln 18 + more)"
    tuned = load_vlm(tmp_path / "tuned", device="cpu", dtype="fp32")
    before, after = start.model.state_dict(), tuned.model.state_dict()
    assert before.keys() == after.keys()
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert changed and all((before[n] - after[n]).abs().max() < 0.05 for n in changed)
    assert "model.language_model.embed_tokens.weight" not in changed, "the scorer's query embeddings stay"


def test_a_short_training_run_lowers_the_loss_and_saves_a_loadable_checkpoint(tmp_path) -> None:
    config = train_testbed_config(
        {
            "steps": 10,
            "batch_size": 4,
            "warmup_steps": 0,
            "lr": 3e-3,
            "heldout_size": 4,
            "eval_every": 0,
            "workers": 0,
            "out": str(tmp_path / "tb"),
        }
    )
    logged = []

    class Logger:
        def log(self, metrics, step):
            logged.append((step, metrics))

    result = train_testbed(config, Logger(), progress=False)
    assert len(result.losses) == 10 and [s for s, _ in logged] == list(range(1, 11))
    assert np.mean(result.losses[-3:]) < np.mean(result.losses[:3]) - 0.5
    assert "heldout/accuracy" in logged[-1][1] and 0.0 <= result.heldout_accuracy <= 1.0
    loaded = load_vlm(tmp_path / "tb", device="cpu", dtype="fp32")
    assert loaded.family.name == "qwen2.5-vl"
    assert all(len(loaded.tokenizer(w, add_special_tokens=False)["input_ids"]) == 1 for w in (*COLOURS, *SHAPES))
    assert "eager" not in (tmp_path / "tb" / "config.json").read_text(), "training attention is not saved"


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"steps": 0}, "steps"),
        ({"min_keep": 0}, "min_keep"),
        ({"pre_share": 1.5}, "pre_share"),
        ({"min_keep": 1.5}, "min_keep"),
        ({"target_share": -0.1}, "target_share"),
        ({"target_extra": 2}, "target_extra"),
        ({"lr": -1}, "lr"),
        ({"probe_pre": "sometimes"}, "probe_pre"),
        ({"stepz": 3}, "stepz"),
        ({"device": "gpu"}, "device"),
        ({"time_budget_s": -1}, "time_budget_s"),
        ({"stop_after": -2}, "stop_after"),
        ({"growth": {"llm_layers": -1}}, "growth.llm_layers"),
        ({"growth": {"depth": 6}}, "growth.depth"),
        ({"kinds": ["colour", "position"]}, "kinds"),
        ({"kinds": []}, "kinds"),
        ({"distractors": "maybe"}, "distractors"),
        ({"balance_counts": "maybe"}, "balance_counts"),
    ],
)
def test_bad_training_config_is_a_typed_error(bad, field) -> None:
    with pytest.raises(InvalidConfigError) as caught:
        train_testbed_config(bad)
    assert caught.value.field.startswith(field)
    assert TrainTestbedConfig().min_keep == 0.1


def test_a_time_budget_ends_the_run_early_with_a_schedule_that_replays(tmp_path) -> None:
    base = {"steps": 40, "batch_size": 1, "warmup_steps": 2, "heldout_size": 1, "eval_every": 0, "workers": 0}
    config = train_testbed_config(base, {"time_budget_s": 1e-6, "out": str(tmp_path / "tb")})
    logged = []

    class Logger:
        def log(self, metrics, step):
            logged.append((step, metrics))

    result = train_testbed(config, Logger(), progress=False)
    assert result.steps == len(result.losses) == len(logged) < 40
    assert logged[-1][1]["train/planned_steps"] == result.planned_steps and "heldout/accuracy" in logged[-1][1]
    assert (tmp_path / "tb" / "model.safetensors").is_file()
    assert result.planned_steps >= result.steps
    replay = train_testbed_config(base, {"steps": result.planned_steps, "stop_after": result.steps})
    planned = schedule(config, Plan(result.planned_steps))
    assert [planned(s) for s in range(40)] == [schedule(replay)(s) for s in range(40)]


def test_stop_after_ends_the_run_before_the_schedule_does(tmp_path) -> None:
    config = train_testbed_config(
        {"steps": 8, "stop_after": 3, "batch_size": 1, "heldout_size": 1, "eval_every": 0, "workers": 0},
        {"out": str(tmp_path / "tb")},
    )
    result = train_testbed(config, progress=False)
    assert (result.steps, result.planned_steps, len(result.losses)) == (3, 8, 3)


def test_fine_tuning_can_grow_the_checkpoint_first(tmp_path) -> None:
    from arr_coc.vlm.testbed import EMBEDDED_MODEL

    start = json.loads((EMBEDDED_MODEL / "config.json").read_text())
    sizes = (start["text_config"]["num_hidden_layers"] + 1, start["text_config"]["intermediate_size"] + 64)
    sizes += (start["vision_config"]["depth"] + 1,)
    growth = dict(zip(("llm_layers", "llm_mlp", "vision_depth"), sizes))
    config = train_testbed_config(
        {"steps": 1, "batch_size": 1, "heldout_size": 2, "eval_every": 0, "workers": 0, "lr": 1e-6},
        {"init": str(EMBEDDED_MODEL), "growth": growth, "freeze_embeddings": True, "out": str(tmp_path / "big")},
    )
    result = train_testbed(config, progress=False)
    text, vision = result.vlm.model.config.text_config, result.vlm.model.config.vision_config
    assert (text.num_hidden_layers, text.intermediate_size, vision.depth) == sizes
    assert result.losses[0] < 1.5, "grown from a trained model: it answers as that model did"
    saved = load_vlm(tmp_path / "big", device="cpu", dtype="fp32")
    assert saved.model.config.text_config.num_hidden_layers == sizes[0]


def test_train_testbed_job_logs_an_offline_run_and_an_artifact(tmp_path) -> None:
    out = tmp_path / "tb"
    done = arr_coc(
        [
            "train-testbed",
            "--steps",
            "3",
            "--batch-size",
            "2",
            "--heldout-size",
            "2",
            "--workers",
            "0",
            "--out",
            str(out),
            "--no-progress",
        ],
        offline_env(tmp_path),
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (run_file,) = find_run_files(tmp_path / "dir")
    run = read_run(run_file)
    assert (run.job_type, run.group, run.exit_code) == ("train", "testbed-training", 0)
    assert run.config["steps"] == 3 and run.config["min_keep"] == 0.1
    assert len(run.metric("train/loss")) == 3 and len(run.metric("train/hint_loss")) == 3
    assert 0.0 <= run.summary["heldout_accuracy"] <= 1.0
    assert any(a.name.startswith("vqa-testbed") for a in run.artifacts), run.artifacts
    assert (out / "model.safetensors").is_file() and "held-out accuracy" in done.stdout


def test_train_testbed_cli_refuses_bad_flags(tmp_path) -> None:
    done = arr_coc(["train-testbed", "--steps", "0", "--out", str(tmp_path / "tb")], offline_env(tmp_path), tmp_path)
    assert done.returncode == 2 and "steps" in done.stderr
    assert not (tmp_path / "tb").exists()
