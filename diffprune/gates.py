"""Stretched Hard-Concrete gates (Louizos et al., 2018) as used by diff pruning.

    u ~ U(0, 1)
    s = sigmoid(log u - log(1 - u) + alpha)
    z = min(1, max(0, s * (r - l) + l))
    E[1{z > 0}] = sigmoid(alpha - log(-l / r))

The maths is written on flat tensors so that one pass covers every diffed parameter.
"""
from __future__ import annotations

import bisect
import math
import queue
from concurrent.futures import ThreadPoolExecutor

import torch

from diffprune.seeding import generator_seed

# Noise is drawn in this many fixed chunks, each from its own seeded generator, so a sample
# depends only on (seed, step) and not on how many threads drew it.
NOISE_CHUNKS = 8
_EPS = 1e-6


def fill_uniform_(out: torch.Tensor, seed: int, step: int) -> torch.Tensor:
    """Fill the flat tensor ``out`` with U(0, 1) noise determined by (seed, step).

    On CPU the chunks are drawn concurrently: torch's CPU generator is single-threaded and
    drawing d ~ 2e7 numbers serially is the largest single cost of a diff-pruning step.
    """
    return draw_gate_sample_(out, [], seed, step)


def draw_gate_sample_(out: torch.Tensor, alphas: list[tuple[int, torch.Tensor]], seed: int, step: int) -> torch.Tensor:
    """Fill the flat ``out`` with s = sigmoid(logit(u) + alpha) for the noise of (seed, step).

    ``alphas`` lists (offset in ``out``, alpha tensor) for consecutive pieces of ``out``;
    pieces it does not cover keep the bare uniform noise u (that is ``fill_uniform_``). The
    maths runs in fp32 one noise chunk at a time, so ``out`` may be a lower precision (a
    16-bit sample halves the biggest per-step buffer of the L0 phase) and no d-sized fp32
    temporary is made.
    """
    starts = [offset for offset, _ in alphas]
    bounds = []
    begin = 0
    for chunk in out.chunk(NOISE_CHUNKS):
        bounds.append((begin, begin + chunk.numel()))
        begin += chunk.numel()

    threaded = out.device.type == "cpu" and torch.get_num_threads() > 1 and out.numel() > 1 << 16
    workers = min(torch.get_num_threads(), NOISE_CHUNKS) if threaded else 1
    # fp32 scratch made here, on the calling thread, and handed to the workers: memory a
    # worker thread allocates lands in its own malloc arena and stays mapped after the step.
    scratch: queue.SimpleQueue = queue.SimpleQueue()
    for _ in range(workers):
        scratch.put(torch.empty(max(b - a for a, b in bounds), dtype=torch.float32, device=out.device))

    def draw(i: int) -> None:
        a, b = bounds[i]
        buffer = scratch.get()
        g = torch.Generator(device=out.device).manual_seed(generator_seed(seed, step * NOISE_CHUNKS + i))
        u = buffer[: b - a].uniform_(generator=g)
        piece = max(0, bisect.bisect_right(starts, a) - 1)
        while piece < len(alphas) and alphas[piece][0] < b:
            offset, alpha = alphas[piece]
            lo, hi = max(a, offset), min(b, offset + alpha.numel())
            if lo < hi:
                alpha_flat = alpha.detach().reshape(-1)[lo - offset: hi - offset]
                logistic_s_(u[lo - a: hi - a], alpha_flat.float())
            piece += 1
        out[a:b].copy_(u)
        scratch.put(buffer)

    if threaded:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(draw, range(len(bounds))))
    else:
        for i in range(len(bounds)):
            draw(i)
    return out


