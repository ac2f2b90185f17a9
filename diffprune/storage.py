"""The per-task file: a sparse diff (positions + values) in safetensors, with a JSON header
naming the base model and a fingerprint of it; and the dense diff handed between phases.

Applying a diff to the shared base writes theta_0 + delta into the touched entries and
keeps their original values; reverting writes those originals back. (Subtracting delta
again is not bit-exact in low precision.)

A diff file may come from anywhere (a copied results tree, a download), so nothing in it is
trusted: its header carries a sha256 of the tensor payload (``payload_sha256``, checked on
load) and the task it was trained for, and ``apply_diff_`` validates every tensor against
the model before it writes anything, so a bad file changes nothing.

Version 3 (``diffprune.packed``) stores the positions Elias-Fano coded near their
information limit and the values in one vector (float32, or bfloat16 / float16 on request);
version 1 and 2 files (per-tensor int32 positions) still load, and ``python -m
diffprune.diffsize convert OLD NEW`` rewrites them as version 3.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from diffprune import packed
from diffprune.atomic import write_with
from diffprune.layers import is_head
from diffprune.model_tensors import unique_parameters
from diffprune.safetensors_file import safetensors_problem

FORMAT = "diffprune.sparse_diff"
DENSE_FORMAT = "diffprune.dense_diff"
# 2: the header holds payload_sha256, task and labels (version 1 had none of them);
# 3: Elias-Fano coded global positions, one values vector, the layout as a tensor.
VERSION = "3"
DENSE_VERSION = "2"
PACKED_VERSIONS = ("3",)
PER_TENSOR_VERSIONS = ("1", "2")
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
    return [(name, aliases, p) for name, aliases, p, _ in unique_parameters(model)
            if not is_head(name, head_pattern) and p.is_floating_point()]


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
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    write_with(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


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
    # Version 3: the layout tensor as read (kept, not re-compressed: zlib's bytes may differ
    # between versions, and the checksum covers them). None: the per-tensor layout of version 2.
    layout_tensor: torch.Tensor | None = None

    @property
    def nonzeros(self) -> int:
        return sum(v.numel() for v in self.values.values())

    def stored_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors under their file keys: what ``payload_sha256`` covers. A version-3 diff is
        packed again (the code is canonical: unchanged positions and values give the stored bytes)."""
        if self.layout_tensor is not None:
            layout = packed.Layout.from_tensor(self.layout_tensor, self.source)
            values_dtype = packed.value_dtype(self.header.get("values_dtype", "float32"))
            tensors = packed.pack(layout, self.positions, self.values, values_dtype)
            tensors[packed.LAYOUT_KEY] = self.layout_tensor
        else:
            tensors = {f"diff.{name}.positions": p for name, p in self.positions.items()}
            tensors.update({f"diff.{name}.values": v for name, v in self.values.items()})
        tensors.update({f"head.{name}": h for name, h in self.head.items()})
        tensors.update({f"buffer.{name}": b for name, b in self.buffers.items()})
        return tensors


def save_diff(path, model, model_id: str = "", rate: float | None = None,
              values_dtype: str | torch.dtype = torch.float32, task: str | None = None,
              labels: list[str] | None = None) -> Path:
    """Write a FixedMaskModel's diff (version 3): coded positions + values + dense head + buffers.

    ``values_dtype``: float32 (what was trained), or bfloat16 / float16 (half the value bytes;
    a value that overflows float16 is refused). ``task`` and ``labels`` (the head's classes in
    output order; None for regression and QA) go into the header, so that a loader told which
    task it expects can refuse another's.
    """
    layout = packed.Layout(tuple((slot.name, tuple(slot.shape), packed.dtype_name(slot.base.dtype))
                                 for slot in model.slots))
    positions, values = {}, {}
    for name, (slot_positions, slot_values) in model.sparse_diff().items():
        positions[name], values[name] = slot_positions, slot_values
    header = {
        "model_id": model_id,
        "fingerprint": fingerprint(model.model, model.head_pattern),
        "head_pattern": model.head_pattern,
        "task": task,
        "labels": None if labels is None else [str(label) for label in labels],
        "rate": rate,
    }
    head = {name: p.detach() for name, p in model.head_parameters().items()}
    buffers = {name: b.detach() for name, b in model.task_buffers().items()}
    diff = SparseDiff(positions, values, head, header, source=str(path), buffers=buffers)
    return write_diff(path, diff, layout, values_dtype)


def layout_of(diff: SparseDiff) -> packed.Layout:
    """The diffed tensors (names, shapes, dtypes in order) of a loaded diff of any version."""
    if diff.layout_tensor is not None:
        return packed.Layout.from_tensor(diff.layout_tensor, diff.source)
    shapes = diff.header.get("tensors")
    if not isinstance(shapes, dict) or not shapes:
        raise DiffFileError(f"{diff.source}: its header lists no diffed tensors (field 'tensors'), so their "
                            "global positions are unknown; rerun the run that wrote it")
    return packed.Layout.from_shapes(shapes)


