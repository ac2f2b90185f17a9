"""One artifact format for every method: a safetensors payload plus ``artifact.json``.

Every run stores what its task needs on top of the shared base model as ONE payload file and
ONE JSON config (``ARTIFACT_NAME``) beside it::

    {"format": "diffprune.artifact", "version": 1,
     "method": "lora", "method_key": "lora_r8", "options": {...},   # the run's method entry
     "stored_by": "lora", "load_options": {...},   # the Method whose load() reads the payload
     "phase": "train", "rate": null, "seed": 0, "task": "rte", "labels": [...],
     "base": {"model_id": ..., "fingerprint": "sha256:...", "head_pattern": ...},
     "payload": {"file": "task_state.safetensors", "format": "diffprune.task_state",
                 "kind": "task_state", "sha256": "sha256:...", "bytes": 12345},
     "stored": {"param": [names], "buffer": [names]}, "new_params": 123, "report": {...}}

The payload is one of three formats, each with the checksum of its tensors in its header
(``payload.sha256`` repeats it, so a config paired with another run's payload is refused):

* ``diffprune.task_state`` (``STATE_NAME``): every method's default, ``Method.save``: each
  tensor the method trains (``requires_grad`` after ``prepare``) as ``param.<name>`` and the
  task buffers (BatchNorm statistics) as ``buffer.<name>``. ``Method.load`` runs ``prepare``
  on a fresh base, which builds the same modules (LoRA factors, adapters, masks), and copies
  the tensors in strictly: every stored name must be a trainable tensor or task buffer of the
  prepared model and every one of those must be stored, with equal shape and dtype. So a new
  baseline whose ``prepare`` builds the same structure every time needs no code to be saved,
  loaded and evaluated.
* ``diffprune.sparse_diff`` (``diff.safetensors``, ``diffprune.storage``): a prune run's task.
* ``diffprune.dense_diff`` (``dense_diff.safetensors``): diff pruning's L0 phase, whose
  hand-over to its prune runs is its task model too (``handover.apply_dense_diff_``).

``load_task_model`` reads an artifact (a run directory, its ``artifact.json``, or a sparse
diff file on its own, as older runs stored them), refuses another task or base, and calls the
storing method's ``load``. Nothing is unpickled; every file is written atomically.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from diffprune.atomic import write_json, write_with

ARTIFACT_NAME = "artifact.json"
FORMAT = "diffprune.artifact"
VERSION = 1
STATE_NAME = "task_state.safetensors"
STATE_FORMAT = "diffprune.task_state"
STATE_VERSION = "1"
STATE_KIND = "task_state"  # the payload's kind in what a run exported ({kind: file name})
PARAM, BUFFER = "param.", "buffer."


class ArtifactError(ValueError):
    """Not a diffprune artifact, a corrupted one, or one that does not fit the model."""


@dataclass(frozen=True)
class ArtifactIdentity:
    """What an artifact records about the run that made it (the runner fills it from its plan).

    ``fingerprint`` is ``storage.fingerprint`` of the pretrained body, taken before ``prepare``
    and training change or wrap it; ``labels`` are the head's classes in output order."""

    model_id: str
    fingerprint: str
    head_pattern: str
    task: str | None = None
    labels: list[str] | None = None
    method: str | None = None        # the run's registry method; default: the storing method
    method_key: str | None = None
    options: dict | None = None      # the run's method options; default: the storing method's
    phase: str = "train"
    rate: float | None = None
    seed: int | None = None

    @classmethod
    def of_base(cls, model: nn.Module, head_pattern: str | None = None, model_id: str = "",
                **fields) -> "ArtifactIdentity":
        """Of a pretrained ``model`` as loaded, before ``prepare``."""
        from diffprune.models import head_pattern_of
        from diffprune.storage import fingerprint

        head_pattern = head_pattern_of(model, head_pattern)
        return cls(model_id=model_id, fingerprint=fingerprint(model, head_pattern), head_pattern=head_pattern,
                   **fields)


@dataclass
class Artifact:
    """An artifact as read: its config, its payload file, and the path given (named in errors)."""

    config: dict
    payload_path: Path
    source: str

    @property
    def base(self) -> dict:
        return self.config["base"]

    @property
    def head_pattern(self) -> str:
        return self.base["head_pattern"]


