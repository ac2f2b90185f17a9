"""diffprune/evaluation.py: every run loads its task, model and data the same way.

The ``evaluate`` verb itself (a stored diff scoring as the run that made it) is exercised end
to end in tests/test_runner.py, after the prune run that writes the diff.
"""
from __future__ import annotations

from diffprune import settings
from diffprune.evaluation import load_task_and_model
from diffprune.seeding import derive_seeds
from tests.test_runner import write_config


def test_the_dev_subsample_does_not_depend_on_the_run_seed(tmp_path):
    config = write_config(tmp_path)
    cfg = settings.load_config(config)
    training = settings.resolve_training(cfg, "rte", "full_finetuning", overrides={"max_eval_examples": 3,
                                                                                   "max_train_examples": 5})
    picked = []
    for seed in (0, 1, 7):
        *_, data = load_task_and_model(cfg, "rte", training, settings.data_config(cfg, "rte"),
                                       derive_seeds(seed).model_init)
        dev = data.evals["dev"].dataset
        picked.append([(dev[i]["input_ids"], dev[i]["labels"]) for i in range(len(dev))])
    assert len(picked[0]) == 3 and picked[0] == picked[1] == picked[2]
