"""L0-ball projection by magnitude pruning, and the fixed-mask finetuning phase.

``project(model, rate)`` keeps exactly round(rate/100 * d) entries of the diff (halves
rounded up, ``share_count``) — the largest |delta| over all diffed tensors together (d =
number of diffed pretrained parameters; the task head is not in d) — and returns the
model's fixed-mask form: from then on only the kept positions' values (and the head) train.
Its trainable state (values, their gradients, optimizer state) is O(nnz), not O(d). The
wrapper it was given is released and refuses any further use.
"""
from __future__ import annotations

import math
from fractions import Fraction

import torch
from torch import nn

from diffprune.diff_pruning_config import check_rate
from diffprune.methods import Method
from diffprune.reparam import ReparametrizedModel, Slot


def share_count(share, total: int) -> int:
    """round(share * total), halves rounded up, computed exactly: the one rounding rule for
    every "this share of the entries" count (the L0 ball here, the sparsification baseline's
    zeros).

    ``share`` is taken as the decimal it is written as (0.35 is 35/100, not the nearest binary
    float), so a count that lands exactly on a half rounds up, not by float luck or by
    Python's round-half-to-even.
    """
    exact = Fraction(str(share)) * total
    return int(math.floor(exact + Fraction(1, 2)))


def kept_count(rate: float, diffed_params: int) -> int:
    """Number of diff entries kept at a sparsity rate in percent (``share_count`` of rate/100)."""
    return share_count(Fraction(str(check_rate(rate))) / 100, diffed_params)


def top_k_positions(dense: dict[str, torch.Tensor], rate: float) -> dict[str, torch.Tensor]:
    """Flat positions of the kept_count(rate, d) largest |delta| entries, over all tensors at once.

    Ties are broken by position (in the order of ``dense``, then flat index: the lower
    position is kept), so the selection is deterministic on every device.
    """
    names = list(dense)
    sizes = [dense[n].numel() for n in names]
    total = sum(sizes)
    k = kept_count(rate, total)
    magnitudes = torch.cat([dense[n].detach().reshape(-1).abs().float() for n in names])
    if not bool(torch.isfinite(magnitudes).all()):
        bad = next(n for n in names if not bool(torch.isfinite(dense[n]).all()))
        raise ValueError(f"the dense diff of {bad} holds NaN or inf: it cannot be ranked by magnitude "
                         "(the run that produced it diverged)")
    if k >= total:
        chosen = torch.arange(total)
    elif k == 0:
        chosen = torch.empty(0, dtype=torch.int64)
    else:
        # Everything above the k-th largest magnitude is kept; of the entries equal to it the
        # lowest positions fill the remaining places (topk's pick among ties is arbitrary).
        threshold = torch.topk(magnitudes, k, sorted=False).values.min()
        above = torch.nonzero(magnitudes > threshold).reshape(-1)
        at_threshold = torch.nonzero(magnitudes == threshold).reshape(-1)[: k - above.numel()]
        chosen = torch.cat([above, at_threshold])
    chosen, _ = torch.sort(chosen.cpu())
    out, start = {}, 0
    bounds = torch.tensor(sizes).cumsum(0)
    owner = torch.bucketize(chosen, bounds, right=True)
    for i, name in enumerate(names):
        positions = chosen[owner == i] - start
        out[name] = positions.to(torch.int64)
        start += sizes[i]
    return out


class _ScatteredValues(torch.autograd.Function):
    """The held effective weight of one slot (theta_0 plus ``values`` at ``positions``, written
    by ``FixedMaskModel.refresh_effective``) as a function of ``values``: the gradient of
    ``values`` is the weight's gradient at the positions, as ``index_add``'s backward gives it."""

    @staticmethod
    def forward(ctx, values, model: "FixedMaskModel", slot: Slot):
        ctx.positions, ctx.values_dtype = model.positions(slot), values.dtype
        # an alias, not the buffer's view itself: autograd takes over the tensor a Function returns
        return model._current(slot).detach()

    @staticmethod
    def backward(ctx, grad):
        return grad.reshape(-1).index_select(0, ctx.positions).to(ctx.values_dtype), None, None


