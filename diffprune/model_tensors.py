"""A model's tensors as diffs and task files name them: every unique parameter with all its
names and owners (tied weights are one tensor), and the persistent buffers that training
changes."""
from __future__ import annotations

import torch
from torch import nn


def unique_parameters(model: nn.Module) -> list[tuple[str, list[str], nn.Parameter, list[tuple[nn.Module, str]]]]:
    """(canonical name, all names, parameter, owners) for every unique parameter tensor."""
    by_id: dict[int, tuple[str, list[str], nn.Parameter, list]] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for attr, p in module._parameters.items():
            if p is None:
                continue
            full = f"{module_name}.{attr}" if module_name else attr
            entry = by_id.setdefault(id(p), (full, [], p, []))
            if full not in entry[1]:
                entry[1].append(full)
            if not any(m is module and a == attr for m, a in entry[3]):
                entry[3].append((module, attr))
    order = {id(p): i for i, (_, p) in enumerate(model.named_parameters())}
    return sorted(by_id.values(), key=lambda e: order.get(id(e[2]), len(order)))


def task_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's persistent buffers by name: the state besides parameters that training changes.

    BatchNorm's running mean / variance and ``num_batches_tracked`` are persistent; derived
    constants (position ids, causal masks, rotary frequencies) are registered
    non-persistent by the libraries that use them, and are not task state.
    """
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for attr, buffer in module._buffers.items():
            if buffer is None or attr in module._non_persistent_buffers_set or id(buffer) in seen:
                continue
            seen.add(id(buffer))
            out[f"{module_name}.{attr}" if module_name else attr] = buffer
    return out
