"""``arr-coc eval`` runs read back, the Launch override of an eval job, ``arr-coc compare``
over two eval runs, and the exit codes of bad input."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from PIL import Image
from wandb_jobs import arr_coc, launch_env, offline_env

from arr_coc_cli.main import main
from training_hooks.comparison.runfile import find_run_files, read_run

pytestmark = pytest.mark.slow

EVAL_ARGS = ["--limit", "2", "--size", "4", "--dataset", "synthetic", "--image-size", "112", "--max-new-tokens", "2"]


@pytest.fixture(scope="module")
def eval_runs(tmp_path_factory, testbed_dir):
    """Two eval runs in one WANDB_DIR: arr-coc-25 from flags (with fidelity), uniform@0.5 from Launch overrides."""
    root = tmp_path_factory.mktemp("eval")
    model = str(testbed_dir())
    plain = arr_coc(
        ["eval", "--variant", "arr-coc-25", "--model", model, "--device", "cpu", "--dtype", "fp32", "--fidelity"]
        + EVAL_ARGS,
        offline_env(root),
        root,
    )
    assert plain.returncode == 0, plain.stderr[-3000:]
    overrides = {"method": "uniform", "budget": 0.5, "limit": 3}
    launched = arr_coc(
        ["eval", "--variant", "arr-coc-25", "--model", model, *EVAL_ARGS], launch_env(root, overrides), root
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    runs = {run.group: run for run in map(read_run, find_run_files(root / "dir"))}
    return root, runs, plain.stdout + launched.stdout


def test_eval_run_holds_variant_config_and_summary(eval_runs, testbed_dir) -> None:
    _, runs, _ = eval_runs
    run = runs["arr-coc-25"]
    assert (run.job_type, run.name, run.exit_code) == ("eval", "eval-arr-coc-25", 0)
    config = run.config
    assert (config["variant"], config["method"], config["budget"]) == ("arr-coc-25", "arr-coc", 0.25)
    assert config["vlm"] == str(testbed_dir()) and config["limit"] == 2
    assert (config["device"], config["dtype"]) == ("cpu", "float32")  # --dtype fp32, logged by its torch name
    s = run.summary
    assert s["samples"] == 2 and 0.0 <= s["accuracy"] <= 1.0 and 0.0 <= s["recall"] <= 1.0
    assert s["kept_tokens_mean"] == 4 and s["total_tokens_mean"] == 16  # 112 px -> 4 x 4 tokens, 25 % kept
    assert s["kept_ratio"] == 0.25
    assert 0 < s["latency_p50_ms"] <= s["latency_p95_ms"] and s["throughput_rps"] > 0
    assert {"vision_p50_ms", "scoring_p50_ms", "prefill_p50_ms", "decode_p95_ms"} <= set(s)
    assert run.metric("eval/kept_tokens") == [4, 4]
    assert len(run.metric("eval/latency_ms/prefill")) == 2
    assert s["examples"]["nrows"] == 2
    assert 0.0 <= s["fidelity"] <= 1.0 and s["first_token_kl"] >= 0.0  # against the all-token answers
    assert len(run.metric("eval/agrees")) == 2
    assert sum(run.metric("eval/first_token_kl")) / 2 == pytest.approx(s["first_token_kl"])
    # each answer holds its batch's time (batch size 1 here), priced as the CPU instance's time
    pricing = config["pricing"]
    per_s = pricing["gpus"] * pricing["price_gpu_s"] + pricing["vcpus"] * pricing["price_vcpu_s"]
    per_s += pricing["memory_gib"] * pricing["price_gib_s"]
    held_s = sum(run.metric("eval/latency_ms/total")) / 2 / 1000
    assert pricing["gpus"] == 0 and s["cost_per_1k_answers"] == pytest.approx(1000 * per_s * held_s, rel=1e-6)


def test_launch_overrides_reach_the_eval_job(eval_runs) -> None:
    _, runs, _ = eval_runs
    run = runs["uniform@0.5"]  # the group follows the overridden variant
    assert (run.config["variant"], run.config["method"], run.config["budget"]) == ("uniform@0.5", "uniform", 0.5)
    assert run.config["limit"] == 3 and run.summary["samples"] == 3
    assert "fidelity" not in run.summary  # only when asked for
    assert run.summary["kept_ratio"] == 0.5 and run.metric("eval/kept_tokens") == [8, 8, 8]


def test_compare_prints_both_variants_and_writes_plots(eval_runs, tmp_path: Path, capsys) -> None:
    root, runs, _ = eval_runs
    assert main(["compare", str(root / "dir"), "--out", str(tmp_path / "plots")]) == 0
    printed = capsys.readouterr().out.splitlines()
    end = next(i for i, line in enumerate(printed) if line.startswith("Pareto front"))
    table, front = printed[:end], printed[end + 1 :]
    header = table[0].split()
    assert header[:3] == ["variant", "job", "runs"] and "latency_p95_ms" in header and "throughput_rps" in header
    assert "fidelity" in header and "first_token_kl" in header
    rows = {line.split()[0]: line.split() for line in table[1:] if line.split() and line.split()[0] != "wrote"}
    assert set(rows) == {"arr-coc-25", "uniform@0.5"}
    kept = header.index("kept_ratio")
    assert (rows["arr-coc-25"][kept], rows["uniform@0.5"][kept]) == ("0.25", "0.5")
    fidelity = header.index("fidelity")
    assert float(rows["arr-coc-25"][fidelity]) == pytest.approx(runs["arr-coc-25"].summary["fidelity"], abs=1e-3)
    assert rows["uniform@0.5"][fidelity] == "-"
    p95 = header.index("latency_p95_ms")
    assert float(rows["uniform@0.5"][p95]) == pytest.approx(runs["uniform@0.5"].summary["latency_p95_ms"], rel=1e-3)
    assert "cost_per_1k" in header and rows["arr-coc-25"][header.index("cost_per_1k")] != "-"
    assert any(line.strip().startswith(("arr-coc-25:", "uniform@0.5:")) for line in front)
    for name in ("quality_vs_kept_ratio.png", "latency_vs_kept_ratio.png", "cost_vs_quality.png"):
        with Image.open(tmp_path / "plots" / name) as image:
            assert image.format == "PNG" and image.size == (800, 520)
            assert len(image.getcolors(1 << 16)) > 10  # axes, points and text were drawn


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["eval", "--variant", "nope-25"], "unknown variant 'nope-25'"),
        (["eval", "--method", "arr-coc", "--budget", "1.5"], "budget"),
        (["eval", "--method", "sharpen", "--budget", "0.5"], "invalid choice: 'sharpen'"),
        (["eval", "--method", "divprune", "--budget", "0.5", "--stage", "pre"], "runs at stage 'post' only"),
        (["eval"], "name a --variant, or a --method with a --budget"),
        (["eval", "--variant", "full", "--limit", "0"], "limit must be >= 1"),
        (["eval", "--variant", "full", "--dataset", "coco"], "unknown dataset 'coco'"),
        (["compare", "/nonexistent/runs"], "no such run folder or file: /nonexistent/runs"),
        (["compare", "my-team/arr-coc"], "cannot read W&B project 'my-team/arr-coc'"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(args, message, tmp_path, monkeypatch, capsys) -> None:
    for key, value in offline_env(tmp_path).items():
        if key.startswith(("WANDB_", "ARR_COC_HOME")):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("WANDB_API_KEY", "")
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert find_run_files(tmp_path / "dir") == []  # rejected before any run or model load


def test_bad_config_files_exit_2(tmp_path: Path, capsys) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("steps: [1, 2\n")
    unknown = tmp_path / "unknown.json"
    unknown.write_text('{"stepz": 3}')
    listing = tmp_path / "list.json"
    listing.write_text("[1, 2]")
    for path, message in (
        (broken, "does not parse"),
        (unknown, "stepz"),
        (listing, "must hold a mapping"),
        (tmp_path / "missing.yaml", "cannot read"),
    ):
        assert main(["train-scorer", "--config", str(path)]) == 2
        assert message in capsys.readouterr().err


def test_missing_model_dir_and_empty_dataset_exit_2(tmp_path: Path) -> None:
    env = offline_env(tmp_path)
    done = arr_coc(["eval", "--variant", "uniform-25", "--model", str(tmp_path / "no-model")], env, tmp_path)
    assert done.returncode == 2 and "no checkpoint directory" in done.stderr
    done = arr_coc(["train-scorer", "--train-size", "0"], env, tmp_path)
    assert done.returncode == 2 and "train_size" in done.stderr


def test_eval_variant_carries_its_stage() -> None:
    from training_hooks.jobs.eval_job import EvalParams, resolve_variant

    assert resolve_variant(EvalParams(variant="arr-coc-pre-25")).stage == "pre"
    adhoc = resolve_variant(EvalParams(method="uniform", budget=0.3, stage="pre"))
    assert (adhoc.name, adhoc.stage) == ("uniform@0.3@pre", "pre")
    on_top = resolve_variant(EvalParams(variant="arr-coc-25", stage="pre"))
    assert (on_top.method, on_top.budget, on_top.stage) == ("arr-coc", 0.25, "pre")
    assert resolve_variant(EvalParams(variant="arr-coc-25")).stage == "post"


def test_compare_keeps_pre_encoder_variants_apart() -> None:
    from types import SimpleNamespace

    from training_hooks.comparison.compare import _variant_of

    flat = SimpleNamespace(config={"variant": "arr-coc-pre-25", "method": "arr-coc", "stage": "pre"}, group="g")
    nested = SimpleNamespace(
        config={"variant": {"name": "arr-coc-25", "method": "arr-coc", "stage": "post"}}, group="g"
    )
    assert _variant_of(flat) == ("arr-coc-pre-25", "arr-coc-pre")
    assert _variant_of(nested) == ("arr-coc-25", "arr-coc")


def test_the_pareto_front_keeps_the_variants_nothing_beats_on_cost_and_quality() -> None:
    from training_hooks.comparison.compare import Row, cost_points, format_front, pareto_front

    def rows(variant, method, cost, accuracy, cost_job="serve"):
        return [
            Row(variant, method, "eval", 1, {"accuracy": accuracy, "cost_per_1k": 99.0}),
            Row(variant, method, cost_job, 1, {"cost_per_1k": cost}),
        ]

    table = (
        rows("full", "none", 1.0, 0.9)
        + rows("arr-coc-25", "arr-coc", 0.4, 0.88)
        + rows("uniform-25", "uniform", 0.4, 0.7)
    )
    table += rows("arr-coc-10", "arr-coc", 0.3, 0.80) + rows("random-50", "random", 0.7, 0.85)
    table.append(Row("fid-only", "x", "eval", 1, {"fidelity": 0.5, "cost_per_1k": 0.1}))  # its eval cost counts
    points = cost_points(table)
    assert {p.variant: p.cost for p in points}["full"] == 1.0, "a serve run's cost wins over an eval run's"
    assert {p.variant: p.metric for p in points}["fid-only"] == "fidelity"
    front = [p.variant for p in pareto_front(points)]
    assert front == ["fid-only", "arr-coc-10", "arr-coc-25", "full"]  # uniform-25 and random-50 are beaten
    assert "arr-coc-25: $0.4 per 1k answers, accuracy 0.88" in format_front(points)
    assert "no variant has both" in format_front([])


def test_finishing_marks_a_failed_job_run_with_exit_code_1() -> None:
    from training_hooks.jobs.jobrun import finishing

    class Run:
        codes: list = []

        def finish(self, exit_code=0):
            self.codes.append(exit_code)

    run = Run()
    with finishing(run):
        pass
    with pytest.raises(KeyError), finishing(run):
        raise KeyError("boom")
    assert run.codes == [0, 1]


def test_launch_inputs_are_declared_for_a_logging_run_only(monkeypatch, caplog) -> None:
    import wandb.sdk.launch

    from training_hooks.jobs.jobrun import declare_launch_inputs

    declared = []
    monkeypatch.setattr(wandb.sdk.launch, "manage_wandb_config", lambda include: declared.append(include))

    class Run:
        disabled = False

    class Disabled:
        disabled = True

    with caplog.at_level(logging.WARNING, logger="training_hooks.jobs.jobrun"):
        declare_launch_inputs(Disabled(), ["lr"])
        declare_launch_inputs(Run(), ["lr", "steps"])
    assert declared == [["lr", "steps"]]
    assert caplog.records == []

    def refuses(include):
        raise AssertionError("no active run")

    monkeypatch.setattr(wandb.sdk.launch, "manage_wandb_config", refuses)
    with caplog.at_level(logging.WARNING, logger="training_hooks.jobs.jobrun"):
        declare_launch_inputs(Run(), ["lr"])  # a metadata failure is a warning, never the job's failure
    assert "no active run" in caplog.text
