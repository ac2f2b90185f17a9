"""Swap effective parameters into a model module by module, without keeping them alive.

Both phases of diff pruning run the pretrained model with *effective* weights
theta_0 + delta in place of its own. Building all effective weights up front would hold a
second copy of the model for the whole forward pass (that is most of why a naive
``torch.nn.utils.parametrize`` version needs 1.75x the memory of full finetuning). Instead:

* a forward pre-hook on each module that owns a diffed tensor builds that tensor's
  effective value just before the module runs, and a forward hook puts the pretrained
  tensor back right after;
* a module that reads a tensor of a submodule inside its own forward (``nn.MultiheadAttention``
  passes ``out_proj.weight`` to ``F.multi_head_attention_forward``; the ``out_proj`` module
  itself never runs) is hooked for that tensor too. Such readers are found on the first
  forward: a probe watches every torch call for a pretrained tensor used in place of its
  effective value, hooks the module that read it and runs the forward again. A diffed
  tensor that the forward never uses at all is refused there, naming it;
* saved-tensor hooks replace an effective weight that autograd wants to keep for backward
  by a recipe, and rebuild it when backward needs it (the values are identical: the diff
  does not change between forward and backward of one step).

Tied tensors (e.g. input embeddings and LM head) are one slot with several owners: one
diff, seen by every owner.

Persistent buffers (BatchNorm running statistics and their counter) are task state: the
training forward updates them like any training does, and ``task_buffers`` names what is
stored with the diff.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from diffprune.layers import is_head
from diffprune.model_tensors import task_buffers, unique_parameters
from diffprune.reparam_modes import ReadProbe, RowLookup


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


def _restore_sparse_flag(module: nn.Module) -> None:
    if hasattr(module, "_diffprune_sparse"):
        module.sparse = module.__dict__.pop("_diffprune_sparse")


class ReparametrizedModel(nn.Module):
    """Base for wrappers that run ``model`` with effective weights for some of its tensors.

    Subclasses implement ``effective(slot)`` (differentiable, used in forward) and
    ``rebuild(slot)`` (the same values without autograd, used when backward asks for a saved
    effective weight).
    """

    def __init__(self, model: nn.Module, head_pattern: str | None = None) -> None:
        """``head_pattern``: the task head (trained densely, not diffed); None = the parameters
        the loader marked as newly initialised (``diffprune.models.head_pattern_of``)."""
        from diffprune.models import head_pattern_of

        super().__init__()
        self.model = model
        head_pattern = head_pattern_of(model, head_pattern)
        self.head_pattern = head_pattern
        self.slots: list[Slot] = []
        self.head_names: list[str] = []
        offset = 0
        for name, aliases, p, owners in unique_parameters(model):
            if is_head(name, head_pattern):
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
        # slot index -> [effective value, how many hooked modules currently need it]
        self._installed: dict[int, list] = {}
        self._row_lookups: list[tuple[nn.Module, Slot, RowLookup]] = []  # the ones active now, innermost last
        self._building = False  # True while an effective value is computed (its reads are ours)
        self._probe: ReadProbe | None = None
        self._probe_used: set[int] = set()
        self._checked = False  # the first forward checks that every slot's effective value is used
        self._released = False
        self._handles = []
        # module name -> names of the slots it reads without owning them (found on the first forward)
        self.readers: dict[str, list[str]] = {}
        owned: dict[int, tuple[nn.Module, list[Slot]]] = {}
        for slot in self.slots:
            slot.base.requires_grad_(False)
            for module, _ in slot.owners:
                slots = owned.setdefault(id(module), (module, []))[1]
                if not any(s is slot for s in slots):
                    slots.append(slot)
        for module, slots in owned.values():
            self._hook(module, slots)

    # -- what subclasses provide -------------------------------------------------------
    # True if ``effective``'s backward accepts a sparse (row-wise) gradient: nn.Embedding
    # owners then produce one, which saves a vocabulary-sized dense gradient per step.
    sparse_embedding_grads = False

    def effective(self, slot: Slot) -> torch.Tensor:
        raise NotImplementedError

    def rebuild(self, slot: Slot) -> torch.Tensor:
        raise NotImplementedError

    # True if effective values live as long as the wrapper (kept up to date, not built per
    # forward): backward then reads them as saved, with no recompute (``rebuild``).
    persistent_effective_weights = False

    # True if ``effective_rows`` is implemented: an nn.Embedding owner's lookups then read the
    # rows of the effective weight instead of the whole weight built (``RowLookup``).
    row_lookups = False

    def effective_rows(self, slot: Slot, ids: torch.Tensor, padding_idx: int, scale_grad_by_freq: bool) -> torch.Tensor:
        """``F.embedding(ids, effective(slot))`` for a lookup without max_norm (``padding_idx`` is
        -1 for none); its gradient must be the one that lookup would give."""
        raise NotImplementedError

    def is_identity(self, slot: Slot) -> bool:
        """True if the slot's effective value is the pretrained tensor itself (nothing to check)."""
        return False

    # -- hooks ---------------------------------------------------------------------------
    def _hook(self, module: nn.Module, slots: list[Slot]) -> None:
        def pre_hook(module, args):
            for slot in slots:
                if self._looks_up_rows(module, slot):
                    self._start_row_lookup(module, slot)
                else:
                    self._install(slot)

        def post_hook(module, args, output):
            for slot in slots:
                if not self._end_row_lookup(module, slot):
                    self._uninstall(slot)

        self._handles.append(module.register_forward_pre_hook(pre_hook))
        self._handles.append(module.register_forward_hook(post_hook, always_call=True))

    def _looks_up_rows(self, module: nn.Module, slot: Slot) -> bool:
        """Whether ``module`` is an embedding whose weight is ``slot`` and whose lookups can take
        the effective weight's rows alone (not when another module already installed it whole)."""
        return (self.row_lookups and isinstance(module, nn.Embedding) and slot.index not in self._installed
                and module._parameters.get("weight") is slot.base)

    def _start_row_lookup(self, module: nn.Module, slot: Slot) -> None:
        if self._probe is not None:
            self._probe_used.add(slot.index)
        mode = RowLookup(self, slot)
        mode.__enter__()
        self._row_lookups.append((module, slot, mode))

    def _end_row_lookup(self, module: nn.Module, slot: Slot) -> bool:
        """Leave the row lookup ``_start_row_lookup`` began for (module, slot); False if none."""
        if not self._row_lookups or self._row_lookups[-1][0] is not module or self._row_lookups[-1][1] is not slot:
            return False
        mode = self._row_lookups.pop()[2]
        mode.__exit__(None, None, None)
        if mode.whole is not None:
            self._uninstall(slot)
        return True

    def _lookup_rows(self, slot: Slot, ids: torch.Tensor, padding_idx: int, scale_grad_by_freq: bool) -> torch.Tensor:
        self._building = True
        try:
            return self.effective_rows(slot, ids, padding_idx, scale_grad_by_freq)
        finally:
            self._building = False

    def _install_whole(self, slot: Slot) -> torch.Tensor:
        """Install the slot's effective value (as a hooked module's pre-hook does) and return it."""
        self._install(slot)
        return self._installed[slot.index][0]

    def _install(self, slot: Slot) -> None:
        """Put the slot's effective value into every owner (once, however many modules need it)."""
        if self._probe is not None:
            self._probe_used.add(slot.index)
        entry = self._installed.get(slot.index)
        if entry is not None:
            entry[1] += 1
            return
        self._building = True
        try:
            value = self.effective(slot)
        finally:
            self._building = False
        self._installed[slot.index] = [value, 1]
        if value is slot.base:
            return
        if value.requires_grad and not self.persistent_effective_weights:
            self._live[value.untyped_storage().data_ptr()] = slot.index
        for module, attr in slot.owners:
            module._parameters[attr] = value
            if (value.requires_grad and self.sparse_embedding_grads and isinstance(module, nn.Embedding)
                    and attr == "weight" and not module.scale_grad_by_freq and not hasattr(module, "_diffprune_sparse")):
                # Only the looked-up rows get a gradient: ask for it as a sparse tensor
                # instead of a dense vocabulary-sized one (torch has no sparse backward for
                # scale_grad_by_freq).
                module._diffprune_sparse = module.sparse
                module.sparse = True

    def _uninstall(self, slot: Slot) -> None:
        entry = self._installed.get(slot.index)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        value = self._installed.pop(slot.index)[0]
        if value is not slot.base:
            self._live.pop(value.untyped_storage().data_ptr(), None)
        for module, attr in slot.owners:
            module._parameters[attr] = slot.base
            _restore_sparse_flag(module)

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

    def _run(self, args, kwargs):
        try:
            with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
                return self.model(*args, **kwargs)
        finally:
            while self._row_lookups:  # a forward that raised may leave its modes on torch's stack
                self._row_lookups.pop()[2].__exit__(None, None, None)
            self._live.clear()
            self._installed.clear()
            for slot in self.slots:  # leave the model clean even if forward raised
                for module, attr in slot.owners:
                    module._parameters[attr] = slot.base
                    _restore_sparse_flag(module)

    def forward(self, *args, **kwargs):
        self._check_usable()
        if not self._checked:
            return self._first_forward(args, kwargs)
        return self._run(args, kwargs)

    # -- the first forward: every diffed tensor's effective value must be what is used --
    def _first_forward(self, args, kwargs):
        """Run a forward under the read probe; hook modules found reading a pretrained tensor
        of another module and run again (buffers and RNG put back first, so the result is
        that of one correct forward); refuse diffed tensors that the forward never uses."""
        buffers = [(b, b.clone()) for b in self.model.buffers()]
        rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        for attempt in range(2):
            misread, used, output = self._probed_run(args, kwargs)
            if not misread:
                break
            if attempt == 1 or None in set().union(*misread.values()):
                self._refuse_misread(misread)
            del output
            modules = dict(self.model.named_modules())
            read_by: dict[str, list[Slot]] = {}
            for index in sorted(misread):
                for reader in misread[index]:
                    read_by.setdefault(reader, []).append(self.slots[index])
            for reader, slots in sorted(read_by.items()):
                self._hook(modules[reader], slots)
                self.readers.setdefault(reader, []).extend(slot.name for slot in slots)
            with torch.no_grad():
                for buffer, original in buffers:
                    buffer.copy_(original)
            torch.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
        unused = [slot.name for slot in self.slots if slot.index not in used and not self.is_identity(slot)]
        if unused:
            raise ValueError(
                f"{len(unused)} diffed parameter(s) are never used by the model's forward, e.g. "
                f"{unused[:5]}: no module that owns them runs and nothing reads them, so their diff "
                f"could not train. Remove those modules from the model, or match them with the "
                f"head pattern ({self.head_pattern!r}) if they belong to the task head")
        self._checked = True
        return output

    def _probed_run(self, args, kwargs):
        stack: list[str] = []
        handles = []

        def enter(name):
            def pre_hook(module, args):
                stack.append(name)
            return pre_hook

        def leave(module, args, output):
            stack.pop()

        for name, module in self.model.named_modules():
            handles.append(module.register_forward_pre_hook(enter(name)))
            handles.append(module.register_forward_hook(leave, always_call=True))
        self._probe = ReadProbe(self, stack)
        self._probe_used = set()
        try:
            with self._probe:
                output = self._run(args, kwargs)
            return self._probe.reads, self._probe_used, output
        finally:
            self._probe = None
            for handle in handles:
                handle.remove()

    def _refuse_misread(self, misread: dict[int, set]) -> None:
        def where(reader):
            return "code outside any module" if reader is None else f"module {reader!r}"

        lines = [f"{self.slots[index].name} (read by {', '.join(where(r) for r in sorted(readers, key=str))})"
                 for index, readers in misread.items()]
        raise ValueError(
            "the model computes with pretrained tensors outside any module that can hook them, so their "
            f"diff would not be applied: {'; '.join(lines[:5])}. Read them inside a module's forward "
            "(the module that reads them is then hooked), or match them with the head pattern")

    # -- lifetime ------------------------------------------------------------------------
    def _check_usable(self) -> None:
        if self._released:
            raise RuntimeError(
                f"this {type(self).__name__} was released (projected): its model now belongs to the "
                f"wrapper that project() returned; use that one")

    def release(self) -> nn.Module:
        """Remove the hooks, return the plain pretrained model (theta_0 untouched), and make this
        wrapper refuse any further use (a later forward would silently run theta_0)."""
        self._check_usable()
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for slot in self.slots:
            slot.base.requires_grad_(True)
        self._released = True
        return self.model

    def head_parameters(self) -> dict[str, nn.Parameter]:
        params = dict(self.model.named_parameters())
        return {name: params[name] for name in self.head_names if name in params}

    def task_buffers(self) -> dict[str, torch.Tensor]:
        """Persistent buffers of the model (e.g. BatchNorm statistics): stored with the diff."""
        return task_buffers(self.model)
