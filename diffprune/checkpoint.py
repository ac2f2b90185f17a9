"""The resume checkpoint of a training run: what it holds and how it is written and read.

While training, ``runner.train_loop`` writes ``DIR.tmp/checkpoint.safetensors`` every
``checkpoint_every_steps`` optimizer steps and at each epoch end; rerunning a killed run
resumes from it, and on the CPU finishes with the same numbers as an uninterrupted run.

A checkpoint is one safetensors file: the tensors (trainable state, optimizer moments, torch
RNG states) as tensors, everything else (step, epoch, identity, optimizer param groups,
scheduler, loss scaler, Python/numpy RNG states) as JSON in its metadata. Reading it runs no
code, unlike a pickle: a results tree copied from elsewhere is safe to resume. One file, so
tensors and loop state are replaced together, atomically.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from diffprune.atomic import write_with

CHECKPOINT_NAME = "checkpoint.safetensors"
LEGACY_CHECKPOINT_NAME = "checkpoint.pt"  # the old pickle format: never read (loading it could run code)
CHECKPOINT_FORMAT = 2  # the loop state's layout; 2: safetensors + JSON (1 was a pickle)
CHECKPOINT_FILE_FORMAT = "diffprune.checkpoint"
_TUPLE_TAG = "__tuple__"  # JSON has no tuples; optimizer betas and RNG states are tuples


def trainable_state(module) -> dict:
    """The part of ``state_dict`` that training changes: trainable parameters and all buffers."""
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    buffers = {n for n, _ in module.named_buffers()}
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items() if k in trainable or k in buffers}


def rng_states() -> dict:
    """Every RNG the training loop draws from: Python's and numpy's as JSON-able values, torch's as tensors."""
    import numpy as np
    import torch

    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    states = {"python": random.getstate(),
              "numpy": [name, keys.tolist(), int(position), int(has_gauss), float(cached_gaussian)],
              "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    import numpy as np
    import torch

    random.setstate(states["python"])
    name, keys, position, has_gauss, cached_gaussian = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _to_json(value, where: str):
    """Plain JSON values, tuples tagged; anything else (a tensor, an object) is refused by name."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return {_TUPLE_TAG: [_to_json(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_to_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if _TUPLE_TAG in value or not all(isinstance(k, str) for k in value):
            raise TypeError(f"checkpoint: {where} has keys a checkpoint cannot store as JSON: {list(value)[:5]}")
        return {k: _to_json(v, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(f"checkpoint: {where} is a {type(value).__name__}; a checkpoint stores tensors and JSON "
                    "values only")


def _from_json(value):
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {_TUPLE_TAG}:
            return tuple(_from_json(v) for v in value[_TUPLE_TAG])
        return {k: _from_json(v) for k, v in value.items()}
    return value


def as_loaded(value, where: str):
    """``value`` as ``load_checkpoint`` would return it after storing it (e.g. floats through
    JSON), so that it compares equal to what a checkpoint holds; refused as ``save_checkpoint``
    would refuse it."""
    return _from_json(json.loads(json.dumps(_to_json(value, where))))


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` (the dict ``train_loop`` builds) as safetensors + JSON, atomically.

    ``state["module"]``: name -> tensor; ``state["optimizer"]``: an optimizer ``state_dict``
    whose per-parameter entries are tensors or numbers; ``state["rng"]``: ``rng_states()``;
    every other entry must be JSON-able.
    """
    import torch
    from safetensors.torch import save_file

    tensors, optimizer_entries, scalars = {}, [], {}
    for name, tensor in state["module"].items():
        tensors[f"module.{name}"] = tensor
    optimizer = state["optimizer"]
    for index, entry in optimizer["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value
                optimizer_entries.append([int(index), key])
            else:
                scalars.setdefault(str(index), {})[key] = value
    rng = dict(state["rng"])
    tensors["rng.torch"] = rng.pop("torch")
    cuda = rng.pop("cuda", None) or []
    for device_index, cuda_state in enumerate(cuda):
        tensors[f"rng.cuda.{device_index}"] = cuda_state
    loop_state = {key: value for key, value in state.items() if key not in ("module", "optimizer", "rng")}
    loop_state["optimizer"] = {"param_groups": optimizer["param_groups"], "tensor_entries": optimizer_entries,
                               "scalar_entries": scalars}
    loop_state["rng"] = {**rng, "cuda_devices": len(cuda)}
    metadata = {"format": CHECKPOINT_FILE_FORMAT, "state": json.dumps(_to_json(loop_state, "state"))}
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    write_with(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_checkpoint(path: Path) -> dict | None:
    """The state ``save_checkpoint`` wrote (None: no checkpoint); nothing is unpickled."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as error:  # safetensors raises its own error type for any unreadable file
        raise ValueError(f"{path} is not a diffprune checkpoint ({error}); delete {path.parent} to start "
                         "this run afresh") from error
    if metadata.get("format") != CHECKPOINT_FILE_FORMAT or "state" not in metadata:
        raise ValueError(f"{path} is not a diffprune checkpoint (format {metadata.get('format')!r}); delete "
                         f"{path.parent} to start this run afresh")
    state = _from_json(json.loads(metadata["state"]))
    optimizer = state.pop("optimizer")
    per_parameter: dict[int, dict] = {}
    for index, entry in optimizer["scalar_entries"].items():
        per_parameter.setdefault(int(index), {}).update(entry)
    for index, key in optimizer["tensor_entries"]:
        per_parameter.setdefault(index, {})[key] = tensors[f"optimizer.{index}.{key}"]
    state["optimizer"] = {"state": dict(sorted(per_parameter.items())), "param_groups": optimizer["param_groups"]}
    state["module"] = {key[len("module."):]: t for key, t in tensors.items() if key.startswith("module.")}
    rng = state.pop("rng")
    cuda_devices = rng.pop("cuda_devices")
    rng["torch"] = tensors["rng.torch"]
    if cuda_devices:
        rng["cuda"] = [tensors[f"rng.cuda.{i}"] for i in range(cuda_devices)]
    state["rng"] = rng
    return state


def restore_training(path: Path, identity: dict, module, optimizer, scheduler, scaler) -> dict | None:
    """Resume from the checkpoint at ``path``, if there is one: restore the module's trained
    state, the optimizer, scheduler, loss scaler and every RNG, and return the checkpoint (the
    loop's position: ``step``, ``epoch``, ``groups_done``, ``train_seconds``, ``extra``). None:
    no checkpoint. A checkpoint of another run configuration (``identity``) is refused."""
    checkpoint = load_checkpoint(path)
    if checkpoint is None:
        return None
    if checkpoint.get("format") != CHECKPOINT_FORMAT or checkpoint.get("identity") != identity:
        raise ValueError(f"{path} was written by a different run configuration; "
                         f"delete {path.parent} to start this run afresh")
    result = module.load_state_dict(checkpoint["module"], strict=False)
    if result.unexpected_keys:
        raise ValueError(f"{path} holds tensors this model lacks: {result.unexpected_keys[:5]}")
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    if scaler is not None and checkpoint.get("scaler"):
        scaler.load_state_dict(checkpoint["scaler"])
    restore_rng_states(checkpoint["rng"])
    return checkpoint
