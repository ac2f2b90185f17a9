"""Non-adaptive diff pruning on a ConvNet with BatchNorm: the full-finetuning run's statistics
reach the prune run and, with what it trains further, the stored file, so a fresh base plus
that file evaluates like the trained model."""
import torch

from diffprune.baselines.full_finetuning import FullFinetuning
from diffprune.artifact import ArtifactIdentity
from diffprune.handover import float_buffers, head_state
from diffprune.projection import FixedMaskFinetuning
from diffprune.storage import load_dense_diff, save_dense_diff
from tests.tiny_convnet import HEAD_PATTERN, assert_fresh_base_reproduces, pretrained_convnet, task_batch, train_steps


def test_convnet_train_equals_stored_equals_evaluated(tmp_path):
    images, _ = task_batch(seed=99)
    model = pretrained_convnet()
    identity = ArtifactIdentity.of_base(model, HEAD_PATTERN)
    buffers_before = float_buffers(model)
    full = FullFinetuning()
    module = full.prepare(model, HEAD_PATTERN)
    train_steps(module, full.make_optimizer(module, {"learning_rate": 1e-2, "weight_decay": 0.0}), 3)
    with torch.no_grad():
        finetuned = module.eval()(images)
    # the runner's hand-over from the full-finetuning run to its prune runs
    save_dense_diff(tmp_path / "dense_diff.safetensors", full.dense_diff(module),
                    head_state(model, HEAD_PATTERN, buffers_before), {"method": full.name})
    dense, head, _ = load_dense_diff(tmp_path / "dense_diff.safetensors")

    prune_base = pretrained_convnet()
    prune_base.load_state_dict(head, strict=False)
    method = FixedMaskFinetuning(dense, rate=100.0)
    fixed = method.prepare(prune_base, HEAD_PATTERN)
    with torch.no_grad():
        assert torch.allclose(fixed.eval()(images), finetuned, atol=1e-5)  # "before finetune"
    train_steps(fixed, method.make_optimizer(fixed, {"learning_rate": 1e-2}), 2, first_seed=10)
    with torch.no_grad():
        trained = fixed.eval()(images)
    method.save(fixed, tmp_path, identity)

    assert_fresh_base_reproduces(tmp_path / "diff.safetensors", images, trained)
