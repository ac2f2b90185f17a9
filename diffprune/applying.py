"""Applying a sparse diff to the shared base model in place, all or nothing, and reverting it.

Applying writes theta_0 + delta into the touched entries and keeps their original values;
reverting writes those originals back (subtracting delta again is not bit-exact in low
precision). Nothing in a diff is trusted: the base fingerprint, the payload checksum and
every tensor are checked, and every new value computed, before the first write.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from diffprune import packed
from diffprune.diff_pruning_config import DEFAULT_HEAD_PATTERN
from diffprune.model_tensors import task_buffers, unique_parameters
from diffprune.safetensors_file import first_difference
from diffprune.storage import (CHECKSUM_KEY, BaseModelMismatch, DiffFileError, SparseDiff, _diffed_tensors,
                               fingerprint, payload_sha256)


class AppliedDiff:
    """Handle returned by ``apply_diff_``; ``revert()`` restores the base bit for bit."""

    def __init__(self, saved: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]]) -> None:
        self._saved = saved

    @torch.no_grad()
    def revert(self) -> None:
        for target, positions, original in reversed(self._saved):
            if positions is None:
                target.copy_(original)
            else:
                target.view(-1)[positions] = original
        self._saved = []


def _stored_checksum(diff: SparseDiff) -> str | None:
    """payload_sha256 of what ``diff`` would store; None if it cannot be stored (edited positions
    that repeat or leave the tensor), which never matches a header's checksum."""
    try:
        return payload_sha256(diff.stored_tensors())
    except packed.PackError:
        return None


def _dtype_names(dtypes) -> str:
    return ", ".join(sorted({str(d).replace("torch.", "") for d in dtypes})) or "?"


def check_base(model: nn.Module, header: dict, source: str = "this diff") -> None:
    expected = header.get("fingerprint")
    if expected is None:
        raise BaseModelMismatch(f"{source} names no base model fingerprint in its header: it was not written "
                                "by save_diff (a prune run's diff.safetensors), so it cannot be checked against the base")
    head_pattern = header.get("head_pattern", DEFAULT_HEAD_PATTERN)
    actual = fingerprint(model, head_pattern)
    if expected == actual:
        return
    stored_dtypes = {entry.get("dtype") for entry in (header.get("tensors") or {}).values() if isinstance(entry, dict)}
    model_dtypes = {p.dtype for _, _, p in _diffed_tensors(model, head_pattern)}
    if stored_dtypes and _dtype_names(stored_dtypes) != _dtype_names(model_dtypes):
        raise BaseModelMismatch(
            f"{source} was made for base model {header.get('model_id') or '?'} in {_dtype_names(stored_dtypes)}, "
            f"but the model it is applied to holds its pretrained tensors in {_dtype_names(model_dtypes)}: load the "
            f"pretrained weights in {_dtype_names(stored_dtypes)} (e.g. torch_dtype), then apply the diff")
    raise BaseModelMismatch(
        f"{source} was made for base model {header.get('model_id') or '?'} "
        f"(fingerprint {expected}), but the model it is applied to has fingerprint {actual} "
        f"({first_difference(str(expected), actual)}): load the same pretrained weights the diff was trained from")


def _validate_entries(name: str, positions: torch.Tensor, values: torch.Tensor, numel: int, where: str) -> None:
    """Positions: 1-D integers, in [0, numel), no duplicates; values: 1-D floats, finite, one per position."""
    if positions.dtype not in (torch.int32, torch.int64) or positions.ndim != 1:
        raise DiffFileError(f"{where}: positions of {name} must be a 1-D int32/int64 tensor, "
                            f"got {str(positions.dtype).replace('torch.', '')} of shape {tuple(positions.shape)}")
    if not values.is_floating_point() or values.ndim != 1:
        raise DiffFileError(f"{where}: values of {name} must be a 1-D floating tensor, "
                            f"got {str(values.dtype).replace('torch.', '')} of shape {tuple(values.shape)}")
    if values.numel() != positions.numel():
        raise DiffFileError(f"{where}: {name} has {positions.numel()} positions but {values.numel()} values")
    if positions.numel() == 0:
        return
    low, high = int(positions.min()), int(positions.max())
    if low < 0 or high >= numel:
        raise DiffFileError(f"{where}: positions of {name} must lie in [0, {numel}), found "
                            f"{low if low < 0 else high}")
    if torch.unique(positions).numel() != positions.numel():
        raise DiffFileError(f"{where}: positions of {name} repeat an entry")
    if not torch.isfinite(values).all():
        raise DiffFileError(f"{where}: values of {name} are not all finite (NaN or inf)")


@dataclass
class StagedDiff:
    """A validated diff with every new value computed, nothing written yet.

    entries: (flat target, int64 index, original values, theta_0 + delta in the model's dtype);
    heads: (name, model parameter, head tensor in the model's dtype and device);
    buffers: (model buffer, task value)."""

    entries: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]
    heads: list[tuple[str, nn.Parameter, torch.Tensor]]
    buffers: list[tuple[torch.Tensor, torch.Tensor]]


