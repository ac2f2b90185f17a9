"""One optimizer step of any Method (diffprune/training_step.py), on the tiny BERT: what the
step's parameters become, against autograd and plain SGD written out by hand."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from diffprune.methods import AdamWInBackward, Method, adamw
from diffprune.training_step import training_step

CPU = torch.device("cpu")
LR = 0.1  # plain SGD without momentum: the update is exactly -LR * the gradient it steps with


class SquaredHeadWeightPenalty(Method):
    """A method that trains what it is given and adds ``weight * |classifier.weight|^2`` to the
    loss (None when ``weight`` is 0), recording the calls the training step makes."""

    name = "squared_head_weight_penalty"

    def __init__(self, weight: float = 0.0) -> None:
        super().__init__()
        self.weight = weight
        self.calls: list[tuple] = []

    def begin_step(self, model: nn.Module, step: int) -> None:
        self.calls.append(("begin_step", step))

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        self.calls.append(("penalty", torch.is_autocast_enabled("cpu")))
        if not self.weight:
            return None
        return self.weight * head_weight(model).pow(2).sum()


def head_weight(model: nn.Module) -> torch.Tensor:
    """The classification head's weight (of the tiny BERT, wrapped or not)."""
    return next(p for name, p in model.named_parameters() if name.endswith("classifier.weight"))


class RecordsItsOwnClipping(torch.optim.SGD):
    """SGD standing in for an optimizer that holds gradients no ``.grad`` shows (DeltaGradAdamW):
    it has its own ``clip_grad_norm_``, which here only records how it was called."""

    def __init__(self, params, lr: float) -> None:
        super().__init__(params, lr=lr)
        self.clip_calls: list[tuple] = []

    def clip_grad_norm_(self, max_norm: float, parameters=None) -> torch.Tensor:
        self.clip_calls.append((max_norm, list(parameters)))
        return torch.zeros(())


