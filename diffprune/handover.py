"""The dense diff a train run hands to its prune runs: ``dense_diff.safetensors``.

A projected method key (adaptive diff pruning, or non-adaptive diff pruning on the runs of
full finetuning) projects the dense diff of a finished train run to each sparsity rate. That
train run writes the diff once, after training: delta per diffed tensor, the task head with
the floating buffers training changed, and a header naming the run and the base model's
fingerprint, so that a prune run refuses a diff trained on another base.
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
