"""The per-task file: a sparse diff (positions + values) in safetensors, with a JSON header
naming the base model and a fingerprint of it; and the dense diff handed between phases.

Applying a diff to the shared base writes theta_0 + delta into the touched entries and
keeps their original values; reverting writes those originals back. (Subtracting delta
again is not bit-exact in low precision.)

A diff file may come from anywhere (a copied results tree, a download), so nothing in it is
trusted: its header carries a sha256 of the tensor payload (``payload_sha256``, checked on
load) and the task it was trained for, and ``apply_diff_`` validates every tensor against
the model before it writes anything, so a bad file changes nothing.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from diffprune.config import DEFAULT_HEAD_PATTERN
from diffprune.reparam import task_buffers, unique_parameters

FORMAT = "diffprune.sparse_diff"
DENSE_FORMAT = "diffprune.dense_diff"
VERSION = "2"  # 2: the header holds payload_sha256, task and labels (version 1 had none of them)
CHECKSUM_KEY = "payload_sha256"


class BaseModelMismatch(ValueError):
    """The diff was made for another pretrained model."""


class DiffFileError(ValueError):
    """A diff file that is not a sparse diff, is corrupted, or does not fit the model."""


class TaskMismatch(ValueError):
    """The diff was trained for another task (or another label set) than the one asked for."""


class UnverifiedDiffWarning(UserWarning):
    """A diff file from before version 2: its payload has no checksum and its task is unknown."""


def payload_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of ``tensors`` (in name order), as stored."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{str(tensor.dtype).replace('torch.', '')}|{list(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def _diffed_tensors(model: nn.Module, head_pattern: str) -> list[tuple[str, list[str], torch.Tensor]]:
    head = re.compile(head_pattern)
    return [(name, aliases, p) for name, aliases, p, _ in unique_parameters(model)
            if not head.search(name) and p.is_floating_point()]


def fingerprint(model: nn.Module, head_pattern: str | None = None) -> str:
    """sha256 over names, shapes, dtypes and values of every diffed pretrained tensor.

    ``head_pattern`` None: the head is what the loader marked as newly initialised
    (``diffprune.models.head_pattern_of``)."""
    from diffprune.models import head_pattern_of

    head_pattern = head_pattern_of(model, head_pattern)
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
    """A sparse diff as stored: positions (int32 or int64) and values per diffed tensor, the
    dense task head, the JSON header, and the file it came from (named in every error)."""

    positions: dict[str, torch.Tensor]
    values: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor]
    header: dict = field(default_factory=dict)
    source: str = "diff"
    # Task buffers (persistent buffers, e.g. BatchNorm running statistics) as trained: task
    # state like the head, written whole.
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def nonzeros(self) -> int:
        return sum(v.numel() for v in self.values.values())

    def stored_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors under their file keys: what ``payload_sha256`` covers."""
        tensors = {f"diff.{name}.positions": p for name, p in self.positions.items()}
        tensors.update({f"diff.{name}.values": v for name, v in self.values.items()})
        tensors.update({f"head.{name}": h for name, h in self.head.items()})
        tensors.update({f"buffer.{name}": b for name, b in self.buffers.items()})
        return tensors


def save_diff(path, model, model_id: str = "", rate: float | None = None,
              values_dtype: torch.dtype = torch.float32, task: str | None = None,
              labels: list[str] | None = None) -> Path:
    """Write a FixedMaskModel's diff: positions (int32 when they fit) + values + dense head.

    ``task`` and ``labels`` (the head's classes in output order; None for regression and QA)
    go into the header, so that a loader told which task it expects can refuse another's.
    """
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
    buffers = model.task_buffers()
    for name, buffer in buffers.items():
        tensors[f"buffer.{name}"] = buffer.detach()
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    header = {
        "model_id": model_id,
        "fingerprint": fingerprint(base_model, model.head_pattern),
        "head_pattern": model.head_pattern,
        "task": task,
        "labels": None if labels is None else [str(label) for label in labels],
        "rate": rate,
        "diffed_params": model.diffed_params,
        "nonzeros": model.nonzeros,
        "values_dtype": str(values_dtype).replace("torch.", ""),
        "tensors": shapes,
        "head": sorted(head),
        "buffers": sorted(buffers),
        CHECKSUM_KEY: payload_sha256(tensors),
    }
    path = Path(path)
    _atomic_save(tensors, path, {"format": FORMAT, "version": VERSION, "header": json.dumps(header)})
    return path


