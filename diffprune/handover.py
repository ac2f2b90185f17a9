"""The dense diff a train run hands to its prune runs: ``dense_diff.safetensors``.

A projected method key (adaptive diff pruning, or non-adaptive diff pruning on the runs of
full finetuning) projects the dense diff of a finished train run to each sparsity rate. That
train run writes the diff once, after training: delta per diffed tensor, the task head with
the floating buffers training changed, and a header naming the run and the base model's
fingerprint, so that a prune run refuses a diff trained on another base. The L0 phase of
adaptive diff pruning stores this same file as its task artifact's payload
(``diffprune.artifact``), read back by ``apply_dense_diff_``.
"""
from __future__ import annotations

from pathlib import Path

from diffprune.layers import is_head

DENSE_DIFF_NAME = "dense_diff.safetensors"
DENSE_DIFF_KIND = "dense_diff"  # its kind in what a method exports ({kind: file name})


def float_buffers(model) -> dict:
    """Copies of the model's floating buffers (e.g. BatchNorm statistics), taken before training
    so that ``head_state`` can tell which ones training changed."""
    return {n: b.detach().cpu().clone() for n, b in model.named_buffers() if b.is_floating_point()}


def head_state(model, head_pattern: str, float_buffers_before: dict) -> dict:
    """The task head to ship beside a dense diff: head parameters + floating buffers that changed."""
    import torch

    head = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if is_head(n, head_pattern)}
    for name, buffer in model.named_buffers():
        before = float_buffers_before.get(name)
        if before is not None and not torch.equal(before, buffer.detach().cpu()):
            head[name] = buffer.detach().cpu().clone()
    return head


def write_dense_diff(run_dir: Path, diff: dict, head: dict, identity: dict) -> Path:
    """``run_dir/DENSE_DIFF_NAME``, atomically; ``identity`` (task, method key, seed, model id,
    base fingerprint, head pattern) goes into its header."""
    from diffprune.storage import save_dense_diff

    return save_dense_diff(Path(run_dir) / DENSE_DIFF_NAME, diff, head, identity)


def read_dense_diff_into(model, source_dir: Path, fingerprint: str | None) -> dict:
    """Load the head (and changed buffers) a source run handed over into ``model``; return its
    dense diff. Refused: a diff trained on another base model (``fingerprint``: this base's),
    or a head with tensors ``model`` lacks."""
    from diffprune.storage import load_dense_diff

    dense_diff, head, source_meta = load_dense_diff(Path(source_dir) / DENSE_DIFF_NAME)
    if fingerprint and source_meta.get("base_fingerprint") not in (None, fingerprint):
        raise ValueError(f"{source_dir}: its dense diff was trained on another base model "
                         f"(fingerprint {source_meta.get('base_fingerprint')}, this one {fingerprint})")
    result = model.load_state_dict(head, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"{source_dir}: the stored head has tensors this model lacks: {result.unexpected_keys[:5]}")
    return dense_diff


def apply_dense_diff_(model, artifact):
    """theta_0 + delta of a dense diff payload written into ``model``, with its head and the
    buffers training changed: the L0 phase's task model (``diffprune.artifact``, its payload is
    this file). Base, checksum, every name and shape are checked before the first write."""
    import torch

    from diffprune.artifact import ArtifactError, check_base, check_pairing
    from diffprune.reparam import unique_parameters
    from diffprune.storage import CHECKSUM_KEY, DENSE_FORMAT, load_dense_diff, read_header

    check_base(artifact, model)
    path = artifact.payload_path
    check_pairing(artifact, read_header(path, expected_format=DENSE_FORMAT).get(CHECKSUM_KEY))
    dense, head, _ = load_dense_diff(path)
    params = {alias: p for _, aliases, p, _ in unique_parameters(model) for alias in aliases}
    targets = {**dict(model.named_buffers()), **params}
    for name, value in [*dense.items(), *head.items()]:
        target = (params if name in dense else targets).get(name)
        if target is None:
            raise ArtifactError(f"{path}: {name} is not a {'parameter' if name in dense else 'tensor'} of this model")
        if target.shape != value.shape:
            raise ArtifactError(f"{path}: {name} has shape {tuple(value.shape)} in the payload, "
                                f"{tuple(target.shape)} in the model")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ArtifactError(f"{path}: {name} is not all finite (NaN or inf): the run that wrote it diverged")
    with torch.no_grad():
        for name, delta in dense.items():
            target = params[name]
            target.copy_((target.float() + delta.to(target.device)).to(target.dtype))
        for name, value in head.items():
            targets[name].copy_(value.to(targets[name].device, targets[name].dtype))
    return model.eval()