class _ScatteredRows(torch.autograd.Function):
    """Rows ``ids`` of the held effective weight of an embedding slot (a lookup), as a function
    of ``values``: the values the lookup of the whole weight gives, and the gradient it gives
    ``values`` (the weight's gradient at the kept positions), with no vocabulary-sized
    gradient made: the looked-up rows' gradients are summed over the batch's tokens in token
    order, the additions ``embedding_backward`` makes, so the result is the same bit for bit."""

    @staticmethod
    def forward(ctx, values, model: "FixedMaskModel", slot: Slot, ids: torch.Tensor, padding_idx: int,
                scale_grad_by_freq: bool):
        ctx.positions, ctx.values_dtype = model.positions(slot), values.dtype
        ctx.padding_idx, ctx.scale_grad_by_freq, ctx.num_rows = padding_idx, scale_grad_by_freq, slot.shape[0]
        ctx.save_for_backward(ids)
        return torch.embedding(model._current(slot), ids)

    @staticmethod
    def backward(ctx, grad):
        (ids,) = ctx.saved_tensors
        positions = ctx.positions
        if ctx.scale_grad_by_freq:  # counts over the whole batch: the whole gradient, as autograd makes it
            whole = torch.ops.aten.embedding_backward(grad, ids, ctx.num_rows, ctx.padding_idx, True, False)
            return whole.reshape(-1).index_select(0, positions).to(ctx.values_dtype), *([None] * 5)
        width = grad.shape[-1]
        flat_ids, rows_grad = ids.reshape(-1), grad.reshape(-1, width)
        if ctx.padding_idx >= 0:  # the padding row gets no gradient
            keep = flat_ids != ctx.padding_idx
            flat_ids, rows_grad = flat_ids[keep], rows_grad[keep]
        looked_up, which = torch.unique(flat_ids, sorted=True, return_inverse=True)
        sums = torch.zeros(looked_up.numel(), width, dtype=grad.dtype, device=grad.device)
        sums.index_add_(0, which, rows_grad)
        row, column = positions // width, positions % width
        slot_of = torch.searchsorted(looked_up, row).clamp_(max=max(looked_up.numel() - 1, 0))
        out = torch.zeros(positions.numel(), dtype=grad.dtype, device=grad.device)
        if looked_up.numel():
            hit = looked_up[slot_of] == row
            out[hit] = sums[slot_of[hit], column[hit]]
        return out.to(ctx.values_dtype), *([None] * 5)


