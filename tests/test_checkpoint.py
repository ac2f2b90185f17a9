"""diffprune/checkpoint.py: a resume checkpoint stores and restores a training run exactly,
as safetensors + JSON (nothing is unpickled). Resuming a crashed run end to end is tested in
tests/test_runner.py."""
from __future__ import annotations

import random
import re

import pytest
import torch
from safetensors import safe_open

from diffprune.checkpoint import (CHECKPOINT_FORMAT, CHECKPOINT_NAME, as_loaded, load_checkpoint, restore_rng_states,
                                  restore_training, rng_states, save_checkpoint, trainable_state)
from diffprune.training_schedule import linear_schedule
from tests.test_runner import assert_same_tensors


def test_checkpoint_round_trip_of_optimizer_scheduler_and_rng_is_exact(tmp_path):
    import numpy as np

    from diffprune.methods import adamw

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))

    def optimizer_for(module):
        groups = [{"params": [module[0].weight, module[1].weight], "weight_decay": 0.01},
                  {"params": [module[0].bias, module[1].bias], "weight_decay": 0.0, "lr": 5e-3}]
        optimizer = adamw(groups, lr=1e-2)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(10, 2))
        return optimizer, scheduler

    def one_step(module, optimizer, scheduler):
        module(torch.randn(5, 4)).square().sum().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    optimizer, scheduler = optimizer_for(model)
    for _ in range(3):
        one_step(model, optimizer, scheduler)
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint(path, {"format": CHECKPOINT_FORMAT, "step": 3, "module": trainable_state(model),
                                  "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                  "scaler": None, "rng": rng_states(), "extra": {"note": [1.5, None]}})
    with safe_open(str(path), framework="pt") as stored:  # safetensors + JSON, no pickle inside
        assert stored.metadata()["format"] == "diffprune.checkpoint"
    loaded = load_checkpoint(path)
    assert loaded["step"] == 3 and loaded["scaler"] is None and loaded["extra"] == {"note": [1.5, None]}

    saved = optimizer.state_dict()
    assert loaded["optimizer"]["param_groups"] == saved["param_groups"]
    assert all(type(g["betas"]) is tuple for g in loaded["optimizer"]["param_groups"])
    assert loaded["optimizer"]["state"].keys() == saved["state"].keys()
    for index, entry in saved["state"].items():
        assert set(loaded["optimizer"]["state"][index]) == {"step", "exp_avg", "exp_avg_sq"} == set(entry)
        for key, value in entry.items():
            restored = loaded["optimizer"]["state"][index][key]
            assert restored.dtype == value.dtype and torch.equal(restored, value), (index, key)
    assert loaded["scheduler"] == scheduler.state_dict()

    # the same draws after restoring the RNG states
    expected = (random.random(), np.random.rand(), torch.rand(3))
    restore_rng_states(loaded["rng"])
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert expected[:2] == again[:2] and torch.equal(expected[2], again[2])

    # a fresh model + optimizer resumed from the file continues bit-identically
    resumed = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    resumed.load_state_dict(loaded["module"])
    resumed_optimizer, resumed_scheduler = optimizer_for(resumed)
    resumed_optimizer.load_state_dict(loaded["optimizer"])
    resumed_scheduler.load_state_dict(loaded["scheduler"])
    for module, opt, sched in ((model, optimizer, scheduler), (resumed, resumed_optimizer, resumed_scheduler)):
        torch.manual_seed(7)
        one_step(module, opt, sched)
    assert_same_tensors(model.state_dict(), resumed.state_dict())


def test_identity_compares_as_a_checkpoint_returns_it_and_unstorable_values_are_refused():
    identity = {"rate": None, "betas": (0.9, 0.999), "training": {"learning_rate": 1e-3, "layers": ["a"]}}
    assert as_loaded(identity, "identity") == identity
    assert type(as_loaded(identity, "identity")["betas"]) is tuple
    with pytest.raises(TypeError, match=r"identity\.weights is a Tensor; a checkpoint stores tensors and JSON"):
        as_loaded({"weights": torch.zeros(2)}, "identity")
    with pytest.raises(TypeError, match="has keys a checkpoint cannot store as JSON"):
        as_loaded({1: "a"}, "identity")


def test_restore_training_resumes_only_the_same_configuration(tmp_path):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(4, 0))
    path = tmp_path / "run.tmp" / CHECKPOINT_NAME
    assert restore_training(path, {"seed": 0}, model, optimizer, scheduler, None) is None  # nothing to resume
    path.parent.mkdir()
    save_checkpoint(path, {"format": CHECKPOINT_FORMAT, "identity": {"seed": 0}, "step": 2, "epoch": 0,
                           "groups_done": 2, "train_seconds": 1.5, "module": trainable_state(model),
                           "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": None,
                           "rng": rng_states(), "extra": {}})
    refused = f"different run configuration; delete {re.escape(str(path.parent))} to start this run afresh"
    with pytest.raises(ValueError, match=refused):
        restore_training(path, {"seed": 1}, model, optimizer, scheduler, None)
    resumed = restore_training(path, {"seed": 0}, model, optimizer, scheduler, None)
    assert (resumed["step"], resumed["epoch"], resumed["groups_done"], resumed["train_seconds"]) == (2, 0, 2, 1.5)
