"""Adaptive diff pruning through its Method on a ConvNet with BatchNorm: what trains is what is
stored is what a fresh base evaluates (the task's BatchNorm statistics included)."""
import pytest
import torch

from diffprune.adaptive import AdaptiveDiffPruning
from diffprune.projection import FixedMaskFinetuning
from diffprune.storage import load_dense_diff
from tests.tiny_convnet import (HEAD_PATTERN, PRETRAINED_BATCHES, assert_fresh_base_reproduces, pretrained_convnet,
                                task_batch, train_steps)


@pytest.mark.parametrize("structured", [False, True])
def test_convnet_train_equals_stored_equals_evaluated(tmp_path, structured):
    images, _ = task_batch(seed=99)
    model = pretrained_convnet()
    method = AdaptiveDiffPruning(structured=structured, alpha_init=2.0)
    dm = method.prepare(model, HEAD_PATTERN)
    optimizer = method.make_optimizer(dm, {"learning_rate": 1e-2, "weight_decay": 0.0})
    train_steps(dm, optimizer, 3, begin_step=lambda step: method.begin_step(dm, step),
                penalty=lambda: method.penalty(dm))
    # trained on the task's batch statistics, and the running statistics followed them
    assert int(model.bn1.num_batches_tracked) == PRETRAINED_BATCHES + 3
    with torch.no_grad():
        l0_logits = dm.eval()(images)

    # the L0 run's hand-over carries the statistics with the head
    method.export(dm, tmp_path)
    dense, head, _ = load_dense_diff(tmp_path / "dense_diff.safetensors")
    for name in ("bn1.running_mean", "bn1.running_var", "layer1.1.running_var", "bn1.num_batches_tracked"):
        assert torch.equal(head[name], model.state_dict()[name]), name

    # the prune run, as the runner does it: a fresh base, the stored head + buffers, project
    prune_base = pretrained_convnet()
    prune_base.load_state_dict(head, strict=False)
    fixed_method = FixedMaskFinetuning(dense, rate=100.0)
    fixed = fixed_method.prepare(prune_base, HEAD_PATTERN)
    with torch.no_grad():
        assert torch.allclose(fixed.eval()(images), l0_logits, atol=1e-5)
    train_steps(fixed, fixed_method.make_optimizer(fixed, {"learning_rate": 1e-2}), 2, first_seed=10)
    assert int(prune_base.bn1.num_batches_tracked) == PRETRAINED_BATCHES + 3 + 2
    with torch.no_grad():
        trained = fixed.eval()(images)
    fixed_method.export(fixed, tmp_path)

    # evaluate: a fresh base + the stored file gives the trained model's logits, bit for bit
    assert_fresh_base_reproduces(tmp_path / "diff.safetensors", images, trained)