class AutocastProbe(nn.Module):
    """The wrapped model, recording whether each forward pass ran under autocast."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.forward_autocast: list[bool] = []

    def forward(self, **batch):
        self.forward_autocast.append(torch.is_autocast_enabled("cpu"))
        return self.model(**batch)


def split(batch: dict, at: int) -> list[dict]:
    return [{k: v[:at] for k, v in batch.items()}, {k: v[at:] for k, v in batch.items()}]


def reference_gradients(model: nn.Module, batch: dict, penalty_weight: float = 0.0) -> tuple[torch.Tensor, dict]:
    """(task loss + penalty, each parameter's gradient) of one forward and backward over the
    whole batch, on a copy of ``model``: what one step should step with, before clipping."""
    model = copy.deepcopy(model)
    loss = model(**batch).loss + penalty_weight * head_weight(model).pow(2).sum()
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def global_norm(gradients) -> float:
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in gradients])))


def sgd_step(model: nn.Module, batches: list[dict], *, penalty_weight: float = 0.0, max_grad_norm: float = 0.0,
             step: int = 0, **kwargs) -> tuple[torch.Tensor, dict, dict]:
    """One training_step of a copy of ``model`` with SGD at LR; (returned loss, parameters
    before, parameters after)."""
    model = copy.deepcopy(model)
    method = SquaredHeadWeightPenalty(penalty_weight)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    loss = training_step(model, method, iter(batches), len(batches), optimizer, step=step, device=CPU,
                         precision="fp32", max_grad_norm=max_grad_norm, **kwargs)
    after = {name: p.detach().clone() for name, p in model.named_parameters()}
    return loss, before, after


def assert_stepped_with(before: dict, after: dict, gradients: dict, scale: float = 1.0) -> None:
    """Every parameter moved by -LR * scale * its reference gradient."""
    for name, gradient in gradients.items():
        torch.testing.assert_close(after[name], before[name] - LR * scale * gradient, rtol=1e-5, atol=1e-6,
                                   msg=name)


def test_one_step_steps_on_the_gradient_of_task_loss_plus_penalty(tiny_bert, tiny_batch):
    expected_loss, gradients = reference_gradients(tiny_bert, tiny_batch, penalty_weight=0.5)
    model = copy.deepcopy(tiny_bert)
    for p in model.parameters():  # gradients left from before the step must not leak into it
        p.grad = torch.ones_like(p)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    method = SquaredHeadWeightPenalty(0.5)
    loss = training_step(model, method, [tiny_batch], 1, torch.optim.SGD(model.parameters(), lr=LR), step=7,
                         device=CPU, precision="fp32", max_grad_norm=0.0)

    assert not loss.requires_grad and loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected_loss)
    assert_stepped_with(before, dict(model.named_parameters()), gradients)
    # the method hears of the step (by its number) before the penalty is taken
    assert method.calls == [("begin_step", 7), ("penalty", False)]


def test_micro_batches_accumulate_to_the_step_of_the_whole_batch(tiny_bert, tiny_batch):
    """Two micro-batches of two examples: the loss and the gradient of the four-example batch,
    the penalty counted once per step (not once per micro-batch)."""
    whole_loss, _, whole = sgd_step(tiny_bert, [tiny_batch], penalty_weight=0.5)
    accumulated_loss, _, accumulated = sgd_step(tiny_bert, split(tiny_batch, 2), penalty_weight=0.5)

    torch.testing.assert_close(accumulated_loss, whole_loss, rtol=1e-6, atol=1e-6)
    for name in whole:
        torch.testing.assert_close(accumulated[name], whole[name], rtol=1e-5, atol=1e-6, msg=name)
    # the penalty moves the head far beyond the tolerance above, so counting it once per
    # micro-batch could not pass unseen
    _, _, unpenalised = sgd_step(tiny_bert, [tiny_batch])
    assert not torch.allclose(unpenalised["classifier.weight"], whole["classifier.weight"], atol=1e-4)


@pytest.mark.parametrize("norm_fraction, scale", [
    (0.25, 0.25),   # the gradient is 4x the limit: scaled down to the limit
    (4.0, 1.0),     # under the limit: stepped with as it is
    (0.0, 1.0),     # max_grad_norm 0: no clipping at all
])
def test_clipping_scales_the_global_gradient_norm_down_to_max_grad_norm(tiny_bert, tiny_batch, norm_fraction, scale):
    _, gradients = reference_gradients(tiny_bert, tiny_batch)
    norm = global_norm(gradients.values())
    assert norm > 1e-3
    _, before, after = sgd_step(tiny_bert, [tiny_batch], max_grad_norm=norm_fraction * norm)

    assert_stepped_with(before, after, gradients, scale)
    moved = global_norm([before[name] - after[name] for name in before])
    assert moved == pytest.approx(LR * scale * norm, rel=1e-3)


def test_clipping_looks_only_at_the_parameters_given_as_trainable(tiny_bert, tiny_batch):
    """The norm is the head's alone and only the head is scaled; the rest steps unclipped."""
    _, gradients = reference_gradients(tiny_bert, tiny_batch)
    head_names = [name for name in gradients if name.startswith("classifier.")]
    head_norm = global_norm([gradients[name] for name in head_names])
    model = copy.deepcopy(tiny_bert)
    parameters = dict(model.named_parameters())
    before = {name: p.detach().clone() for name, p in parameters.items()}
    training_step(model, SquaredHeadWeightPenalty(), [tiny_batch], 1, torch.optim.SGD(model.parameters(), lr=LR),
                  step=0, device=CPU, precision="fp32", max_grad_norm=head_norm / 2,
                  trainable=[parameters[name] for name in head_names])

    assert global_norm(gradients.values()) > 2 * head_norm  # clipped over everything, the scale would differ
    assert_stepped_with(before, {n: parameters[n] for n in head_names}, {n: gradients[n] for n in head_names}, 0.5)
    rest = {name: gradients[name] for name in gradients if name not in head_names}
    assert_stepped_with(before, dict(parameters), rest)


@pytest.mark.parametrize("max_grad_norm, asked", [(0.5, True), (0.0, False)])
def test_an_optimizer_with_its_own_clipping_is_asked_to_clip_instead_of_torch(tiny_bert, tiny_batch, monkeypatch,
                                                                            max_grad_norm, asked):
    def torch_clipping_is_not_for_this_optimizer(*args, **kwargs):
        raise AssertionError("torch.nn.utils.clip_grad_norm_ called for an optimizer that clips its own gradients")

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", torch_clipping_is_not_for_this_optimizer)
    model = copy.deepcopy(tiny_bert)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = RecordsItsOwnClipping(trainable, lr=LR)
    training_step(model, SquaredHeadWeightPenalty(), [tiny_batch], 1, optimizer, step=0, device=CPU,
                  precision="fp32", max_grad_norm=max_grad_norm, trainable=trainable)

    assert len(optimizer.clip_calls) == int(asked)
    if asked:
        limit, parameters = optimizer.clip_calls[0]
        assert limit == max_grad_norm and len(parameters) == len(trainable)
        assert all(p is q for p, q in zip(parameters, trainable))


def test_the_schedule_steps_once_after_the_optimizer_step(tiny_bert, tiny_batch):
    """The step uses the learning rate of its own step number; the next one gets the next."""
    _, gradients = reference_gradients(tiny_bert, tiny_batch)
    model = copy.deepcopy(tiny_bert)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 ** step)
    training_step(model, SquaredHeadWeightPenalty(), [tiny_batch], 1, optimizer, step=0, device=CPU,
                  precision="fp32", max_grad_norm=0.0, scheduler=scheduler)

    assert_stepped_with(before, dict(model.named_parameters()), gradients, scale=1.0)
    assert scheduler.last_epoch == 1 and optimizer.param_groups[0]["lr"] == pytest.approx(LR / 2)