class FixedMaskModel(ReparametrizedModel):
    """theta_0 with trainable values at fixed positions: theta = theta_0 + scatter(positions, values).

    The effective weights of the tensors with kept positions are held whole, in one flat
    non-persistent buffer per dtype: only the kept entries change when ``values`` does, so
    each forward writes those few entries, all tensors at once (``refresh_effective``),
    instead of building d-sized weights in forward and again for backward, and saved weights
    need no recompute. The cost is one d-sized copy of those pretrained tensors; a training
    step already held as much at its peak.
    """

    persistent_effective_weights = True
    row_lookups = True

    def __init__(self, model: nn.Module, positions: dict[str, torch.Tensor], values: dict[str, torch.Tensor],
                 head_pattern: str | None = None) -> None:
        super().__init__(model, head_pattern)
        known = {alias: slot for slot in self.slots for alias in slot.aliases}
        unknown = set(positions) - set(known)
        if unknown:
            raise ValueError(f"diff names not in this model: {sorted(unknown)[:5]}")
        self.values = nn.ParameterList()
        self._value_index: dict[int, int] = {}
        for slot in self.slots:
            name = next((a for a in slot.aliases if a in positions), None)
            if name is None or positions[name].numel() == 0:
                continue  # untouched tensor: the pretrained value is used as is
            index = positions[name].to(device=slot.base.device, dtype=torch.int64).reshape(-1)
            if index.numel() and (index.min() < 0 or index.max() >= slot.numel):
                raise ValueError(f"positions out of range for {slot.name} ({slot.numel} entries)")
            self.register_buffer(f"positions_{slot.index}", index)
            self._value_index[slot.index] = len(self.values)
            self.values.append(nn.Parameter(values[name].detach().to(device=slot.base.device, dtype=torch.float32).reshape(-1).clone()))
        self._place_effective_weights()

    def _place_effective_weights(self) -> None:
        """Lay the effective weights out: per dtype, one flat buffer (``effective_<k>``) holding
        theta_0 of its tensors one after another, the flat positions of their kept entries in
        it (``kept_<k>``) and theta_0 there (``kept_base_<k>``)."""
        self._groups: list[list[int]] = []  # group k -> the slot indices it holds, in order
        self._place: dict[int, tuple[int, int]] = {}  # slot index -> (group k, offset in its buffer)
        by_dtype: dict[torch.dtype, int] = {}
        for slot in self.slots:
            if slot.index in self._value_index:
                k = by_dtype.setdefault(slot.base.dtype, len(self._groups))
                if k == len(self._groups):
                    self._groups.append([])
                self._groups[k].append(slot.index)
        for k, indices in enumerate(self._groups):
            slots = [self.slots[i] for i in indices]
            offsets = [0]
            for slot in slots:
                self._place[slot.index] = (k, offsets[-1])
                offsets.append(offsets[-1] + slot.numel)
            flat_base = torch.cat([slot.base.detach().reshape(-1) for slot in slots])
            kept = torch.cat([self.positions(slot) + offset for slot, offset in zip(slots, offsets)])
            self.register_buffer(f"effective_{k}", flat_base, persistent=False)
            self.register_buffer(f"kept_{k}", kept, persistent=False)
            self.register_buffer(f"kept_base_{k}", flat_base[kept].clone(), persistent=False)

    @classmethod
    def from_dense(cls, model: nn.Module, dense: dict[str, torch.Tensor], rate: float,
                   head_pattern: str | None = None) -> "FixedMaskModel":
        positions = top_k_positions(dense, rate)
        values = {n: dense[n].detach().reshape(-1)[p.to(dense[n].device)] for n, p in positions.items()}
        return cls(model, positions, values, head_pattern)

    def positions(self, slot: Slot) -> torch.Tensor | None:
        return getattr(self, f"positions_{slot.index}", None) if slot.index in self._value_index else None

    def slot_values(self, slot: Slot) -> nn.Parameter | None:
        i = self._value_index.get(slot.index)
        return None if i is None else self.values[i]

    @property
    def nonzeros(self) -> int:
        return sum(v.numel() for v in self.values)

    def is_identity(self, slot: Slot) -> bool:
        return slot.index not in self._value_index

    @torch.no_grad()
    def refresh_effective(self) -> None:
        """Write the kept entries of every effective weight from ``values``: theta_0 + values
        there, by the one addition ``index_add`` would make. Done at each forward, since
        nothing cheaper tells reliably that ``values`` changed (fused AdamW updates a
        parameter without bumping its version counter); it costs O(kept entries)."""
        for k, indices in enumerate(self._groups):
            buffer = getattr(self, f"effective_{k}")
            values = torch.cat([self.values[self._value_index[i]].detach() for i in indices]).to(buffer.dtype)
            buffer[getattr(self, f"kept_{k}")] = getattr(self, f"kept_base_{k}") + values

    def forward(self, *args, **kwargs):
        self._check_usable()
        self.refresh_effective()
        return super().forward(*args, **kwargs)

    def _current(self, slot: Slot) -> torch.Tensor:
        """The slot's effective weight (a view of its group's buffer), as the last forward wrote
        it; a copy for an embedding with ``max_norm``, whose lookup renormalises the weight it
        is given in place and would otherwise change entries no forward rewrites."""
        k, offset = self._place[slot.index]
        held = getattr(self, f"effective_{k}")[offset: offset + slot.numel].view(slot.shape)
        if any(isinstance(module, nn.Embedding) and module.max_norm is not None for module, _ in slot.owners):
            return held.clone()
        return held

    def effective(self, slot: Slot) -> torch.Tensor:
        values = self.slot_values(slot)
        if values is None:
            return slot.base
        if torch.is_grad_enabled() and values.requires_grad:
            return _ScatteredValues.apply(values, self, slot)
        return self._current(slot)

    def rebuild(self, slot: Slot) -> torch.Tensor:
        return slot.base if self.slot_values(slot) is None else self._current(slot)

    def effective_rows(self, slot: Slot, ids: torch.Tensor, padding_idx: int, scale_grad_by_freq: bool) -> torch.Tensor:
        values = self.slot_values(slot)
        if values is None:
            return torch.embedding(slot.base, ids)
        if torch.is_grad_enabled() and values.requires_grad:
            return _ScatteredRows.apply(values, self, slot, ids, padding_idx, scale_grad_by_freq)
        return torch.embedding(self._current(slot), ids)

    def sparse_diff(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{name: (flat positions, values)} for every tensor with kept entries."""
        self._check_usable()
        return {slot.name: (self.positions(slot), self.slot_values(slot).detach())
                for slot in self.slots if slot.index in self._value_index}

    def dense_diff(self) -> dict[str, torch.Tensor]:
        self._check_usable()
        out = {}
        for slot in self.slots:
            delta = torch.zeros(slot.numel, dtype=torch.float32, device=slot.base.device)
            values = self.slot_values(slot)
            if values is not None:
                delta[self.positions(slot)] = values.detach()
            out[slot.name] = delta.view(slot.shape)
        return out


def project(model: ReparametrizedModel, rate: float) -> FixedMaskModel:
    """Project a diff-pruned model onto the L0 ball of radius kept_count(rate, d).

    Returns a new ``FixedMaskModel`` over the same pretrained model (reused, never copied;
    its head and task buffers, e.g. BatchNorm statistics, carry over as they are). ``model``
    is released: its hooks and O(d) state are freed, and any later use of it raises instead
    of silently running theta_0.
    """
    dense = model.dense_diff()
    head_pattern = model.head_pattern
    base = model.release()
    fixed = FixedMaskModel.from_dense(base, dense, rate, head_pattern)
    fixed.train(model.training)
    return fixed


class FixedMaskFinetuning(Method):
    """Fixed-mask finetuning of a projected diff: the second phase of (non-)adaptive diff pruning.

    Built from a dense diff (the L0 phase's z*w, or theta_ft - theta_0 for the non-adaptive
    baseline) and a rate; ``prepare`` projects and returns the module to train.
    """

    name = "fixed_mask"

    def __init__(self, dense_diff: dict[str, torch.Tensor], rate: float, model_id: str = "",
                 task: str | None = None, labels: list[str] | None = None, **options) -> None:
        super().__init__(**options)
        self.dense = dense_diff
        # None: an instance that only loads a stored diff (``from_artifact``), never prepares.
        self.rate = None if rate is None else check_rate(rate)
        self.model_id = model_id
        # Recorded in the stored diff's header, so a loader can refuse it for another task.
        self.task, self.labels = task, labels
        self.nonzeros = 0
        self.diffed_params = 0

    def prepare(self, model: nn.Module, head_pattern: str) -> FixedMaskModel:
        fixed = FixedMaskModel.from_dense(model, self.dense, self.rate, head_pattern)
        self.dense = None  # the O(d) dense diff is no longer needed
        self.nonzeros, self.diffed_params = fixed.nonzeros, fixed.diffed_params
        for name, p in fixed.model.named_parameters():
            p.requires_grad_(name in fixed.head_names)
        return fixed

    def parameter_groups(self, model: FixedMaskModel, training: dict) -> list[dict]:
        head = list(model.head_parameters().values())
        groups = [{"params": list(model.values), "weight_decay": 0.0}]
        if head:
            groups.append({"params": head, "weight_decay": float(training.get("weight_decay", 0.0))})
        return groups

    def new_parameter_count(self, model: FixedMaskModel) -> int:
        return model.nonzeros + sum(p.numel() for p in model.head_parameters().values())

    def save(self, model: FixedMaskModel, out_dir, identity, dense_diff: str | None = None) -> dict:
        """The payload is the sparse diff (``diffprune.storage``, ``diff.safetensors``)."""
        from pathlib import Path

        from diffprune.artifact import write_config
        from diffprune.storage import CHECKSUM_KEY, FORMAT, read_header, save_diff

        path = save_diff(Path(out_dir) / "diff.safetensors", model, model_id=identity.model_id or self.model_id,
                         rate=self.rate, task=identity.task or self.task,
                         labels=identity.labels if identity.labels is not None else self.labels)
        header = read_header(path, expected_format=FORMAT)
        stored = {key: header[key] for key in ("diffed_params", "nonzeros", "values_dtype", "head", "buffers")}
        return write_config(out_dir, self, identity, path, FORMAT, "diff", header[CHECKSUM_KEY], stored,
                            self.new_parameter_count(model))

    @classmethod
    def from_artifact(cls, config: dict) -> "FixedMaskFinetuning":
        return cls(dense_diff=None, rate=config.get("rate"))

    def load(self, model: nn.Module, artifact) -> nn.Module:
        """Apply the stored sparse diff to ``model`` in place (every check of ``apply_diff_``,
        the base fingerprint first, runs before anything is written)."""
        from diffprune.artifact import check_pairing
        from diffprune.storage import CHECKSUM_KEY, apply_diff_, load_diff

        diff = load_diff(artifact.payload_path)
        check_pairing(artifact, diff.header.get(CHECKSUM_KEY))
        apply_diff_(model, diff)
        return model.eval()

    def stats(self, model: FixedMaskModel) -> dict:
        from diffprune.layers import layer_labels
        from diffprune.stats import diff_stats

        return diff_stats(model.dense_diff(), model.head_pattern, head_numel=sum(
            p.numel() for p in model.head_parameters().values()),
            labels=layer_labels(model.model, model.head_pattern))

    def dense_diff(self, model: FixedMaskModel) -> dict[str, torch.Tensor]:
        return model.dense_diff()
