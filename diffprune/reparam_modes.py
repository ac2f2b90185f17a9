"""The torch-function modes a ``ReparametrizedModel`` forward runs under.

* ``ReadProbe`` (the first forward only) records every torch call that computes with a
  pretrained tensor of a diffed slot, so the modules that read a tensor they do not own are
  found and hooked (``ReparametrizedModel._first_forward``).
* ``RowLookup`` (while an ``nn.Embedding`` that owns a slot runs) answers the module's lookup
  ``F.embedding(ids, theta_0)`` with the looked-up rows of the effective weight, so the
  effective weight is never built whole: a batch reads a few thousand rows of a vocabulary
  (the word embeddings are about half of a BERT's entries).
"""
from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

if TYPE_CHECKING:
    from diffprune.reparam import ReparametrizedModel, Slot

_EMBEDDING_SIGNATURE = inspect.signature(F.embedding)


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


class RowLookup(TorchFunctionMode):
    """Active while an ``nn.Embedding`` owner of ``slot`` runs, with the pretrained tensor left
    in place: its lookup ``F.embedding(ids, theta_0, ...)`` returns
    ``wrapper.effective_rows(slot, ids, padding_idx, scale_grad_by_freq)`` instead, the rows
    ``ids`` of the effective weight. Any other call that reads the pretrained tensor (a
    ``max_norm`` lookup renormalises the weight it is given; an embedding subclass may compute
    with its weight) gets the whole effective weight, installed as a hooked module would get
    it (``whole`` then says so), so no computation sees theta_0."""

    def __init__(self, wrapper: "ReparametrizedModel", slot: "Slot") -> None:
        super().__init__()
        self.wrapper, self.slot = wrapper, slot
        self.whole: torch.Tensor | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        base = self.slot.base
        if self.whole is None and func is F.embedding:
            call = _EMBEDDING_SIGNATURE.bind(*args, **kwargs)
            call.apply_defaults()
            options = call.arguments
            if options["weight"] is base and options["max_norm"] is None:
                padding_idx = options["padding_idx"]
                if padding_idx is None:
                    padding_idx = -1  # what F.embedding passes on for "none"
                elif padding_idx < 0:
                    padding_idx += base.shape[0]
                return self.wrapper._lookup_rows(self.slot, options["input"], padding_idx,
                                                 bool(options["scale_grad_by_freq"]))
        if any(leaf is base for leaf in tree_flatten((args, kwargs))[0]):
            if self.whole is None:
                self.whole = self.wrapper._install_whole(self.slot)
            whole = self.whole
            args, kwargs = tree_map(lambda leaf: whole if leaf is base else leaf, (args, kwargs))
        return func(*args, **kwargs)