def write_diff(path, diff: SparseDiff, layout: packed.Layout | None = None,
               values_dtype: str | torch.dtype = torch.float32) -> Path:
    """Write ``diff`` as a version-3 file (``layout``: default, the diff's own). Also converts
    a loaded version-1/2 diff, or changes the values' dtype of a version-3 one."""
    layout = layout or layout_of(diff)
    dtype = packed.value_dtype(values_dtype)
    try:
        tensors = packed.pack(layout, diff.positions, diff.values, dtype)
    except packed.PackError as error:
        raise DiffFileError(f"{path}: cannot write {diff.source}: {error}") from error
    tensors.update({f"head.{name}": h for name, h in diff.head.items()})
    tensors.update({f"buffer.{name}": b for name, b in diff.buffers.items()})
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    derived = ("tensors", "diffed_params", "nonzeros", "values_dtype", "positions_encoding", "head", "buffers",
               CHECKSUM_KEY)
    header = {key: value for key, value in diff.header.items() if key not in derived}
    header.update({
        "diffed_params": layout.universe,
        "nonzeros": diff.nonzeros,
        "values_dtype": packed.dtype_name(dtype),
        "positions_encoding": packed.encoding.ENCODING,
        "head": sorted(diff.head),
        "buffers": sorted(diff.buffers),
        CHECKSUM_KEY: payload_sha256(tensors),
    })
    path = Path(path)
    _atomic_save(tensors, path, {"format": FORMAT, "version": VERSION,
                                 "header": json.dumps(header, separators=(",", ":"), sort_keys=True)})
    return path


def _read_metadata(path, expected_format: str | None = None) -> tuple[dict, dict]:
    """(safetensors metadata, parsed JSON header) of a diffprune file; clear errors otherwise."""
    if not Path(path).is_file():
        raise DiffFileError(f"{path}: no such file")
    problem = safetensors_problem(path)
    if problem is not None:
        raise DiffFileError(problem)
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
            "take the diff.safetensors a prune run writes (runs/<task>/<method key>/rate<R>/seed<S>/diff.safetensors); "
            "to evaluate the train run that wrote it, pass its run directory (its artifact.json)")
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


def check_task(header: dict, task: str, labels: list[str] | None = None, source: str = "diff",
               what: str = "diff") -> None:
    """Refuse a diff (or, ``what``, another artifact: ``diffprune.artifact``) trained for another
    task, or for the same task with another label order."""
    stored = header.get("task")
    if stored is None:
        warnings.warn(f"{source} does not say which task it was trained for (written before version 2, or "
                      f"saved without task=): it cannot be checked against {task!r}", UnverifiedDiffWarning,
                      stacklevel=2)
        return
    if stored != task:
        article = "an" if what[:1] in "aeiou" else "a"
        raise TaskMismatch(f"{source} is {article} {what} for task {stored!r}, not {task!r}: evaluate it with "
                           f"--task {stored}, or pass the {what} of a {task!r} run")
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
    version = meta.get("version")
    head = {key[len("head."):]: t for key, t in raw.items() if key.startswith("head.")}
    buffers = {key[len("buffer."):]: t for key, t in raw.items() if key.startswith("buffer.")}
    rest = {key: t for key, t in raw.items() if not key.startswith(("head.", "buffer."))}
    if version in PACKED_VERSIONS:
        unexpected = sorted(set(rest) - set(packed.PACKED_KEYS))
        if unexpected:
            raise DiffFileError(f"{path}: unexpected tensor {unexpected[0]!r} (a version-3 diff holds "
                                f"{', '.join(packed.PACKED_KEYS)}, head.<name> and buffer.<name>)")
        count = header.get("nonzeros")
        if not isinstance(count, int) or count < 0:
            raise DiffFileError(f"{path}: its header has no entry count (nonzeros); rerun the run that wrote it")
        try:
            layout, positions, values = packed.unpack(rest, count, str(path))
        except packed.PackError as error:
            raise DiffFileError(str(error)) from error
        header["tensors"] = layout.shapes()
        return SparseDiff(positions, values, head, header, source=str(path), buffers=buffers,
                          layout_tensor=rest[packed.LAYOUT_KEY])
    if version not in PER_TENSOR_VERSIONS:
        raise DiffFileError(f"{path} is a diffprune diff of version {version!r}; this diffprune reads versions "
                            f"{', '.join(PER_TENSOR_VERSIONS + PACKED_VERSIONS)}: update diffprune to read it")
    positions, values = {}, {}
    for key, tensor in rest.items():
        if key.startswith("diff.") and key.endswith(".positions"):
            positions[key[len("diff."):-len(".positions")]] = tensor
        elif key.startswith("diff.") and key.endswith(".values"):
            values[key[len("diff."):-len(".values")]] = tensor
        else:
            raise DiffFileError(f"{path}: unexpected tensor {key!r} (a sparse diff holds diff.<name>.positions, "
                                "diff.<name>.values, head.<name> and buffer.<name>)")
    return SparseDiff(positions, values, head, header, source=str(path), buffers=buffers)


def save_dense_diff(path, diff: dict[str, torch.Tensor], head: dict[str, torch.Tensor], meta: dict) -> Path:
    """The hand-over between a dense/L0 run and its projections: delta per tensor + the head."""
    tensors = {f"diff.{k}": v.float() for k, v in diff.items()}
    tensors.update({f"head.{k}": v for k, v in head.items()})
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    header = {**meta, CHECKSUM_KEY: payload_sha256(tensors)}
    path = Path(path)
    _atomic_save(tensors, path, {"format": DENSE_FORMAT, "version": DENSE_VERSION, "header": json.dumps(header)})
    return path


def load_dense_diff(path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """(delta per tensor, head, meta) of a dense diff, its payload checksum verified."""
    file_meta, meta, raw = _read_verified(path, DENSE_FORMAT)
    meta.pop(CHECKSUM_KEY, None)
    diff = {k[len("diff."):]: v for k, v in raw.items() if k.startswith("diff.")}
    head = {k[len("head."):]: v for k, v in raw.items() if k.startswith("head.")}
    return diff, head, meta


APPLYING_NAMES = ("AppliedDiff", "StagedDiff", "apply_diff_", "check_base", "stage_diff")


def __getattr__(name: str):
    """Applying a diff lives in ``diffprune.applying`` (which imports this module); its names
    stay importable from here, resolved on first use so that neither import comes first."""
    if name in APPLYING_NAMES:
        from diffprune import applying

        return getattr(applying, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