def write_config(out_dir, method, identity: ArtifactIdentity, payload: Path, payload_format: str, kind: str,
                 checksum: str, stored: dict, new_params: int) -> dict:
    """Write ``out_dir/ARTIFACT_NAME`` for a payload already written; return the config."""
    config = {
        "format": FORMAT, "version": VERSION,
        "method": identity.method or method.name, "method_key": identity.method_key,
        "options": dict(identity.options if identity.options is not None else method.options),
        "stored_by": method.name, "load_options": method.artifact_options(),
        "phase": identity.phase, "rate": identity.rate, "seed": identity.seed,
        "task": identity.task, "labels": None if identity.labels is None else [str(x) for x in identity.labels],
        "base": {"model_id": identity.model_id, "fingerprint": identity.fingerprint,
                 "head_pattern": identity.head_pattern},
        "payload": {"file": payload.name, "format": payload_format, "kind": kind, "sha256": checksum,
                    "bytes": payload.stat().st_size},
        "stored": stored, "new_params": int(new_params), "report": method.report(),
    }
    from diffprune.run_record import json_safe

    config = json_safe(config)
    write_json(Path(out_dir) / ARTIFACT_NAME, config)
    return config


# ----------------------------------------------------------------------------- task_state payloads

def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``param.<name>`` for each tensor that trains, ``buffer.<name>`` for each task buffer."""
    from diffprune.reparam import task_buffers

    state = {PARAM + name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    state.update({BUFFER + name: b.detach() for name, b in task_buffers(model).items()})
    return state


def save_state(method, model: nn.Module, out_dir, identity: ArtifactIdentity) -> dict:
    """``Method.save``'s default: ``method.stored_state(model)`` as a task_state payload."""
    from safetensors.torch import save_file

    from diffprune.storage import CHECKSUM_KEY, payload_sha256

    # Detached, contiguous, non-aliasing CPU copies: what safetensors requires.
    tensors = {k: t.detach().to("cpu", copy=True).contiguous() for k, t in method.stored_state(model).items()}
    checksum = payload_sha256(tensors)
    header = {"method": method.name, "task": identity.task, "fingerprint": identity.fingerprint,
              CHECKSUM_KEY: checksum}
    metadata = {"format": STATE_FORMAT, "version": STATE_VERSION, "header": json.dumps(header, sort_keys=True)}
    path = Path(out_dir) / STATE_NAME
    write_with(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    stored: dict[str, list[str]] = {}
    for key in sorted(tensors):
        prefix, name = key.split(".", 1)
        stored.setdefault(prefix, []).append(name)
    return write_config(out_dir, method, identity, path, STATE_FORMAT, STATE_KIND, checksum, stored,
                        method.new_parameter_count(model))


def read_state(artifact: Artifact) -> dict[str, torch.Tensor]:
    """The tensors of a task_state payload, checked: readable, its checksum, its pairing."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from diffprune.safetensors_file import safetensors_problem
    from diffprune.storage import CHECKSUM_KEY, payload_sha256

    path = artifact.payload_path
    problem = safetensors_problem(path)
    if problem is not None:
        raise ArtifactError(problem)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        header = json.loads(metadata.get("header", ""))
        tensors = load_file(str(path))
    except Exception as error:  # safetensors and json raise their own types for an unreadable file
        raise ArtifactError(f"{path} cannot be read as a task_state payload ({error}): copy it again or rerun "
                            "the run that wrote it") from error
    if metadata.get("format") != STATE_FORMAT or not isinstance(header, dict):
        raise ArtifactError(f"{path} is not a {STATE_FORMAT} payload (format {metadata.get('format')!r})")
    if metadata.get("version") != STATE_VERSION:
        raise ArtifactError(f"{path} is a {STATE_FORMAT} payload of version {metadata.get('version')!r}; this "
                            f"diffprune reads version {STATE_VERSION}: update diffprune to read it")
    check_pairing(artifact, header.get(CHECKSUM_KEY))
    actual = payload_sha256(tensors)
    if actual != header.get(CHECKSUM_KEY):
        raise ArtifactError(f"{path}: the tensors do not match the checksum in its header ({actual[:19]}... vs "
                            f"{str(header.get(CHECKSUM_KEY))[:19]}...): the file is corrupted; copy it again or "
                            "rerun the run that wrote it")
    return tensors


@torch.no_grad()
def load_trainable_state_(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``param.<name>`` / ``buffer.<name>`` tensors into a prepared model, strictly and all
    or nothing: every name, shape and dtype is checked before the first write."""
    from diffprune.reparam import task_buffers

    targets = {PARAM + n: p for n, p in model.named_parameters() if p.requires_grad}
    targets.update({BUFFER + n: b for n, b in task_buffers(model).items()})
    unexpected, missing = sorted(set(tensors) - set(targets)), sorted(set(targets) - set(tensors))
    if unexpected or missing:
        raise ArtifactError(
            f"{source}: the stored tensors do not fit the model its method builds on this base (stored, not in "
            f"the model: {unexpected[:5]}; in the model, not stored: {missing[:5]}): it was written with other "
            "options or by another version of the method; rerun the run that wrote it")
    for key, value in tensors.items():
        target = targets[key]
        if value.shape != target.shape or value.dtype != target.dtype:
            raise ArtifactError(f"{source}: {key} is {str(value.dtype).replace('torch.', '')} "
                                f"{tuple(value.shape)} in the payload, {str(target.dtype).replace('torch.', '')} "
                                f"{tuple(target.shape)} in the model: it was written for another model or options")
    for key, value in tensors.items():
        targets[key].copy_(value.to(targets[key].device))


def load_state(method, model: nn.Module, artifact: Artifact) -> nn.Module:
    """``Method.load``'s default: ``prepare`` a fresh base as the run did, then load the stored tensors."""
    check_base(artifact, model)  # before prepare: the fingerprint is of the pretrained body as loaded
    tensors = read_state(artifact)
    module = method.prepare(model, artifact.head_pattern)
    method.load_stored_state(module, tensors, artifact.source)
    return module.eval()


# ----------------------------------------------------------------------------- reading artifacts

def check_pairing(artifact: Artifact, payload_checksum: str | None) -> None:
    """Refuse a payload that is not the one the artifact's config was written with."""
    expected = artifact.config["payload"].get("sha256")
    if expected is not None and payload_checksum != expected:
        raise ArtifactError(f"{artifact.source}: {artifact.payload_path.name} is not the payload its "
                            f"{ARTIFACT_NAME} was written with (checksum {str(payload_checksum)[:19]}..., the "
                            f"config says {expected[:19]}...): copy the run directory again as a whole, or rerun it")


def check_base(artifact: Artifact, model: nn.Module) -> None:
    """Refuse a base model other than the one the artifact was trained on, naming the fix."""
    from diffprune.safetensors_file import first_difference
    from diffprune.storage import BaseModelMismatch, fingerprint

    expected = artifact.base.get("fingerprint")
    actual = fingerprint(model, artifact.head_pattern)
    if actual == expected:
        return
    stored_id = artifact.base.get("model_id") or "?"
    raise BaseModelMismatch(
        f"{artifact.source} was trained on base model {stored_id} (fingerprint {expected}), but the base model it "
        f"is loaded onto has fingerprint {actual} "
        f"({first_difference(str(expected), actual)}): load it onto the same pretrained weights "
        f"(evaluate: a config, or --model-key, whose model is {stored_id})")


def _read_config(path: Path, source: str) -> dict:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ArtifactError(f"{source}: {path} cannot be read as JSON ({error}): it is truncated or corrupted; "
                            "copy it again or rerun the run that wrote it") from error
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ArtifactError(f"{source}: {path} is not a diffprune artifact config (format "
                            f"{config.get('format') if isinstance(config, dict) else None!r})")
    version = config.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise ArtifactError(f"{source}: {path} is a diffprune artifact of version {version!r}; this diffprune "
                            f"reads versions up to {VERSION}: update diffprune to read it")
    base, payload = config.get("base"), config.get("payload")
    good = (isinstance(base, dict) and isinstance(base.get("fingerprint"), str)
            and isinstance(base.get("head_pattern"), str) and isinstance(payload, dict)
            and isinstance(payload.get("file"), str) and isinstance(config.get("stored_by"), str)
            and isinstance(config.get("load_options"), dict))
    if not good:
        raise ArtifactError(f"{source}: {path} lacks base.fingerprint, base.head_pattern, payload.file, stored_by "
                            "or load_options: it was edited or truncated; rerun the run that wrote it")
    name = payload["file"]
    # The payload lies beside its config: a name that leads elsewhere is not followed.
    if Path(name).name != name or name in ("", ".", ".."):
        raise ArtifactError(f"{source}: {path} names payload {name!r}, not a file beside it")
    return config


def _sibling_config(payload: Path) -> Path | None:
    """The artifact.json beside ``payload`` when it names ``payload`` as its payload."""
    candidate = payload.parent / ARTIFACT_NAME
    if not candidate.is_file():
        return None
    try:
        named = json.loads(candidate.read_text(encoding="utf-8")).get("payload", {}).get("file")
    except (OSError, ValueError, AttributeError):
        return candidate  # a broken config: read it to report what is wrong with it
    return candidate if named == payload.name else None


def _bare_sparse_diff(path: Path, source: str) -> Artifact:
    """A sparse diff file on its own (a run written before artifacts, a copied file): its header
    says everything a load needs. Any other file alone is refused, saying what it is."""
    from safetensors import safe_open

    from diffprune import storage
    from diffprune.diff_pruning_config import DEFAULT_HEAD_PATTERN
    from diffprune.safetensors_file import safetensors_problem

    if safetensors_problem(path) is None:
        try:
            with safe_open(str(path), framework="pt") as handle:
                kind = (handle.metadata() or {}).get("format")
        except Exception:  # reported below by read_header, naming the file
            kind = None
        if kind == STATE_FORMAT:
            raise ArtifactError(f"{source} is a task_state payload without the {ARTIFACT_NAME} that says which "
                                "method and options rebuild its model: pass the run directory that holds both")
    header = storage.read_header(path, expected_format=storage.FORMAT)
    config = {
        "format": FORMAT, "version": VERSION, "method": None, "method_key": None, "options": {},
        "stored_by": "fixed_mask", "load_options": {}, "phase": "prune", "rate": header.get("rate"),
        "seed": None, "task": header.get("task"), "labels": header.get("labels"),
        "base": {"model_id": header.get("model_id") or "", "fingerprint": header.get("fingerprint"),
                 "head_pattern": header.get("head_pattern", DEFAULT_HEAD_PATTERN)},
        "payload": {"file": path.name, "format": storage.FORMAT, "kind": "diff",
                    "sha256": header.get(storage.CHECKSUM_KEY)},
    }
    return Artifact(config, path, source)


def read_artifact(path) -> Artifact:
    """An artifact from a run directory, its ``artifact.json``, or a payload file (with the
    config beside it that names it; a sparse diff may come alone). Clear errors otherwise."""
    path = Path(path)
    source = str(path)
    if path.is_dir():
        config_path = path / ARTIFACT_NAME
        if not config_path.is_file():
            raise FileNotFoundError(f"{path}: no {ARTIFACT_NAME} there, so not a finished run directory (a prune run "
                                    "written before artifacts existed: pass its diff.safetensors)")
    elif not path.is_file():
        raise FileNotFoundError(f"{path}: no such file or directory")
    elif path.suffix == ".json":
        config_path = path
    else:
        config_path = _sibling_config(path)
        if config_path is None:
            return _bare_sparse_diff(path, source)
    config = _read_config(config_path, source)
    payload = config_path.parent / config["payload"]["file"]
    if not payload.is_file():
        raise ArtifactError(f"{source}: its payload {payload} is not there: copy the run directory as a whole")
    return Artifact(config, payload, source)


def check_task(artifact: Artifact, task: str, labels: list[str] | None = None) -> None:
    """Refuse an artifact trained for another task or label order (``storage.check_task``)."""
    from diffprune.storage import DENSE_FORMAT, FORMAT as SPARSE_FORMAT, check_task as check_header_task

    what = "diff" if artifact.config["payload"].get("format") in (SPARSE_FORMAT, DENSE_FORMAT) else "artifact"
    check_header_task(artifact.config, task, labels, artifact.source, what=what)


def storing_method(artifact: Artifact):
    """The Method that stored the artifact, rebuilt from its config (``Method.from_artifact``)."""
    from diffprune.registry import stored_method_class

    config = artifact.config
    try:
        return stored_method_class(config["stored_by"]).from_artifact(config)
    except (TypeError, ValueError) as error:
        raise ArtifactError(f"{artifact.source}: method {config['stored_by']!r} cannot be rebuilt from its stored "
                            f"options ({error}); rerun the run that wrote it with this diffprune") from error


def load_task_model(artifact, model: nn.Module, task: str | None = None,
                    labels: list[str] | None = None) -> nn.Module:
    """The task model an artifact stores, rebuilt on ``model`` (a fresh base as loaded, with a
    head of the task's shape; it is changed in place or wrapped) and in eval mode.

    ``artifact``: an ``Artifact`` or a path for ``read_artifact``. ``task`` / ``labels`` given:
    an artifact of another task or label order is refused; another base always is (by each
    payload format's load, before it changes anything)."""
    if not isinstance(artifact, Artifact):
        artifact = read_artifact(artifact)
    if task is not None:
        check_task(artifact, task, labels)
    return storing_method(artifact).load(model, artifact)
