"""Adaptive diff pruning through its Method on a ConvNet with BatchNorm: what trains is what is
stored is what a fresh base evaluates (the task's BatchNorm statistics included)."""
import pytest
import torch

from diffprune.adaptive import AdaptiveDiffPruning
from diffprune.artifact import ArtifactIdentity
from diffprune.projection import FixedMaskFinetuning
from diffprune.storage import load_dense_diff
from tests.tiny_convnet import (HEAD_PATTERN, PRETRAINED_BATCHES, assert_fresh_base_reproduces, pretrained_convnet,
                                task_batch, train_steps)


@pytest.mark.parametrize("structured", [False, True])
def test_convnet_train_equals_stored_equals_evaluated(tmp_path, structured):
    images, _ = task_batch(seed=99)
    model = pretrained_convnet()
    identity = ArtifactIdentity.of_base(model, HEAD_PATTERN)
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
    method.save(dm, tmp_path, identity)
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
    fixed_method.save(fixed, tmp_path, identity)

    # evaluate: a fresh base + the stored file gives the trained model's logits, bit for bit
    assert_fresh_base_reproduces(tmp_path / "diff.safetensors", images, trained)


def _train_tiny_bert(tiny_bert_state, tiny_batch, training, structured, steps=3, use_training_step=True):
    """Three L0-phase steps of the Method on a tiny BERT, through the runner's training step."""
    from transformers import BertForSequenceClassification

    from diffprune.models import mark_new_parameters
    from diffprune.training_step import training_step
    from tests.conftest import tiny_bert_config

    model = BertForSequenceClassification(tiny_bert_config())
    model.load_state_dict(tiny_bert_state)
    mark_new_parameters(model, ["classifier.weight", "classifier.bias"])
    method = AdaptiveDiffPruning(structured=structured, alpha_init=1.0, l0_lambda=0.5, alpha_learning_rate=0.05)
    dm = method.prepare(model, r"^classifier\.")
    dm.train()
    optimizer = method.make_optimizer(dm, training)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    for step in range(steps):
        training_step(dm, method, [tiny_batch], 1, optimizer, step=step, device=torch.device("cpu"),
                      precision="fp32", max_grad_norm=float(training["max_grad_norm"]), scheduler=scheduler)
    return method, dm, optimizer, scheduler


@pytest.fixture
def small_in_backward_threshold(monkeypatch):
    """Tensors of >= 64 entries step inside backward (the tiny BERT's matrices), smaller ones after it."""
    import diffprune.methods

    monkeypatch.setattr(diffprune.methods, "IN_BACKWARD_MIN_NUMEL", 64)


@pytest.mark.parametrize("structured", [False, True])
def test_stepping_inside_backward_gives_the_updates_of_the_usual_adamw_step(tiny_bert, tiny_batch, structured,
                                                                            small_in_backward_threshold):
    state = tiny_bert.state_dict()
    # Gradient accumulation rules out stepping in backward: the step after backward, with
    # DeltaGradAdamW (AdamW's updates bit for bit: tests/test_delta_adamw.py).
    usual = {"learning_rate": 1e-2, "max_grad_norm": 0.0, "gradient_accumulation_steps": 2}
    in_backward = {"learning_rate": 1e-2, "max_grad_norm": 0.0}
    method_a, dm_a, opt_a, _ = _train_tiny_bert(state, tiny_batch, usual, structured)
    method_b, dm_b, opt_b, _ = _train_tiny_bert(state, tiny_batch, in_backward, structured)
    assert not method_a.steps_in_backward and method_b.steps_in_backward
    assert (type(opt_a).__name__, type(opt_b).__name__) == ("DeltaGradAdamW", "AdamWInBackward")
    params_a, params_b = dict(dm_a.named_parameters()), dict(dm_b.named_parameters())
    large = [p for p in params_b.values() if p.requires_grad and p.numel() >= 64]
    assert large and all(p.grad is None for p in large)  # consumed inside backward
    for name, p in params_a.items():
        torch.testing.assert_close(params_b[name], p, rtol=1e-6, atol=1e-7, msg=name)
    # the gates moved (the penalty's gradient reached alpha through the optimizer's hook)
    assert not torch.equal(dm_b.alpha[0], torch.full_like(dm_b.alpha[0], 1.0))
    # the optimizer state is AdamW's, entry for entry (checkpoints are interchangeable)
    sd_a, sd_b = opt_a.state_dict(), opt_b.state_dict()
    assert sd_a["param_groups"] == sd_b["param_groups"]
    for index, entry in sd_a["state"].items():
        for key, value in entry.items():
            torch.testing.assert_close(sd_b["state"][index][key], value, rtol=1e-6, atol=1e-9)


