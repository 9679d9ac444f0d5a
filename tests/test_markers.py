"""A test that starts the server or trains without its marker fails, naming the marker (testkit.markers)."""

from __future__ import annotations

import pytest
from wandb_jobs import arr_coc

from arr_coc.training.audit import training_starts
from testkit.markers import MissingMarkerError
from testkit.serving import Server


def test_an_unmarked_test_cannot_start_the_server(tmp_path) -> None:
    with pytest.raises(MissingMarkerError, match=r"is not marked 'server'.*pytest\.mark\.server"):
        Server(tmp_path)
    assert not (tmp_path / "serve.log").exists(), "refused before anything started"


def test_an_unmarked_test_cannot_train() -> None:
    with pytest.raises(MissingMarkerError, match=r"test_an_unmarked_test_cannot_train trains \(train-testbed\)"):
        training_starts("train-testbed")


def test_an_unmarked_test_cannot_run_a_training_command(tmp_path) -> None:
    with pytest.raises(MissingMarkerError, match="runs arr-coc train-scorer but is not marked 'slow'"):
        arr_coc(["train-scorer", "--steps", "1"], {}, tmp_path)


@pytest.mark.slow
def test_a_slow_test_may_train() -> None:
    training_starts("train-testbed")