def _read_metadata(path, expected_format: str | None = None) -> tuple[dict, dict]:
    """(safetensors metadata, parsed JSON header) of a diffprune file; clear errors otherwise."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as error:  # safetensors raises its own error type for any unreadable file
        raise DiffFileError(f"{path} is not a safetensors file, so not a diffprune diff ({error})") from error
    kind = meta.get("format")
    if kind not in (FORMAT, DENSE_FORMAT):
        raise DiffFileError(f"{path} is not a diffprune diff file (format {kind!r})")
    if expected_format == FORMAT and kind == DENSE_FORMAT:
        raise DiffFileError(
            f"{path} is a dense diff ({DENSE_FORMAT}: theta_task - theta_0 for every diffed entry, the "
            "hand-over from a train run to its prune runs), not a sparse task diff; evaluate and apply_diff_ "
            "take the diff.safetensors a prune run writes (runs/<task>/<method key>/rate<R>/seed<S>/diff.safetensors)")
    if expected_format is not None and kind != expected_format:
        raise DiffFileError(f"{path} is a {kind} file, expected a {expected_format} file")
    try:
        header = json.loads(meta["header"])
    except (KeyError, ValueError) as error:
        raise DiffFileError(f"{path}: its header is missing or not JSON ({error})") from error
    if not isinstance(header, dict):
        raise DiffFileError(f"{path}: its header is not a JSON object")
    return meta, header


def read_header(path, expected_format: str | None = None) -> dict:
    """The JSON header of a diff file (``expected_format``: FORMAT or DENSE_FORMAT, else either)."""
    return _read_metadata(path, expected_format)[1]


def _verify_payload(meta: dict, header: dict, tensors: dict[str, torch.Tensor], source: str) -> None:
    expected = header.get(CHECKSUM_KEY)
    if expected is None:
        if meta.get("version") == "1":
            # Accepted, not refused: every structural check of apply_diff_ still runs, and
            # refusing would force rerunning every prune run of an existing results tree.
            warnings.warn(f"{source} is a version-1 diffprune file: it has no payload checksum, so flipped "
                          "bytes cannot be detected (the structural checks still run); rerun the run that "
                          "wrote it to get a checked version-2 file", UnverifiedDiffWarning, stacklevel=3)
            return
        raise DiffFileError(f"{source}: version {meta.get('version')!r} file without {CHECKSUM_KEY} in its "
                            "header (truncated or edited); rerun the run that wrote it")
    actual = payload_sha256(tensors)
    if actual != expected:
        raise DiffFileError(f"{source}: the tensor payload does not match its checksum ({CHECKSUM_KEY} "
                            f"{str(expected)[:19]}..., the bytes give {actual[:19]}...): the file is corrupted; "
                            "copy it again or rerun the run that wrote it")


def check_task(header: dict, task: str, labels: list[str] | None = None, source: str = "diff") -> None:
    """Refuse a diff trained for another task, or for the same task with another label order."""
    stored = header.get("task")
    if stored is None:
        warnings.warn(f"{source} does not say which task it was trained for (written before version 2, or "
                      f"saved without task=): it cannot be checked against {task!r}", UnverifiedDiffWarning,
                      stacklevel=2)
        return
    if stored != task:
        raise TaskMismatch(f"{source} is a diff for task {stored!r}, not {task!r}: evaluate it with "
                           f"--task {stored}, or pass the diff of a {task!r} run")
    stored_labels = header.get("labels")
    if labels is not None and stored_labels is not None and [str(x) for x in labels] != stored_labels:
        raise TaskMismatch(f"{source} was trained for {task!r} with labels {stored_labels} (in output order), "
                           f"but the task has labels {[str(x) for x in labels]}: its head would predict the "
                           "wrong classes")


def _read_verified(path, expected_format: str) -> tuple[dict, dict, dict[str, torch.Tensor]]:
    """(file metadata, header, tensors) of a diff file of ``expected_format``, its payload
    checksum verified."""
    file_meta, header = _read_metadata(path, expected_format=expected_format)
    try:
        raw = load_file(str(path))
    except Exception as error:
        raise DiffFileError(f"{path}: its tensors cannot be read ({error}); the file is truncated or corrupted") from error
    _verify_payload(file_meta, header, raw, str(path))
    return file_meta, header, raw


def load_diff(path, task: str | None = None, labels: list[str] | None = None) -> SparseDiff:
    """Read a sparse diff file and verify its payload checksum.

    With ``task`` (and ``labels``, the classes in output order) a diff trained for another
    task is refused. The tensors are returned as stored; ``apply_diff_`` validates them.
    """
    meta, header, raw = _read_verified(path, FORMAT)
    if task is not None:
        check_task(header, task, labels, str(path))
    positions, values, head, buffers = {}, {}, {}, {}
    for key, tensor in raw.items():
        if key.startswith("head."):
            head[key[len("head."):]] = tensor
        elif key.startswith("buffer."):
            buffers[key[len("buffer."):]] = tensor
        elif key.startswith("diff.") and key.endswith(".positions"):
            positions[key[len("diff."):-len(".positions")]] = tensor
        elif key.startswith("diff.") and key.endswith(".values"):
            values[key[len("diff."):-len(".values")]] = tensor
        else:
            raise DiffFileError(f"{path}: unexpected tensor {key!r} (a sparse diff holds diff.<name>.positions, "
                                "diff.<name>.values, head.<name> and buffer.<name>)")
    return SparseDiff(positions, values, head, header, source=str(path), buffers=buffers)


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
        f"(fingerprint {str(expected)[:19]}...), but the model it is applied to has fingerprint "
        f"{actual[:19]}...: load the same pretrained weights the diff was trained from")


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


@torch.no_grad()
def apply_diff_(model: nn.Module, diff: SparseDiff, check: bool = True) -> AppliedDiff:
    """Write theta_0 + delta into ``model`` in place (and load the task head); keep originals.

    All or nothing: the base fingerprint, the payload checksum and every tensor (positions
    in range and unique, values finite and one per position, head shapes and dtypes, results
    finite in the model's dtype) are checked and every new value computed before the first
    write; an error leaves the model bit-identical and names the file and the tensor.
    """
    where = diff.source
    if check:
        check_base(model, diff.header, where)
    expected = diff.header.get(CHECKSUM_KEY)
    if expected is not None and payload_sha256(diff.stored_tensors()) != expected:
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

    # Stage: every check and every new value, before anything is written.
    diff_writes, head_writes = [], []
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
        if target.shape != value.shape:
            raise BaseModelMismatch(f"{where}: head tensor {name} has shape {tuple(value.shape)} in the diff, "
                                    f"{tuple(target.shape)} in the model (different number of labels?)")
        if value.is_floating_point() != target.is_floating_point():
            raise DiffFileError(f"{where}: head tensor {name} is {str(value.dtype).replace('torch.', '')} in the "
                                f"diff, {str(target.dtype).replace('torch.', '')} in the model")
        converted = value.to(device=target.device, dtype=target.dtype)
        if converted.is_floating_point() and not torch.isfinite(converted).all():
            raise DiffFileError(f"{where}: head tensor {name} is not all finite in "
                                f"{str(target.dtype).replace('torch.', '')}")
        head_writes.append((target, converted))
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
        head_writes.append((target, converted))

    # Write: plain indexed copies of validated data, which cannot fail half-way.
    saved = []
    for flat, index, original, updated in diff_writes:
        flat[index] = updated
        saved.append((flat, index, original))
    for target, converted in head_writes:
        saved.append((target, None, target.clone()))
        target.copy_(converted)
    return AppliedDiff(saved)


def save_dense_diff(path, diff: dict[str, torch.Tensor], head: dict[str, torch.Tensor], meta: dict) -> Path:
    """The hand-over between a dense/L0 run and its projections: delta per tensor + the head."""
    tensors = {f"diff.{k}": v.float() for k, v in diff.items()}
    tensors.update({f"head.{k}": v for k, v in head.items()})
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    header = {**meta, CHECKSUM_KEY: payload_sha256(tensors)}
    path = Path(path)
    _atomic_save(tensors, path, {"format": DENSE_FORMAT, "version": VERSION, "header": json.dumps(header)})
    return path


def load_dense_diff(path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """(delta per tensor, head, meta) of a dense diff, its payload checksum verified."""
    file_meta, meta, raw = _read_verified(path, DENSE_FORMAT)
    meta.pop(CHECKSUM_KEY, None)
    diff = {k[len("diff."):]: v for k, v in raw.items() if k.startswith("diff.")}
    head = {k[len("head."):]: v for k, v in raw.items() if k.startswith("head.")}
    return diff, head, meta
