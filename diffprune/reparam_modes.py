"""The torch-function modes a ``ReparametrizedModel`` forward runs under.

* ``ReadProbe`` (the first forward only) records every torch call that computes with a
  pretrained tensor of a diffed slot, so the modules that read a tensor they do not own are
  found and hooked (``ReparametrizedModel._first_forward``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

if TYPE_CHECKING:
    from diffprune.reparam import ReparametrizedModel


def _returns_tensor(result) -> bool:
    return any(isinstance(leaf, torch.Tensor) for leaf in tree_flatten(result)[0])


class ReadProbe(TorchFunctionMode):
    """Records every torch call that computes with a pretrained tensor of a diffed slot.

    While a slot's effective value is in place, the modules that own it hand out that value,
    so a call that still receives the pretrained tensor computes with theta_0 instead of the
    effective weight. Metadata queries (``.dtype``, ``.shape``) return no tensor and are not
    reads.
    """

    def __init__(self, wrapper: "ReparametrizedModel", module_stack: list[str]) -> None:
        super().__init__()
        self.wrapper = wrapper
        self.module_stack = module_stack
        self.watched = {id(slot.base): slot.index for slot in wrapper.slots
                        if not wrapper.is_identity(slot)}
        self.reads: dict[int, set[str]] = {}  # slot index -> names of the modules that read it

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if not self.wrapper._building and _returns_tensor(result):
            for leaf in tree_flatten((args, kwargs))[0]:
                index = self.watched.get(id(leaf))
                if index is not None:
                    reader = self.module_stack[-1] if self.module_stack else None
                    self.reads.setdefault(index, set()).add(reader)
        return result
