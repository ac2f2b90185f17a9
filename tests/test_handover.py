"""diffprune/handover.py: the dense diff a train run hands to its prune runs. That an L0 run
writes it once, and that its prune runs read it, is tested end to end in tests/test_runner.py."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from diffprune.handover import DENSE_DIFF_NAME, float_buffers, head_state, read_dense_diff_into, write_dense_diff

HEAD = r"^head\."


class WithStatistics(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(3, 3)
        self.norm = nn.BatchNorm1d(3)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.norm(self.body(x)))


def test_the_head_travels_with_the_floating_buffers_training_changed():
    torch.manual_seed(0)
    model = WithStatistics()
    before = float_buffers(model)
    assert set(before) == {"norm.running_mean", "norm.running_var"}  # num_batches_tracked is an integer
    head = head_state(model, HEAD, before)
    assert set(head) == {"head.weight", "head.bias"}  # nothing changed yet
    model.train()(torch.randn(8, 3))
    head = head_state(model, HEAD, before)
    assert set(head) == {"head.weight", "head.bias", "norm.running_mean", "norm.running_var"}
    assert torch.equal(head["norm.running_mean"], model.norm.running_mean)


def test_a_prune_run_reads_the_head_and_refuses_another_base(tmp_path):
    torch.manual_seed(0)
    trained, fresh = WithStatistics(), WithStatistics()
    diff = {"body.weight": torch.full((3, 3), 0.5)}
    identity = {"task": "rte", "base_fingerprint": "sha256:base"}
    assert write_dense_diff(tmp_path, diff, head_state(trained, HEAD, {}), identity) == tmp_path / DENSE_DIFF_NAME
    with pytest.raises(ValueError, match="trained on another base model"):
        read_dense_diff_into(fresh, tmp_path, "sha256:other")
    assert not torch.equal(fresh.head.weight, trained.head.weight)  # refused before loading anything
    dense = read_dense_diff_into(fresh, tmp_path, "sha256:base")
    assert torch.equal(dense["body.weight"], diff["body.weight"])
    assert torch.equal(fresh.head.weight, trained.head.weight)
    with pytest.raises(ValueError, match="the stored head has tensors this model lacks"):
        read_dense_diff_into(nn.Linear(3, 3), tmp_path, None)
