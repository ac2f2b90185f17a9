"""One optimizer step of any ``Method``: the code the runner trains with and the bench times.

``training_step`` is everything ``runner.train_loop`` does per step between fetching the
step's batches and its bookkeeping (progress, checkpoints): the method's ``begin_step``, one
forward and backward per micro-batch with the method's penalty, gradient clipping by global
norm, the (loss-scaled) optimizer step and the learning-rate schedule. The benchmark
(``diffprune.bench``) calls the same function, so what it times is what a run executes.

Optimizers that step inside backward (``steps_in_backward``, e.g.
``diffprune.methods.AdamWInBackward``) have applied every update and dropped every gradient by
the time backward returns; they cannot be combined with global-norm clipping, a loss scaler
or gradient accumulation, and this function refuses those combinations instead of silently
skipping them. Optimizers that hold gradients no ``.grad`` shows (``clips_own_gradients``,
e.g. ``diffprune.delta_adamw.DeltaGradAdamW``) clip them with their own ``clip_grad_norm_``,
over the same tensors and with the same result as ``torch.nn.utils.clip_grad_norm_`` on
materialised gradients; they cannot be combined with a loss scaler.
"""
from __future__ import annotations

from typing import Iterable

import torch

from diffprune.device import autocast_context


def steps_in_backward(optimizer) -> bool:
    return bool(getattr(optimizer, "steps_in_backward", False))


def clips_own_gradients(optimizer) -> bool:
    """Whether the optimizer holds gradients that no ``.grad`` shows (``DeltaGradAdamW``) and
    so clips them itself, with its own ``clip_grad_norm_``."""
    return callable(getattr(optimizer, "clip_grad_norm_", None))


def training_step(module, method, batches: Iterable[dict], num_batches: int, optimizer, *, step: int,
                  device: torch.device, precision: str, max_grad_norm: float, scheduler=None, scaler=None,
                  trainable: list | None = None) -> torch.Tensor:
    """One optimizer step over ``batches`` (``num_batches`` micro-batches, already on ``device``
    or moved there here); returns the step's loss (task loss + penalty) as a detached tensor.

    ``trainable``: the parameters clipping looks at (default: the module's trainable ones).
    """
    if steps_in_backward(optimizer) and (num_batches != 1 or scaler is not None or max_grad_norm > 0):
        raise ValueError("an optimizer that steps inside backward needs one micro-batch per step, no loss "
                         f"scaler and no global-norm clipping (got {num_batches} micro-batch(es), scaler "
                         f"{scaler is not None}, max_grad_norm {max_grad_norm})")
    if clips_own_gradients(optimizer) and scaler is not None:
        raise ValueError(f"{type(optimizer).__name__} forms gradients a loss scaler cannot see: train it without one")
    method.begin_step(module, step)
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=device)
    for batch in batches:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        # The penalty (e.g. lambda * expected L0) is computed in fp32, outside autocast, split
        # over the micro-batches so each optimizer step counts it once, and *before* the
        # forward pass: autograd runs the backward of what was built first last, so any
        # d-sized gradients it has appear only after the activations are freed.
        penalty = method.penalty(module)
        with autocast_context(device, precision):
            outputs = module(**batch)
        loss = outputs.loss.float() / num_batches
        if penalty is not None:
            loss = loss + penalty.float() / num_batches
        (scaler.scale(loss) if scaler else loss).backward()
        total += loss.detach()
    if steps_in_backward(optimizer):
        optimizer.step()  # what backward left: the small tensors (and the scheduler's bookkeeping)
    else:
        if trainable is None:
            trainable = [p for p in module.parameters() if p.requires_grad]
        with_grad = [p for p in trainable if p.grad is not None]
        scaled = scaler is not None and bool(with_grad)
        if scaled:
            scaler.unscale_(optimizer)
        if max_grad_norm > 0 and clips_own_gradients(optimizer):
            optimizer.clip_grad_norm_(max_grad_norm, trainable)
        elif with_grad and max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(with_grad, max_grad_norm)
        if scaled:
            scaler.step(optimizer)  # skips the step when fp16 gradients overflowed
            scaler.update()
        else:
            optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return total
