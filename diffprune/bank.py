"""Many tasks served from one base model: load the base once, add N task diffs, switch.

    bank = TaskBank(base)                 # a pretrained model with a (any) task head
    bank.add("sst2", "runs/sst2/.../diff.safetensors")
    bank.add("stsb", "runs/stsb/.../diff.safetensors")
    bank.activate("sst2"); model(...)     # bank.model is theta_0 + delta_sst2 with SST-2's head
    bank.activate("stsb"); model(...)
    bank.deactivate()                     # the base, bit for bit

``add`` reads and validates a diff completely (checksum, base fingerprint, every position and
value, via ``stage_diff``) and keeps it staged: its indices, theta_0 + delta in the model's
dtype, and the base values it replaces. ``activate`` is then one indexed copy per diffed
tensor and a swap of the head tensors, so a switch costs time proportional to the k stored
entries, not to the model; the result is bit-identical to a freshly loaded base with that one
diff applied (``apply_diff_`` computes the same values). Head tensors are swapped whole, so
tasks may differ in their number of labels (SST-2's two classes, STS-B's one score).
Do not train through an activated bank: the head tensors are the bank's own.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from diffprune.applying import stage_diff
from diffprune.storage import BaseModelMismatch, SparseDiff, check_base, fingerprint, load_diff


@dataclass
class StagedTask:
    """One task's diff, ready to write: per diffed tensor (flat view, index, new, original)."""

    name: str
    source: str
    entries: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]
    heads: dict[str, torch.Tensor]
    buffers: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # (model buffer, task value, base value)
    num_labels: int | None
    file_bytes: int

    @property
    def resident_bytes(self) -> int:
        """Bytes this task keeps in memory: indices, new and original values, head, buffers."""
        tensors = [t for _, index, new, old in self.entries for t in (index, new, old)]
        tensors += list(self.heads.values()) + [t for _, new, old in self.buffers for t in (new, old)]
        return sum(t.numel() * t.element_size() for t in tensors)


class TaskBank:
    """One shared base model and the staged diffs of N tasks; ``activate`` switches in place."""

    def __init__(self, base: nn.Module, head_pattern: str | None = None) -> None:
        from diffprune.models import head_pattern_of

        self.model = base
        self.head_pattern = head_pattern_of(base, head_pattern)
        self.fingerprint = fingerprint(base, self.head_pattern)  # once: every diff is checked against it
        self.tasks: dict[str, StagedTask] = {}
        self.active: str | None = None
        self._base_heads: dict[str, torch.Tensor] = {}
        config = getattr(base, "config", None)
        # The label fields of a Hugging Face config follow the active head, and come back whole.
        self._base_labels = ({key: copy.deepcopy(getattr(config, key)) for key in ("id2label", "label2id")}
                             if hasattr(config, "id2label") else None)

    def add(self, name: str, diff: str | Path | SparseDiff, task: str | None = None,
            labels: list[str] | None = None) -> StagedTask:
        """Read, verify and stage a task diff (a path or a loaded ``SparseDiff``); ``task`` /
        ``labels``: refuse a diff trained for another task. Nothing in the model changes."""
        if name in self.tasks:
            raise ValueError(f"task {name!r} is already in the bank (from {self.tasks[name].source}); remove it first")
        file_bytes = Path(diff).stat().st_size if not isinstance(diff, SparseDiff) else 0
        if not isinstance(diff, SparseDiff):
            diff = load_diff(diff, task=task, labels=labels)
        if diff.header.get("fingerprint") != self.fingerprint:
            check_base(self.model, diff.header, diff.source)  # raises, saying how they differ
            raise BaseModelMismatch(f"{diff.source} was made for another base model")
        with self._base_state():
            staged = stage_diff(self.model, diff, check=False, head_shapes_may_differ=True)
        entries = [(flat, index, updated, original) for flat, index, original, updated in staged.entries]
        heads = {head_name: value.clone() for head_name, _, value in staged.heads}
        buffers = [(target, value.clone(), target.clone()) for target, value in staged.buffers]
        labels_stored = diff.header.get("labels")
        num_labels = len(labels_stored) if labels_stored else _labels_of_head(heads)
        self.tasks[name] = StagedTask(name, diff.source, entries, heads, buffers, num_labels, file_bytes)
        return self.tasks[name]

    def remove(self, name: str) -> None:
        if self.active == name:
            self.deactivate()
        del self.tasks[self._known(name)]

    @torch.no_grad()
    def activate(self, name: str) -> nn.Module:
        """Switch the model to task ``name`` (from the base or from another task); returns it."""
        staged = self.tasks[self._known(name)]
        if self.active == name:
            return self.model
        self.deactivate()
        params = dict(self.model.named_parameters())
        for flat, index, new, _ in staged.entries:
            flat[index] = new
        for head_name, value in staged.heads.items():
            self._base_heads.setdefault(head_name, params[head_name].data)
            params[head_name].data = value
        for target, value, _ in staged.buffers:
            target.copy_(value)
        if staged.num_labels is not None and self._base_labels is not None:
            self.model.config.num_labels = staged.num_labels  # regenerates id2label / label2id
        self.active = name
        return self.model

    @torch.no_grad()
    def deactivate(self) -> nn.Module:
        """Back to the base model, bit for bit (its own head included)."""
        if self.active is None:
            return self.model
        staged = self.tasks[self.active]
        params = dict(self.model.named_parameters())
        for flat, index, _, original in staged.entries:
            flat[index] = original
        for head_name in staged.heads:
            params[head_name].data = self._base_heads[head_name]
        for target, _, original in staged.buffers:
            target.copy_(original)
        if self._base_labels is not None:
            for key, value in self._base_labels.items():
                setattr(self.model.config, key, copy.deepcopy(value))
        self.active = None
        return self.model

    def resident_bytes(self) -> dict[str, int]:
        """{"base": the model's parameters and buffers, "tasks": what the staged tasks add}."""
        base = sum(t.numel() * t.element_size() for t in list(self.model.parameters()) + list(self.model.buffers()))
        return {"base": base, "tasks": sum(task.resident_bytes for task in self.tasks.values())}

    def _known(self, name: str) -> str:
        if name not in self.tasks:
            raise KeyError(f"task {name!r} is not in the bank (it holds {', '.join(self.tasks) or 'no task'}); add it first")
        return name

    @contextmanager
    def _base_state(self) -> Iterator[None]:
        """Staging reads the base values of the touched entries: the model must be the base."""
        active = self.active
        self.deactivate()
        try:
            yield
        finally:
            if active is not None:
                self.activate(active)


def _labels_of_head(heads: dict[str, torch.Tensor]) -> int | None:
    """Output size of a head given as tensors: the first dimension of its last weight matrix."""
    weights = [t for name, t in heads.items() if name.endswith("weight") and t.ndim == 2]
    return int(weights[-1].shape[0]) if weights else None
