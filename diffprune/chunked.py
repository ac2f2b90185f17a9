"""Flat, chunk-by-chunk work on d-sized tensors: the gate maths and the optimizers' updates
make no temporary larger than ``CHUNK`` entries, whatever the tensor's size."""
from __future__ import annotations

import torch
from torch.optim.adam import adam

# Entries per chunk. Every temporary of the gate maths and of a chunked update is this size
# (1 MiB in fp32): small enough to fit the holes that freed activations leave in the heap, so
# a step's temporaries do not raise its peak; large enough that the per-chunk overhead is noise.
CHUNK = 1 << 18


def flat(t: torch.Tensor) -> torch.Tensor:
    """``t`` as one flat tensor: a view where it is contiguous."""
    return t.reshape(-1) if t.is_contiguous() else t.contiguous().view(-1)


def chunks(n: int):
    """Consecutive slices of ``range(n)``, ``CHUNK`` entries each (the last one shorter)."""
    for start in range(0, n, CHUNK):
        yield slice(start, min(start + CHUNK, n))


def dense_chunks(sparse: torch.Tensor, parts: list[slice]):
    """A function i -> the dense flat chunk ``parts[i]`` of a coalesced row-sparse tensor (an
    embedding lookup's gradient): a new tensor, zero off the stored rows. The whole tensor is
    never made dense."""
    return scattered_chunks(row_positions(sparse), sparse.values().reshape(-1), parts)


def row_positions(sparse: torch.Tensor) -> torch.Tensor:
    """The flat positions of a coalesced row-sparse tensor's stored entries, ascending (in the
    order of ``values().reshape(-1)``)."""
    rows, values = sparse.indices()[0], sparse.values()
    row_numel = values.shape[1:].numel()
    # coalesced rows are sorted
    return (rows.unsqueeze(1) * row_numel + torch.arange(row_numel, device=rows.device)).view(-1)


def scattered_chunks(positions: torch.Tensor, flat_values: torch.Tensor, parts: list[slice]):
    """A function (i, base=None) -> the flat chunk ``parts[i]`` of a tensor that is ``flat_values``
    at the ascending flat ``positions`` and zero elsewhere; with ``base`` (that chunk of another
    tensor, written in place and returned), that tensor added to ``base`` at the positions."""
    starts = torch.tensor([part.start for part in parts] + [parts[-1].stop], device=positions.device)
    bounds = torch.searchsorted(positions, starts).tolist()  # one read for every chunk

    def chunk(i: int, base: torch.Tensor | None = None) -> torch.Tensor:
        part, lo, hi = parts[i], bounds[i], bounds[i + 1]
        index = positions[lo:hi] - part.start
        if base is None:
            out = torch.zeros(part.stop - part.start, dtype=flat_values.dtype, device=flat_values.device)
            out[index] = flat_values[lo:hi]
            return out
        base[index] += flat_values[lo:hi]
        return base

    return chunk


def adamw_update_(optimizer: torch.optim.AdamW, p: torch.Tensor, group: dict, part: slice, grad: torch.Tensor,
                  count: torch.Tensor) -> None:
    """AdamW's update of the flat chunk ``p.view(-1)[part]`` with its gradient ``grad``, as
    ``optimizer.step()`` would apply it to the whole tensor with the group's settings: torch's
    own function on views of the parameter and its state (every AdamW kernel is elementwise,
    so the chunked update is the whole one's, bit for bit). ``count`` is the step count before
    this step; the function adds the step's 1 to a copy, so every chunk sees the same count,
    and the caller adds it to ``count`` once the tensor is done."""
    state = optimizer.state[p]
    beta1, beta2 = group["betas"]
    adam([p.view(-1)[part]], [grad], [state["exp_avg"].view(-1)[part]], [state["exp_avg_sq"].view(-1)[part]],
         [state["max_exp_avg_sq"].view(-1)[part]] if group["amsgrad"] else [], [count.clone()],
         foreach=group["foreach"], capturable=group["capturable"], differentiable=group["differentiable"],
         fused=group["fused"], grad_scale=None, found_inf=None, has_complex=False,
         decoupled_weight_decay=group["decoupled_weight_decay"], amsgrad=group["amsgrad"], beta1=beta1,
         beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"],
         maximize=group["maximize"])
