"""Training the VQA testbed: a tiny Qwen2.5-VL learns the synthetic VQA task through the pruned-prefill path.

``config`` (:class:`TrainTestbedConfig`), ``data`` (encoded examples), ``subsets`` (which
tokens an example keeps), ``rows`` (vision, dropping, pruned rows), ``probe`` (the vision
tower's per-token probe), ``losses`` (answer and hints), ``schedule`` (learning rate),
``model`` (the starting model) and ``loop`` (:func:`train_testbed`). No W&B:
``training_hooks.jobs.train_testbed_job`` wraps the loop in a W&B run.
"""

from arr_coc.training.testbed.config import TrainTestbedConfig, train_testbed_config
from arr_coc.training.testbed.data import ExampleSet, TrainingExample
from arr_coc.training.testbed.loop import TestbedLogger, TestbedResult, train_testbed
from arr_coc.training.testbed.model import initial_model
from arr_coc.training.testbed.rows import answer_rows

__all__ = [
    "ExampleSet",
    "TestbedLogger",
    "TestbedResult",
    "TrainTestbedConfig",
    "TrainingExample",
    "answer_rows",
    "initial_model",
    "train_testbed",
    "train_testbed_config",
]