def test_a_loss_scaler_changes_neither_the_loss_nor_the_clipped_step(tiny_bert, tiny_batch):
    """Clipping sees the unscaled gradients: scaled by 2^10, the step is the unscaled one."""
    expected_loss, gradients = reference_gradients(tiny_bert, tiny_batch)
    norm = global_norm(gradients.values())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    loss, before, after = sgd_step(tiny_bert, [tiny_batch], max_grad_norm=norm / 4, scaler=scaler)

    torch.testing.assert_close(loss, expected_loss)
    assert_stepped_with(before, after, gradients, scale=0.25)
    assert scaler.get_scale() == 2.0 ** 10  # no overflow: the scale stays (it grows only after 2000 steps)


def test_a_loss_scaler_skips_a_step_whose_gradients_are_not_finite(tiny_bert, tiny_batch):
    """What an fp16 overflow looks like to the scaler (here an infinite penalty): no update,
    the scale backs off by half."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    loss, before, after = sgd_step(tiny_bert, [tiny_batch], penalty_weight=float("inf"), scaler=scaler)

    assert not torch.isfinite(loss)
    for name in before:
        assert torch.equal(after[name], before[name]), name
    assert scaler.get_scale() == 2.0 ** 9


def test_an_optimizer_that_steps_inside_backward_ends_where_adamw_after_backward_ends(tiny_bert, tiny_batch):
    """Matrices of >= 64 entries update inside backward (their gradients dropped), the small
    tensors in the step after it: together AdamW's update, up to rounding."""
    results = []
    for make_optimizer in (lambda params: adamw([{"params": params}], lr=1e-2),
                           lambda params: AdamWInBackward([{"params": params}], lr=1e-2, in_backward_numel=64)):
        model = copy.deepcopy(tiny_bert)
        optimizer = make_optimizer(list(model.parameters()))
        training_step(model, SquaredHeadWeightPenalty(0.5), [tiny_batch], 1, optimizer, step=0, device=CPU,
                      precision="fp32", max_grad_norm=0.0)
        results.append(dict(model.named_parameters()))
    after_backward, in_backward = results
    assert all(p.grad is None for p in in_backward.values() if p.numel() >= 64)
    for name, p in after_backward.items():
        torch.testing.assert_close(in_backward[name], p, rtol=1e-6, atol=1e-7, msg=name)
    assert not torch.equal(after_backward["classifier.bias"], tiny_bert.classifier.bias)  # small tensors moved too


@pytest.mark.parametrize("num_batches, with_scaler, max_grad_norm, refused", [
    (2, False, 0.0, "2 micro-batch"),
    (1, True, 0.0, "scaler True"),
    (1, False, 1.0, "max_grad_norm 1.0"),
])
def test_an_optimizer_that_steps_inside_backward_is_refused_what_it_cannot_do(tiny_bert, tiny_batch, num_batches,
                                                                              with_scaler, max_grad_norm, refused):
    model = copy.deepcopy(tiny_bert)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = AdamWInBackward([{"params": list(model.parameters())}], lr=1e-2, in_backward_numel=64)
    method = SquaredHeadWeightPenalty()
    with pytest.raises(ValueError, match=refused):
        training_step(model, method, split(tiny_batch, 2)[:num_batches], num_batches, optimizer, step=0,
                      device=CPU, precision="fp32", max_grad_norm=max_grad_norm,
                      scaler=torch.amp.GradScaler("cpu") if with_scaler else None)
    # refused before anything ran: no step begun, nothing moved
    assert method.calls == []
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
    optimizer.remove_hooks()


def test_an_optimizer_with_its_own_clipping_is_refused_a_loss_scaler(tiny_bert, tiny_batch):
    model = copy.deepcopy(tiny_bert)
    method = SquaredHeadWeightPenalty()
    with pytest.raises(ValueError, match="RecordsItsOwnClipping forms gradients a loss scaler cannot see"):
        training_step(model, method, [tiny_batch], 1, RecordsItsOwnClipping(model.parameters(), lr=LR), step=0,
                      device=CPU, precision="fp32", max_grad_norm=0.0, scaler=torch.amp.GradScaler("cpu"))
    assert method.calls == []


@pytest.mark.parametrize("precision, forward_autocast", [("bf16", True), ("fp32", False)])
def test_the_forward_runs_under_autocast_and_the_penalty_outside_it(tiny_bert, tiny_batch, precision,
                                                                    forward_autocast):
    model = AutocastProbe(copy.deepcopy(tiny_bert))
    method = SquaredHeadWeightPenalty(0.5)
    loss = training_step(model, method, split(tiny_batch, 2), 2, torch.optim.SGD(model.parameters(), lr=LR), step=0,
                         device=CPU, precision=precision, max_grad_norm=0.0)

    assert model.forward_autocast == [forward_autocast] * 2
    assert method.calls == [("begin_step", 0), ("penalty", False), ("penalty", False)]
    assert loss.dtype == torch.float32  # the loss is summed in fp32 whatever the forward ran in
    expected_loss, _ = reference_gradients(tiny_bert, tiny_batch, penalty_weight=0.5)
    torch.testing.assert_close(loss, expected_loss, rtol=0.05, atol=0.0)