@torch.no_grad()
def apply_diff_(model: nn.Module, diff: SparseDiff, check: bool = True) -> AppliedDiff:
    """Write theta_0 + delta into ``model`` in place (and load the task head); keep originals.

    All or nothing: the base fingerprint, the payload checksum and every tensor (positions
    in range and unique, values finite and one per position, head shapes and dtypes, results
    finite in the model's dtype) are checked and every new value computed before the first
    write; an error leaves the model bit-identical and names the file and the tensor.
    """
    staged = stage_diff(model, diff, check)
    # Write: plain indexed copies of validated data, which cannot fail half-way.
    saved = []
    for flat, index, original, updated in staged.entries:
        flat[index] = updated
        saved.append((flat, index, original))
    for target, converted in [(p.data, head) for _, p, head in staged.heads] + staged.buffers:
        saved.append((target, None, target.clone()))
        target.copy_(converted)
    return AppliedDiff(saved)


@torch.no_grad()
def stage_diff(model: nn.Module, diff: SparseDiff, check: bool = True, head_shapes_may_differ: bool = False
               ) -> StagedDiff:
    """Every check of ``apply_diff_`` and every new value, without writing anything.

    ``head_shapes_may_differ``: accept head tensors whose first dimension (the labels) differs
    from the model's, for a caller that swaps whole head tensors (``TaskBank``)."""
    where = diff.source
    if check:
        check_base(model, diff.header, where)
    expected = diff.header.get(CHECKSUM_KEY)
    if expected is not None and _stored_checksum(diff) != expected:
        raise DiffFileError(f"{where}: the tensors do not match the payload checksum of its header "
                            "(changed after loading, or a corrupted file)")
    params, owner = {}, {}
    for name, aliases, p, _ in unique_parameters(model):
        for alias in aliases:
            params[alias] = p
            owner[alias] = name
    missing = [n for n in list(diff.positions) + list(diff.values) + list(diff.head) if n not in params]
    if missing:
        raise BaseModelMismatch(f"{where} names tensors this model lacks: {missing[:5]}")
    if set(diff.positions) != set(diff.values):
        unpaired = sorted(set(diff.positions) ^ set(diff.values))
        raise DiffFileError(f"{where}: positions and values must come in pairs; unpaired: {unpaired[:5]}")
    touched: dict[str, str] = {}
    for name in list(diff.positions) + list(diff.head):
        if owner[name] in touched:
            other = touched[owner[name]]
            what = (f"{name} is both diffed and stored as a head tensor" if other == name
                    else f"{name} and {other} are the same (tied) tensor of the model")
            raise DiffFileError(f"{where}: {what}; a diff names each tensor once")
        touched[owner[name]] = name

    diff_writes, head_writes, buffer_writes = [], [], []
    for name, positions in diff.positions.items():
        target = params[name].data
        values = diff.values[name]
        _validate_entries(name, positions, values, target.numel(), where)
        shape = (diff.header.get("tensors") or {}).get(name, {}).get("shape")
        if shape is not None and list(shape) != list(target.shape):
            raise BaseModelMismatch(f"{where}: {name} has shape {tuple(shape)} in the diff, "
                                    f"{tuple(target.shape)} in the model")
        flat = target.view(-1)  # a non-contiguous tensor fails here, before any write
        index = positions.to(device=target.device, dtype=torch.int64)
        original = flat[index].clone()
        updated = (original.float() + values.to(target.device).float()).to(target.dtype)
        if not torch.isfinite(updated).all():
            raise DiffFileError(f"{where}: theta_0 + delta of {name} overflows {str(target.dtype).replace('torch.', '')}")
        diff_writes.append((flat, index, original, updated))
    for name, value in diff.head.items():
        target = params[name].data
        relabelled = head_shapes_may_differ and value.shape[1:] == target.shape[1:]
        if target.shape != value.shape and not relabelled:
            raise BaseModelMismatch(f"{where}: head tensor {name} has shape {tuple(value.shape)} in the diff, "
                                    f"{tuple(target.shape)} in the model (different number of labels?)")
        if value.is_floating_point() != target.is_floating_point():
            raise DiffFileError(f"{where}: head tensor {name} is {str(value.dtype).replace('torch.', '')} in the "
                                f"diff, {str(target.dtype).replace('torch.', '')} in the model")
        converted = value.to(device=target.device, dtype=target.dtype)
        if converted.is_floating_point() and not torch.isfinite(converted).all():
            raise DiffFileError(f"{where}: head tensor {name} is not all finite in "
                                f"{str(target.dtype).replace('torch.', '')}")
        head_writes.append((name, params[name], converted))
    model_buffers = task_buffers(model)
    for name, value in diff.buffers.items():
        target = model_buffers.get(name)
        if target is None:
            raise BaseModelMismatch(f"{where}: task buffer {name} (e.g. BatchNorm statistics) is not a persistent "
                                    "buffer of this model")
        if target.shape != value.shape or target.is_floating_point() != value.is_floating_point():
            raise BaseModelMismatch(f"{where}: task buffer {name} is {str(value.dtype).replace('torch.', '')} "
                                    f"{tuple(value.shape)} in the diff, {str(target.dtype).replace('torch.', '')} "
                                    f"{tuple(target.shape)} in the model")
        converted = value.to(device=target.device, dtype=target.dtype)
        if converted.is_floating_point() and not torch.isfinite(converted).all():
            raise DiffFileError(f"{where}: task buffer {name} is not all finite")
        buffer_writes.append((target, converted))
    return StagedDiff(diff_writes, head_writes, buffer_writes)