def logistic_s_(u: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """In place: uniform noise u -> s = sigmoid(logit(u) + alpha), using no d-sized temporaries."""
    u.clamp_(_EPS, 1 - _EPS).logit_().add_(alpha).sigmoid_()
    return u


def stretch(s: torch.Tensor, left: float, right: float) -> torch.Tensor:
    """z = clamp(s * (r - l) + l, 0, 1) as a new fp32 tensor; ``s`` (which may be 16-bit) is left as it is."""
    return (s.float() * (right - left)).add_(left).clamp_(0.0, 1.0)


def gate_slope(s: torch.Tensor, left: float, right: float) -> torch.Tensor:
    """dz/dalpha = (r - l) * s * (1 - s) where the gate is not clamped, else 0 (in fp32)."""
    s = s.float()
    z_bar = s * (right - left) + left
    inside = (z_bar > 0) & (z_bar < 1)
    return (s * (1 - s)).mul_(right - left).mul_(inside)


def hard_concrete(alpha: torch.Tensor, u: torch.Tensor, left: float, right: float) -> torch.Tensor:
    """Reference (autograd) version of the gate for a given uniform sample ``u``."""
    u = u.clamp(_EPS, 1 - _EPS)
    s = torch.sigmoid(torch.log(u) - torch.log1p(-u) + alpha)
    return torch.clamp(s * (right - left) + left, 0.0, 1.0)


def log_ratio(left: float, right: float) -> float:
    return math.log(-left / right)


def expected_l0(alpha: torch.Tensor, left: float, right: float) -> torch.Tensor:
    """Closed-form E[||z||_0] = sum_i sigmoid(alpha_i - log(-l/r)) (reference version)."""
    return torch.sigmoid(alpha - log_ratio(left, right)).sum()


def expected_l0_structured(alphas: list[torch.Tensor], group_alphas: torch.Tensor, left: float, right: float) -> torch.Tensor:
    """Paper's structured penalty: sum_g sigmoid(alpha_g - c) * sum_{i in g} sigmoid(alpha_i - c).

    (The original public code added the group term once per group instead of the product.)
    """
    c = log_ratio(left, right)
    per_group = torch.stack([torch.sigmoid(a - c).sum() for a in alphas])
    return (torch.sigmoid(group_alphas - c) * per_group).sum()


_CHUNK = 1 << 20  # elements per chunk: temporaries stay small whatever the tensor size


def _open_probability_sum(alpha: torch.Tensor, c: float) -> torch.Tensor:
    """sum(sigmoid(alpha - c)), chunk by chunk."""
    flat = alpha.detach().reshape(-1)
    total = torch.zeros((), dtype=torch.float32, device=alpha.device)
    for start in range(0, flat.numel(), _CHUNK):
        total += torch.sigmoid(flat[start:start + _CHUNK].float() - c).sum()
    return total


class ExpectedL0(torch.autograd.Function):
    """Memory-light expected L0 over many alpha tensors (optionally with group gates).

    Saves only references to the alpha leaves and recomputes sigmoid in backward chunk by
    chunk, so the penalty adds no tensor-sized temporary to a step. Where an alpha leaf
    already has a ``.grad``, the penalty's gradient is added to it in place (so use
    ``.backward()``; ``torch.autograd.grad`` sees only the part of alphas without one). Compute it *before* the forward pass of a step: autograd
    then runs its backward last, after the activations are freed.
    """

    @staticmethod
    def forward(ctx, c: float, group_alpha: torch.Tensor | None, *alphas: torch.Tensor) -> torch.Tensor:
        ctx.c = c
        with torch.no_grad():
            per_tensor = torch.stack([_open_probability_sum(a, c) for a in alphas])
            if group_alpha is None:
                total = per_tensor.sum()
            else:
                total = (torch.sigmoid(group_alpha - c) * per_tensor).sum()
        ctx.save_for_backward(group_alpha if group_alpha is not None else torch.empty(0), per_tensor, *alphas)
        ctx.has_groups = group_alpha is not None
        return total

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        group_alpha, per_tensor, *alphas = ctx.saved_tensors
        c = ctx.c
        grads = []
        if ctx.has_groups:
            group_p = torch.sigmoid(group_alpha - c)
            group_grad = grad_out * group_p * (1 - group_p) * per_tensor
            scale = grad_out * group_p
        else:
            group_grad = None
            scale = grad_out.expand(len(alphas))
        for i, a in enumerate(alphas):
            if not ctx.needs_input_grad[2 + i]:
                grads.append(None)  # passed detached: its gradient is added elsewhere
                continue
            # A leaf that already holds a gradient (the task loss's, when this backward runs
            # last) gets this one added in place, chunk by chunk: returning it instead would
            # hold a second d-sized copy of every alpha gradient at the end of backward.
            accumulate = a.is_leaf and a.grad is not None and not torch.is_grad_enabled()
            target = a.grad if accumulate else torch.empty_like(a)
            a_flat, t_flat = a.detach().reshape(-1), target.view(-1)
            for start in range(0, a_flat.numel(), _CHUNK):
                part = slice(start, start + _CHUNK)
                # d sigmoid(a - c) / da = p * (1 - p)
                p = torch.sigmoid(a_flat[part] - c)
                p.mul_(1 - p).mul_(scale[i])
                if accumulate:
                    t_flat[part] += p
                else:
                    t_flat[part] = p
            grads.append(None if accumulate else target)
        return (None, group_grad, *grads)