def test_stepping_inside_backward_updates_an_embedding_chunk_by_chunk(tiny_bert, tiny_batch, monkeypatch,
                                                                     small_in_backward_threshold):
    """The word embeddings' row-sparse gradients are applied one dense chunk at a time (chunks of
    100 entries here, across row boundaries), with the penalty's gradient added per chunk: the
    updates of the usual step, up to rounding."""
    import diffprune.chunked

    monkeypatch.setattr(diffprune.chunked, "CHUNK", 100)
    state = tiny_bert.state_dict()
    usual = {"learning_rate": 1e-2, "max_grad_norm": 0.0, "gradient_accumulation_steps": 2}
    _, dm_a, _, _ = _train_tiny_bert(state, tiny_batch, usual, False)
    _, dm_b, opt_b, _ = _train_tiny_bert(state, tiny_batch, {"learning_rate": 1e-2, "max_grad_norm": 0.0}, False)
    assert dm_b.w[0].numel() > 100 and dm_b.w[0].grad is None
    for name, p in dm_a.named_parameters():
        torch.testing.assert_close(dict(dm_b.named_parameters())[name], p, rtol=1e-6, atol=1e-7, msg=name)


def test_stepping_inside_backward_resumes_from_its_state_dict(tiny_bert, tiny_batch, small_in_backward_threshold):
    """Three steps in one go equal two steps, a state_dict round trip into a fresh optimizer, one more."""
    training = {"learning_rate": 1e-2, "max_grad_norm": 0.0}
    state = tiny_bert.state_dict()
    _, dm_full, _, _ = _train_tiny_bert(state, tiny_batch, training, False, steps=3)
    method, dm, optimizer, scheduler = _train_tiny_bert(state, tiny_batch, training, False, steps=2)
    saved = optimizer.state_dict()
    optimizer.remove_hooks()
    saved_schedule = scheduler.state_dict()
    resumed = method.make_optimizer(dm, training)  # as the runner resumes: build both, then load
    scheduler = torch.optim.lr_scheduler.LambdaLR(resumed, lambda step: 1.0 / (step + 1))
    resumed.load_state_dict(saved)
    scheduler.load_state_dict(saved_schedule)
    from diffprune.training_step import training_step

    training_step(dm, method, [tiny_batch], 1, resumed, step=2, device=torch.device("cpu"), precision="fp32",
                  max_grad_norm=0.0, scheduler=scheduler)
    for (name, p), q in zip(dm_full.named_parameters(), dm.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7, msg=name)


def test_training_step_refuses_clipping_with_an_optimizer_that_steps_in_backward(tiny_bert, tiny_batch):
    from diffprune.training_step import training_step

    method = AdaptiveDiffPruning()
    dm = method.prepare(tiny_bert, r"^classifier\.")
    optimizer = method.make_optimizer(dm, {"learning_rate": 1e-3, "max_grad_norm": 0.0})
    with pytest.raises(ValueError, match="clipping"):
        training_step(dm, method, [tiny_batch], 1, optimizer, step=0, device=torch.device("cpu"), precision="fp32",
                      max_grad_norm=1.0)
    # a run with clipping on gets an optimizer that steps after backward, and clips
    assert not hasattr(AdaptiveDiffPruning().make_optimizer(
        AdaptiveDiffPruning().prepare(tiny_bert, r"^classifier\."), {"learning_rate": 1e-3}), "steps_in_backward")


def test_l0_run_stepping_in_backward_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch,
                                                                         small_in_backward_threshold):
    """The runner's L0 phase without clipping (so AdamWInBackward) crashes after a checkpoint
    and resumes to the bit-identical diff of an uninterrupted run."""
    from safetensors.torch import load_file

    from diffprune import run_plan, runner
    from tests.test_runner import write_config

    import diffprune.adaptive
    from diffprune.methods import AdamWInBackward

    made = []

    class Recorded(AdamWInBackward):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(diffprune.adaptive, "AdamWInBackward", Recorded)
    monkeypatch.setenv("DIFFPRUNE_NO_PROGRESS", "1")
    config = write_config(tmp_path)
    overrides = {"max_grad_norm": 0.0, "checkpoint_every_steps": 2}
    reference = tmp_path / "uninterrupted"
    runner.execute(run_plan.plan_train(config, "rte", "structured", 0, reference, overrides))
    out = tmp_path / "resumed"
    monkeypatch.setenv(runner.CRASH_HOOK_ENV, "5")
    with pytest.raises(runner.SimulatedCrash):
        runner.execute(run_plan.plan_train(config, "rte", "structured", 0, out, overrides))
    monkeypatch.delenv(runner.CRASH_HOOK_ENV)
    runner.execute(run_plan.plan_train(config, "rte", "structured", 0, out, overrides))
    assert len(made) == 3 and made[0]._single  # every run stepped inside backward
    expected, resumed = (load_file(str(d / "dense_diff.safetensors")) for d in (reference, out))
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.equal(resumed[name], expected[name]), name


def test_options_are_the_diff_pruning_config_with_its_defaults():
    """Every DiffPruningConfig hyperparameter but head_pattern (the config's) is an option, with
    that class's default (the paper's); mask_seed is unpinned and alpha's rate is the optimizer's."""
    from dataclasses import fields

    from diffprune.diff_pruning_config import DiffPruningConfig

    core = {f.name: f.default for f in fields(DiffPruningConfig) if f.name != "head_pattern"}
    defaults = AdaptiveDiffPruning.option_defaults()
    assert {k: v for k, v in defaults.items() if k in core and k != "mask_seed"} == {
        k: v for k, v in core.items() if k != "mask_seed"}
    assert set(defaults) == set(core) | {"alpha_learning_rate"}
    assert defaults["mask_seed"] is None and defaults["alpha_learning_rate"] is None
