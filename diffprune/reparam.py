"""Swap effective parameters into a model module by module, without keeping them alive.

Both phases of diff pruning run the pretrained model with *effective* weights
theta_0 + delta in place of its own. Building all effective weights up front would hold a
second copy of the model for the whole forward pass (that is most of why a naive
``torch.nn.utils.parametrize`` version needs 1.75x the memory of full finetuning). Instead:

* a forward pre-hook on each module that owns a diffed tensor builds that tensor's
  effective value just before the module runs, and a forward hook puts the pretrained
  tensor back right after;
* saved-tensor hooks replace an effective weight that autograd wants to keep for backward
  by a recipe, and rebuild it when backward needs it (the values are identical: the diff
  does not change between forward and backward of one step).

Tied tensors (e.g. input embeddings and LM head) are one slot with several owners: one
diff, seen by every owner.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class Slot:
    """One unique pretrained tensor that receives a diff."""

    index: int
    name: str  # canonical (first) name in model.named_parameters()
    aliases: list[str]  # every name under which the tensor appears (tied weights)
    owners: list[tuple[nn.Module, str]]
    base: nn.Parameter
    offset: int = 0  # position in flat per-element buffers
    extra: dict = field(default_factory=dict)

    @property
    def numel(self) -> int:
        return self.base.numel()

    @property
    def shape(self) -> torch.Size:
        return self.base.shape


_RECIPE = "diffprune-effective-weight"


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


def _restore_sparse_flag(module: nn.Module) -> None:
    if hasattr(module, "_diffprune_sparse"):
        module.sparse = module.__dict__.pop("_diffprune_sparse")


class ReparametrizedModel(nn.Module):
    """Base for wrappers that run ``model`` with effective weights for some of its tensors.

    Subclasses implement ``effective(slot)`` (differentiable, used in forward) and
    ``rebuild(slot)`` (the same values without autograd, used when backward asks for a saved
    effective weight).
    """

    def __init__(self, model: nn.Module, head_pattern: str) -> None:
        super().__init__()
        self.model = model
        self.head_pattern = head_pattern
        head = re.compile(head_pattern)
        self.slots: list[Slot] = []
        self.head_names: list[str] = []
        offset = 0
        for name, aliases, p, owners in unique_parameters(model):
            if head.search(name):
                self.head_names.append(name)  # trained densely, not diffed
                continue
            if not p.is_floating_point():
                continue
            self.slots.append(Slot(len(self.slots), name, aliases, owners, p, offset))
            offset += p.numel()
        if not self.slots:
            raise ValueError("no pretrained parameters to diff: the head pattern matched everything")
        self.diffed_params = offset
        self._live: dict[int, int] = {}  # storage address of a live effective weight -> slot index
        self._handles = []
        owned: dict[int, tuple[nn.Module, list[tuple[str, Slot]]]] = {}
        for slot in self.slots:
            slot.base.requires_grad_(False)
            for module, attr in slot.owners:
                owned.setdefault(id(module), (module, []))[1].append((attr, slot))
        for module, attrs in owned.values():
            self._handles.append(module.register_forward_pre_hook(self._make_pre_hook(attrs)))
            self._handles.append(module.register_forward_hook(self._make_post_hook(attrs), always_call=True))

    # -- what subclasses provide -------------------------------------------------------
    # True if ``effective``'s backward accepts a sparse (row-wise) gradient: nn.Embedding
    # owners then produce one, which saves a vocabulary-sized dense gradient per step.
    sparse_embedding_grads = False

    def effective(self, slot: Slot) -> torch.Tensor:
        raise NotImplementedError

    def rebuild(self, slot: Slot) -> torch.Tensor:
        raise NotImplementedError

    # -- hooks ---------------------------------------------------------------------------
    def _make_pre_hook(self, attrs):
        def pre_hook(module, args):
            for attr, slot in attrs:
                value = self.effective(slot)
                if value is slot.base:
                    continue
                module._parameters[attr] = value
                if value.requires_grad:
                    self._live[value.untyped_storage().data_ptr()] = slot.index
                    if self.sparse_embedding_grads and isinstance(module, nn.Embedding) and attr == "weight":
                        # Only the looked-up rows get a gradient: ask for it as a sparse
                        # tensor instead of a dense vocabulary-sized one.
                        module._diffprune_sparse = module.sparse
                        module.sparse = True
        return pre_hook

    def _make_post_hook(self, attrs):
        def post_hook(module, args, output):
            for attr, slot in attrs:
                value = module._parameters[attr]
                if value is not slot.base:
                    self._live.pop(value.untyped_storage().data_ptr(), None)
                    module._parameters[attr] = slot.base
            _restore_sparse_flag(module)
        return post_hook

    def _pack(self, tensor: torch.Tensor):
        if self._live:
            try:
                index = self._live.get(tensor.untyped_storage().data_ptr())
            except (RuntimeError, NotImplementedError):  # tensors without storage
                index = None
            if index is not None:
                return (_RECIPE, index, tensor.size(), tensor.stride(), tensor.storage_offset(), tensor.dtype)
        return tensor

    def _unpack(self, packed):
        if isinstance(packed, tuple) and len(packed) == 6 and packed[0] == _RECIPE:
            _, index, size, stride, offset, dtype = packed
            with torch.no_grad():
                value = self.rebuild(self.slots[index])
            return value.to(dtype).as_strided(size, stride, offset)
        return packed

    def forward(self, *args, **kwargs):
        # The pretrained model is shared between tasks, so its buffers (e.g. BatchNorm running
        # statistics) are put back after every training forward: a task never writes the base.
        saved_buffers = [(b, b.clone()) for b in self.model.buffers()] if self.training else []
        try:
            with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
                return self.model(*args, **kwargs)
        finally:
            with torch.no_grad():
                for buffer, original in saved_buffers:
                    buffer.copy_(original)
            self._live.clear()
            for slot in self.slots:  # leave the model clean even if forward raised
                for module, attr in slot.owners:
                    module._parameters[attr] = slot.base
                    _restore_sparse_flag(module)

    def detach_hooks(self) -> nn.Module:
        """Remove the hooks and return the plain pretrained model (theta_0 untouched)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for slot in self.slots:
            slot.base.requires_grad_(True)
        return self.model

    def head_parameters(self) -> dict[str, nn.Parameter]:
        params = dict(self.model.named_parameters())
        return {name: params[name] for name in self.head_names if name in params}
