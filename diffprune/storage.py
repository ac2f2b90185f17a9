"""The per-task file: a sparse diff (positions + values) in safetensors, with a JSON header
naming the base model and a fingerprint of it; and the dense diff handed between phases.

Applying a diff to the shared base writes theta_0 + delta into the touched entries and
keeps their original values; reverting writes those originals back. (Subtracting delta
again is not bit-exact in low precision.)
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from diffprune.config import DEFAULT_HEAD_PATTERN
from diffprune.reparam import unique_parameters

FORMAT = "diffprune.sparse_diff"
DENSE_FORMAT = "diffprune.dense_diff"
VERSION = "1"


class BaseModelMismatch(ValueError):
    """The diff was made for another pretrained model."""


def _diffed_tensors(model: nn.Module, head_pattern: str) -> list[tuple[str, list[str], torch.Tensor]]:
    head = re.compile(head_pattern)
    return [(name, aliases, p) for name, aliases, p, _ in unique_parameters(model)
            if not head.search(name) and p.is_floating_point()]


def fingerprint(model: nn.Module, head_pattern: str = DEFAULT_HEAD_PATTERN) -> str:
    """sha256 over names, shapes, dtypes and values of every diffed pretrained tensor."""
    digest = hashlib.sha256()
    for name, _, p in _diffed_tensors(model, head_pattern):
        tensor = p.detach().cpu().contiguous()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


@dataclass
class SparseDiff:
    positions: dict[str, torch.Tensor]
    values: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor]
    header: dict = field(default_factory=dict)

    @property
    def nonzeros(self) -> int:
        return sum(v.numel() for v in self.values.values())


def save_diff(path, model, model_id: str = "", rate: float | None = None,
              values_dtype: torch.dtype = torch.float32) -> Path:
    """Write a FixedMaskModel's diff: positions (int32 when they fit) + values + dense head."""
    tensors, shapes = {}, {}
    base_model = model.model
    for slot in model.slots:
        shapes[slot.name] = {"shape": list(slot.shape), "dtype": str(slot.base.dtype).replace("torch.", "")}
    for name, (positions, values) in model.sparse_diff().items():
        index_dtype = torch.int32 if shapes[name] and torch.Size(shapes[name]["shape"]).numel() < 2**31 else torch.int64
        tensors[f"diff.{name}.positions"] = positions.to(index_dtype)
        tensors[f"diff.{name}.values"] = values.to(values_dtype)
    head = model.head_parameters()
    for name, p in head.items():
        tensors[f"head.{name}"] = p.detach()
    header = {
        "model_id": model_id,
        "fingerprint": fingerprint(base_model, model.head_pattern),
        "head_pattern": model.head_pattern,
        "rate": rate,
        "diffed_params": model.diffed_params,
        "nonzeros": model.nonzeros,
        "values_dtype": str(values_dtype).replace("torch.", ""),
        "tensors": shapes,
        "head": sorted(head),
    }
    path = Path(path)
    _atomic_save(tensors, path, {"format": FORMAT, "version": VERSION, "header": json.dumps(header)})
    return path


def read_header(path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") not in (FORMAT, DENSE_FORMAT):
        raise ValueError(f"{path} is not a diffprune diff file (format {meta.get('format')!r})")
    return json.loads(meta["header"])


def load_diff(path) -> SparseDiff:
    header = read_header(path)
    raw = load_file(str(path))
    positions, values, head = {}, {}, {}
    for key, tensor in raw.items():
        if key.startswith("head."):
            head[key[len("head."):]] = tensor
        elif key.endswith(".positions"):
            positions[key[len("diff."):-len(".positions")]] = tensor.to(torch.int64)
        elif key.endswith(".values"):
            values[key[len("diff."):-len(".values")]] = tensor
    return SparseDiff(positions, values, head, header)


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


def check_base(model: nn.Module, header: dict) -> None:
    expected = header.get("fingerprint")
    actual = fingerprint(model, header.get("head_pattern", DEFAULT_HEAD_PATTERN))
    if expected != actual:
        raise BaseModelMismatch(
            f"this diff was made for base model {header.get('model_id') or '?'} "
            f"(fingerprint {str(expected)[:19]}...), but the model it is applied to has fingerprint "
            f"{actual[:19]}...: load the same pretrained weights the diff was trained from")


@torch.no_grad()
def apply_diff_(model: nn.Module, diff: SparseDiff, check: bool = True) -> AppliedDiff:
    """Write theta_0 + delta into ``model`` in place (and load the task head); keep originals."""
    if check:
        check_base(model, diff.header)
    params = {}
    for name, aliases, p, _ in unique_parameters(model):
        for alias in aliases:
            params[alias] = p
    missing = [n for n in list(diff.positions) + list(diff.head) if n not in params]
    if missing:
        raise BaseModelMismatch(f"diff names tensors this model lacks: {missing[:5]}")
    saved = []
    for name, positions in diff.positions.items():
        target = params[name].data
        positions = positions.to(target.device)
        original = target.view(-1)[positions].clone()
        updated = original.float() + diff.values[name].to(target.device).float()
        target.view(-1)[positions] = updated.to(target.dtype)
        saved.append((target, positions, original))
    for name, value in diff.head.items():
        target = params[name].data
        if target.shape != value.shape:
            raise BaseModelMismatch(f"head tensor {name} has shape {tuple(value.shape)} in the diff, "
                                    f"{tuple(target.shape)} in the model (different number of labels?)")
        saved.append((target, None, target.clone()))
        target.copy_(value.to(target.dtype))
    return AppliedDiff(saved)


def save_dense_diff(path, diff: dict[str, torch.Tensor], head: dict[str, torch.Tensor], meta: dict) -> Path:
    """The hand-over between a dense/L0 run and its projections: delta per tensor + the head."""
    tensors = {f"diff.{k}": v.float() for k, v in diff.items()}
    tensors.update({f"head.{k}": v for k, v in head.items()})
    path = Path(path)
    _atomic_save(tensors, path, {"format": DENSE_FORMAT, "version": VERSION, "header": json.dumps(meta)})
    return path


def load_dense_diff(path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    meta = read_header(path)
    raw = load_file(str(path))
    diff = {k[len("diff."):]: v for k, v in raw.items() if k.startswith("diff.")}
    head = {k[len("head."):]: v for k, v in raw.items() if k.startswith("head.")}
    return diff, head, meta
