"""The training / evaluation loop behind ``python -m diffprune train | prune | evaluate``.

Every verb first builds a plan (config read and validated, task, method key, rate, data
folders and source run checked) so that a mistake is reported before any model loads;
then it executes.

A run writes into ``DIR.tmp`` and renames it to ``DIR`` when everything is written; a
``DIR/metrics.json`` means finished (the verb skips). ``DIR.tmp`` is held with an exclusive
``flock`` for the whole job and marked with the run it belongs to (``atomic.claim_dir``): a
second process asked for the same run waits, a link or a folder this run did not create is
refused, and nothing is cleared or published through a link. While training, a checkpoint
(``DIR.tmp/checkpoint.safetensors``: trainable parameters and buffers, optimizer, scheduler,
loss scaler, RNG states, step and position in the epoch's data order; tensors as safetensors,
the rest as JSON, so that resuming never unpickles) is written every
``checkpoint_every_steps`` optimizer steps and at each epoch end, atomically; rerunning a
killed run resumes from it, and on the CPU finishes with the same numbers as an
uninterrupted run.

Devices and precision: a visible GPU is used as ``cuda:0`` (whoever launches the run picks
the GPU with ``CUDA_VISIBLE_DEVICES``, e.g. ``diffprune.gpu_slots``). ``precision: auto``
trains in fp32 on the CPU; on CUDA under bf16 autocast where the GPU supports it (no loss
scaling needed), else fp16 autocast with a ``GradScaler``. Evaluation uses the same autocast.
The expected-L0 penalty is always computed in fp32.

What each run directory holds: ``metrics.json`` (docs/ARCHITECTURE.md), whatever
``method.export`` wrote, ``stats.json`` when the method has ``stats``, and for a train run
whose key feeds prune runs (projected, or reused by a projected key) ``dense_diff.safetensors``
(delta per diffed tensor + the head, base fingerprint in its header).

Environment: ``DIFFPRUNE_NO_PROGRESS=1`` turns the progress bar off. Testing hook: with
``DIFFPRUNE_TEST_CRASH_AFTER_STEPS=N`` the training loop raises ``SimulatedCrash`` right after
optimizer step ``N`` (after the checkpoint of that step, if one is due), so that the resume
path can be tested without killing processes at a lucky moment.
"""
from __future__ import annotations

import json
import math
import os
import platform
import random
import re
import resource
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from diffprune import datahash, settings
from diffprune.seeding import DATA_SUBSAMPLE_SEED, RunSeeds, derive_seeds, seed_global_rngs
from diffprune.atomic import OWNER_FILE, claim_dir, clear_dir, disk_full_error, publish_dir, write_json, write_with
from diffprune.job_timings import PhaseClock

CHECKPOINT_NAME = "checkpoint.safetensors"
LEGACY_CHECKPOINT_NAME = "checkpoint.pt"  # the old pickle format: never read (loading it could run code)
DENSE_DIFF_NAME = "dense_diff.safetensors"
CRASH_HOOK_ENV = "DIFFPRUNE_TEST_CRASH_AFTER_STEPS"
CHECKPOINT_FORMAT = 2  # 2: safetensors + JSON (1 was a pickle)
PROGRESS_EVERY = 10  # steps between readings of the running loss for the progress bar


class SimulatedCrash(RuntimeError):
    """Raised by the testing hook ``DIFFPRUNE_TEST_CRASH_AFTER_STEPS``."""


def log(message: str) -> None:
    print(f"[diffprune] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- plans

@dataclass
class RunPlan:
    """One train or prune run, validated; nothing heavy has been loaded yet."""

    phase: str                       # "train" | "prune"
    cfg: dict
    config_path: str
    task: str
    method_key: str
    method_name: str
    method_options: dict
    seed: int
    out_dir: Path
    training: dict
    data_cfg: dict
    overrides: dict = field(default_factory=dict)
    rate: float | None = None
    source_dir: Path | None = None
    write_dense_diff: bool = False
    data_hash: str | None = None     # content hash of the task's data files (diffprune.datahash)

    @property
    def tmp_dir(self) -> Path:
        return self.out_dir.with_name(self.out_dir.name + ".tmp")

    def owner(self) -> dict:
        """What the run writes into the temporary directory it creates (atomic.OWNER_FILE)."""
        return {"phase": self.phase, "task": self.task, "method_key": self.method_key, "seed": self.seed,
                "rate": self.rate}

    @cached_property
    def seeds(self) -> RunSeeds:
        """The run's random streams, each derived from ``seed`` (once per plan)."""
        return derive_seeds(self.seed)

    def resolved_config(self) -> dict:
        """What metrics.json records as ``config``: everything this run's numbers depend on."""
        return {
            "name": self.cfg["name"],
            "config_file": self.config_path,
            "model_key": self.cfg["model"],
            "model": settings.model_spec(self.cfg),
            "method": {"key": self.method_key, "name": self.method_name, "options": self.method_options},
            "training": self.training,
            "overrides": self.overrides,
            "data": self.data_cfg,
            "data_hash": self.data_hash,
            "head_pattern": self.cfg["head_pattern"],
            "rate": self.rate,
            "source_dir": str(self.source_dir) if self.source_dir else None,
        }


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    return seed


def _check_out_dir(out_dir: Path) -> None:
    for path in (out_dir, out_dir.with_name(out_dir.name + ".tmp")):
        if path.is_symlink():
            raise ValueError(f"--out {out_dir}: {path} is a symbolic link; a run never writes or clears through a "
                             "link: move it away")
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} exists and is not a directory")
    if out_dir.is_dir() and not (out_dir / "metrics.json").is_file() and any(out_dir.iterdir()):
        raise ValueError(f"--out {out_dir} exists, is not empty and holds no metrics.json "
                         "(not a finished run): move it away or delete it")


def plan_train(config_path, task: str, method_key: str, seed: int, out_dir,
               overrides: dict | None = None, needed_dir=None) -> RunPlan:
    """``needed_dir``: the finished run a ``needs_run`` method reads (``train --from``)."""
    cfg = settings.load_config(config_path)
    settings.check_task(task)
    seed = _check_seed(seed)
    name, options, _ = settings.method_entry(cfg, method_key)
    reused = settings.reused_key(cfg, method_key)
    if reused is not None:
        raise ValueError(f"method key {method_key!r} ({name}) has no train phase of its own: it reuses the "
                         f"train runs of {reused!r}; train {reused!r} and `prune --from` its run directory")
    needed = settings.needed_key(cfg, method_key)
    if needed is None and needed_dir is not None:
        raise ValueError(f"--from is only for methods that read another run; {method_key!r} ({name}) does not")
    if needed is not None:
        if needed_dir is None:
            raise ValueError(f"method key {method_key!r} ({name}) reads the finished {needed!r} run of the same "
                             f"task and seed: pass its run directory with --from")
        source = _finished_run(Path(needed_dir), "--from")
        if source.get("task") != task or source.get("seed") != seed or source.get("method_key") != needed:
            raise ValueError(f"--from {needed_dir} is the {source.get('method_key')!r} run of task "
                             f"{source.get('task')!r}, seed {source.get('seed')!r}; {method_key!r} needs the "
                             f"{needed!r} run of task {task!r}, seed {seed}")
        from diffprune.registry import method_class

        options = {**options, method_class(name).run_option: str(Path(needed_dir))}
    from diffprune.registry import build_method

    method = build_method(name, **options)  # unknown / invalid options fail here, before any model loads
    check_method_applies(cfg, task, method_key, method)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    data_cfg = settings.data_config(cfg, task)
    return RunPlan(
        phase="train", cfg=cfg, config_path=str(config_path), task=task, method_key=method_key,
        method_name=name, method_options=options, seed=seed, out_dir=out_dir,
        training=settings.resolve_training(cfg, task, method_key, "train", overrides),
        data_cfg=data_cfg, overrides=dict(overrides or {}),
        write_dense_diff=settings.needs_dense_diff(cfg, method_key),
        data_hash=datahash.task_data_hash(task, data_cfg),
    )


def check_method_applies(cfg: dict, task: str, method_key: str, method) -> None:
    """Refuse, before a job starts, a method that cannot adapt the configured model (or a model
    with no task head): inspected on its weightless skeleton, the error names method, model
    and what to do instead."""
    from diffprune.models import model_skeleton, resolve_head_pattern

    skeleton, model_id = model_skeleton(settings.model_spec(cfg), task)
    head_pattern = resolve_head_pattern(skeleton, cfg["head_pattern"], model_id)
    try:
        method.check_model(skeleton, head_pattern)
    except ValueError as error:
        raise ValueError(f"method key {method_key!r} (method {method.name}) cannot run on model {model_id} "
                         f"({type(skeleton).__name__}): {error}") from None


def _finished_run(run_dir: Path, flag: str) -> dict:
    """metrics.json of a finished run directory (clear error otherwise)."""
    metrics = run_dir / "metrics.json"
    if not metrics.is_file():
        raise FileNotFoundError(f"{flag} {run_dir}: no metrics.json there (not a finished run)")
    return json.loads(metrics.read_text())


def plan_prune(config_path, task: str, method_key: str, seed: int, rate: float, source_dir, out_dir,
               overrides: dict | None = None) -> RunPlan:
    from diffprune.config import check_rate

    rate = check_rate(rate)
    cfg = settings.load_config(config_path)
    settings.check_task(task)
    seed = _check_seed(seed)
    name, options, _ = settings.method_entry(cfg, method_key)
    expected_source = settings.source_key(cfg, method_key)
    if expected_source is None:
        raise ValueError(f"method key {method_key!r} ({name}) is not projected: it has no prune phase")
    source_dir = Path(source_dir)
    source = _finished_run(source_dir, "--from")
    if not (source_dir / DENSE_DIFF_NAME).is_file():
        raise FileNotFoundError(f"--from {source_dir}: no {DENSE_DIFF_NAME} there; the train run of "
                                f"{expected_source!r} writes it when a projected method uses it")
    if source.get("task") != task:
        raise ValueError(f"--from {source_dir} is a {source.get('task')!r} run, not {task!r}")
    if source.get("method_key") != expected_source:
        raise ValueError(f"--from {source_dir} is a run of {source.get('method_key')!r}; the prune runs of "
                         f"{method_key!r} take the runs of {expected_source!r}")
    if source.get("seed") != seed:
        raise ValueError(f"--from {source_dir} is the seed-{source.get('seed')} run; a prune run of seed {seed} "
                         f"starts from the seed-{seed} run of {expected_source!r} (or pass --seed "
                         f"{source.get('seed')})")
    from diffprune.registry import build_method

    # Unknown / invalid options still fail here. Whether the method applies to the model was
    # checked when its source run was planned (same config and model), so the model skeleton
    # is not built again for every rate.
    build_method(name, **options)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    data_cfg = settings.data_config(cfg, task)
    return RunPlan(
        phase="prune", cfg=cfg, config_path=str(config_path), task=task, method_key=method_key,
        method_name=name, method_options=options, seed=seed, out_dir=out_dir,
        training=settings.resolve_training(cfg, task, method_key, "prune", overrides),
        data_cfg=data_cfg, overrides=dict(overrides or {}),
        rate=rate, source_dir=source_dir, data_hash=datahash.task_data_hash(task, data_cfg),
    )


# ----------------------------------------------------------------------------- environment

def pick_device():
    """cuda:0 when a GPU is visible (CUDA_VISIBLE_DEVICES decides which one that is), else CPU."""
    import torch

    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def resolve_precision(precision: str, device) -> str:
    """The autocast dtype actually used: "fp32", "bf16" or "fp16" (see settings.TRAINING_DEFAULTS)."""
    import torch

    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs a CUDA device (CPU autocast supports bf16 only)")
    return precision


def autocast_context(device, precision: str):
    import torch

    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def device_label(device) -> str:
    import torch

    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"


def peak_memory_bytes(device) -> int | None:
    """CUDA: peak allocated tensor memory; CPU: the process's peak resident set size."""
    import torch

    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


def versions() -> dict:
    """Versions of what produced the numbers (read from package metadata: nothing is imported)."""
    from importlib import metadata

    found = {"python": platform.python_version()}
    for package in ("torch", "transformers", "diffprune", "adapters", "peft", "datasets"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            if package in ("torch", "transformers", "diffprune"):
                found[package] = None
    return found


def _json_safe(value):
    """Numbers as plain floats/ints; NaN and inf (e.g. an undefined correlation) as None."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _scores_of(result) -> dict | None:
    """``{"metrics", "scores"}`` results and plain score mappings alike -> the scores."""
    if result is None:
        return None
    if isinstance(result, dict) and "scores" in result:
        return result["scores"]
    return result


# ----------------------------------------------------------------------------- progress

class _LineWriter:
    """A file for tqdm that turns its carriage-return redraws into whole lines.

    In a log file (not a terminal) tqdm's ``\\r`` redraws pile up into one unreadable line;
    this writes each redraw as its own line instead (tqdm is throttled by ``mininterval``).
    """

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").rstrip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(total: int, initial: int, description: str):
    from tqdm.auto import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=description, unit="step", dynamic_ncols=interactive,
                file=sys.stderr if interactive else _LineWriter(sys.stderr),
                mininterval=0.5 if interactive else 30.0, ascii=not interactive, ncols=None if interactive else 100,
                disable=os.environ.get("DIFFPRUNE_NO_PROGRESS") == "1")


# ----------------------------------------------------------------------------- checkpoints

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


# A checkpoint is one safetensors file: the tensors (trainable state, optimizer moments, torch
# RNG states) as tensors, everything else (step, epoch, identity, optimizer param groups,
# scheduler, loss scaler, Python/numpy RNG states) as JSON in its metadata. Reading it runs no
# code, unlike a pickle: a results tree copied from elsewhere is safe to resume. One file, so
# tensors and loop state are replaced together, atomically.
CHECKPOINT_FILE_FORMAT = "diffprune.checkpoint"
_TUPLE_TAG = "__tuple__"  # JSON has no tuples; optimizer betas and RNG states are tuples


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


# ----------------------------------------------------------------------------- training

@dataclass
class TrainOutcome:
    steps: int
    epochs: int
    train_seconds: float
    extra: dict


def epoch_order(num_examples: int, seed: int, epoch: int):
    """The data order of one epoch: a function of (seed, epoch) only, so a resumed run
    can rebuild it without having stored a generator's state."""
    import torch

    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_examples, generator=generator).tolist()


# group_by_length: examples are sorted by length within windows of this many batches.
LENGTH_GROUP_BATCHES = 50


def epoch_batches(num_examples: int, batch_size: int, seed: int, epoch: int,
                  lengths: list[int] | None = None) -> list[list[int]]:
    """The batches of one epoch (lists of example indices), a function of its arguments only.

    With ``lengths`` (group_by_length), the epoch's random order is cut into windows of
    ``LENGTH_GROUP_BATCHES`` batches, each window sorted by length and cut into batches,
    and the batches shuffled: a batch holds examples of similar length, so dynamic padding
    pads little (the same idea as Hugging Face's ``group_by_length``), while which examples
    meet in a batch stays random.
    """
    import torch

    order = epoch_order(num_examples, seed, epoch)
    if lengths is None:
        return [order[i:i + batch_size] for i in range(0, num_examples, batch_size)]
    window = batch_size * LENGTH_GROUP_BATCHES
    batches = []
    for start in range(0, num_examples, window):
        by_length = sorted(order[start:start + window], key=lambda i: lengths[i], reverse=True)
        batches += [by_length[i:i + batch_size] for i in range(0, len(by_length), batch_size)]
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 7_919)
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def linear_schedule(total_steps: int, warmup_steps: int):
    """Linear warmup to the base learning rate, then linear decay to 0 (BERT's schedule)."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def train_loop(plan: RunPlan, module, method, data, device, precision: str, extra: dict) -> TrainOutcome:
    """Optimise ``module`` on ``data.train``; resumes from ``plan.tmp_dir/CHECKPOINT_NAME``.

    ``extra`` is stored in every checkpoint and returned (e.g. the prune phase's
    before-finetune evaluation, so a resumed run does not need to recompute it).
    """
    import torch

    from diffprune.training_step import training_step

    training = plan.training
    checkpoint_path = plan.tmp_dir / CHECKPOINT_NAME
    batch_size, accumulation = training["batch_size"], training["gradient_accumulation_steps"]
    num_examples = len(data.train)
    if num_examples == 0:
        raise ValueError(f"{plan.task}: the training set is empty")
    micro_batches = math.ceil(num_examples / batch_size)
    steps_per_epoch = math.ceil(micro_batches / accumulation)
    epochs = training["epochs"]
    total_steps = epochs * steps_per_epoch
    if training["max_steps"] is not None:
        total_steps = min(total_steps, training["max_steps"])
    warmup_steps = int(round(training["warmup_ratio"] * total_steps))

    lengths = None
    if training["group_by_length"]:
        lengths = [len(data.train[i]["input_ids"]) for i in range(num_examples)]

    module.train()
    optimizer = method.make_optimizer(module, training)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(total_steps, warmup_steps))
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    trainable = [p for p in module.parameters() if p.requires_grad]
    identity = {"phase": plan.phase, "task": plan.task, "method_key": plan.method_key, "seed": plan.seed,
                "rate": plan.rate, "training": training, "method_options": plan.method_options}
    identity = _from_json(json.loads(json.dumps(_to_json(identity, "identity"))))  # as a checkpoint returns it

    # groups_done: optimizer steps (groups of micro-batches) already taken in the current epoch
    step, epoch, groups_done, elapsed = 0, 0, 0, 0.0
    checkpoint = load_checkpoint(checkpoint_path)
    if checkpoint is not None:
        if checkpoint.get("format") != CHECKPOINT_FORMAT or checkpoint.get("identity") != identity:
            raise ValueError(f"{checkpoint_path} was written by a different run configuration; "
                             f"delete {plan.tmp_dir} to start this run afresh")
        result = module.load_state_dict(checkpoint["module"], strict=False)
        if result.unexpected_keys:
            raise ValueError(f"{checkpoint_path} holds tensors this model lacks: {result.unexpected_keys[:5]}")
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if scaler is not None and checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        restore_rng_states(checkpoint["rng"])
        step, epoch, groups_done = checkpoint["step"], checkpoint["epoch"], checkpoint["groups_done"]
        elapsed = checkpoint["train_seconds"]
        extra.update(checkpoint.get("extra") or {})
        log(f"resuming from {checkpoint_path}: step {step}/{total_steps}, epoch {epoch + 1}/{epochs}")

    def checkpoint_now() -> None:
        save_checkpoint(checkpoint_path, {
            "format": CHECKPOINT_FORMAT, "identity": identity, "step": step, "epoch": epoch,
            "groups_done": groups_done, "train_seconds": elapsed + (time.perf_counter() - started),
            "module": trainable_state(module), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
            "rng": rng_states(), "extra": extra,
        })

    crash_after = os.environ.get(CRASH_HOOK_ENV)
    crash_after = int(crash_after) if crash_after else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    bar = progress_bar(total_steps, step, f"{plan.phase} {plan.task}/{plan.method_key}/seed{plan.seed}"
                       + (f"/rate{settings.rate_label(plan.rate)}" if plan.rate is not None else ""))
    # The running loss stays a device tensor between progress updates: reading it (float())
    # waits for the GPU, so it is read only every PROGRESS_EVERY steps.
    running_loss, running_count = torch.zeros((), device=device), 0
    try:
        while epoch < epochs and step < total_steps:
            batches = epoch_batches(num_examples, batch_size, plan.seeds.data_order, epoch, lengths)
            groups = [batches[i:i + accumulation] for i in range(0, len(batches), accumulation)]
            for group_index in range(groups_done, len(groups)):
                if step >= total_steps:
                    break
                group = groups[group_index]
                micro_batches = (data.collate([data.train[i] for i in indices]) for indices in group)
                running_loss += training_step(module, method, micro_batches, len(group), optimizer, step=step,
                                              device=device, precision=precision,
                                              max_grad_norm=training["max_grad_norm"], scheduler=scheduler,
                                              scaler=scaler, trainable=trainable)
                step += 1
                groups_done = group_index + 1
                running_count += 1
                if step % PROGRESS_EVERY == 0 or step == total_steps:
                    bar.set_postfix(epoch=epoch + 1, loss=f"{float(running_loss) / running_count:.4f}", refresh=False)
                bar.update(1)
                if step % training["checkpoint_every_steps"] == 0 and step < total_steps:
                    checkpoint_now()
                if crash_after is not None and step >= crash_after:
                    raise SimulatedCrash(f"{CRASH_HOOK_ENV}={crash_after}: stopping after step {step}")
            else:
                epoch, groups_done = epoch + 1, 0
                running_loss, running_count = torch.zeros((), device=device), 0
                if epoch < epochs and step < total_steps:
                    checkpoint_now()
                continue
            break  # max_steps reached inside the epoch
    finally:
        bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    total_seconds = elapsed + (time.perf_counter() - started)
    # epochs actually run, counting a partial last epoch (max_steps) as one
    epochs_run = epoch + (1 if groups_done else 0)
    return TrainOutcome(steps=step, epochs=min(epochs_run, epochs), train_seconds=total_seconds, extra=extra)


# ----------------------------------------------------------------------------- helpers

def _count(params) -> int:
    return int(sum(p.numel() for p in params))


def pretrained_parameter_count(model, head_pattern: str) -> int:
    """Parameters of the pretrained body: every (deduplicated) parameter outside the task head."""
    return _count(p for n, p in model.named_parameters() if not re.search(head_pattern, n))


def base_fingerprint(model, head_pattern: str) -> str:
    from diffprune.storage import fingerprint

    return fingerprint(model, head_pattern)


def head_state(model, head_pattern: str, float_buffers_before: dict) -> dict:
    """The task head to ship beside a dense diff: head parameters + floating buffers that changed."""
    import torch

    head = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if re.search(head_pattern, n)}
    for name, buffer in model.named_buffers():
        before = float_buffers_before.get(name)
        if before is not None and not torch.equal(before, buffer.detach().cpu()):
            head[name] = buffer.detach().cpu().clone()
    return head


def float_buffers(model) -> dict:
    return {n: b.detach().cpu().clone() for n, b in model.named_buffers() if b.is_floating_point()}


def task_label_set(task) -> list[str] | None:
    """The classes a task's head predicts, in output order (None for regression and QA); a
    stored diff records them so that evaluating it against another label set is refused."""
    if task.kind != "classification":
        return None
    names = getattr(getattr(task, "spec", None), "label_names", None)
    return [str(name) for name in names] if names else [str(i) for i in range(task.num_labels)]


def load_task_and_model(plan_cfg: dict, task_name: str, training: dict, data_cfg: dict, init_seed: int,
                        clock: PhaseClock | None = None):
    """The task, the pretrained model for it (head initialised from ``init_seed``), its
    tokenizer and the data (subsampled the same way for every run seed)."""
    from diffprune.models import load_pretrained
    from diffprune.tasks import get_task
    from diffprune.tasks.cache import load_task_data

    clock = clock or PhaseClock()
    task = get_task(task_name)
    with clock.phase("load_model"):
        seed_global_rngs(init_seed)
        model, tokenizer, model_id = load_pretrained(settings.model_spec(plan_cfg), task, plan_cfg.get("head_pattern"))
    with clock.phase("load_data"):  # tokenised once per run set where the feature cache is on
        data = load_task_data(task, tokenizer, data_cfg, training["max_seq_length"],
                              max_train_examples=training["max_train_examples"],
                              max_eval_examples=training["max_eval_examples"], seed=DATA_SUBSAMPLE_SEED,
                              doc_stride=training["doc_stride"])
    return task, model, tokenizer, model_id, data


def evaluate_module(task, module, data, training: dict, device, precision: str) -> dict:
    with autocast_context(device, precision):
        result = task.evaluate(module, data, training["eval_batch_size"], device)
    return _json_safe(result)


def _file_bytes(directory: Path, exported: dict) -> int:
    return int(sum((directory / rel).stat().st_size for rel in (exported or {}).values()))


# ----------------------------------------------------------------------------- verbs

def execute(plan: RunPlan) -> dict | None:
    """Run a planned train or prune run; returns its metrics (None: it had finished before).

    The run's temporary directory is held with an exclusive lock for the whole job
    (``atomic.claim_dir``): a second process asked for the same run (two workflow instances
    after ``snakemake --unlock``) waits, then finds the run finished and skips it, never
    touching the first one's files. A full disk is reported as "no space left" with the path.
    """
    final_metrics = plan.out_dir / "metrics.json"
    if final_metrics.is_file():
        log(f"{plan.out_dir} is finished (metrics.json exists): skipping")
        return None
    claim = claim_dir(plan.tmp_dir, plan.owner(),
                      on_wait=lambda path: log(f"{path} is held by another process running this run: waiting "
                                               "for it to end"))
    try:
        if final_metrics.is_file():
            log(f"{plan.out_dir} was finished by another process while this one waited: skipping")
            if claim.created:
                clear_dir(claim.path)
                claim.path.rmdir()
            return None
        return _execute_claimed(plan)
    except Exception as error:
        full = disk_full_error(plan.tmp_dir, error)
        if full is not None:
            raise full from error
        raise
    finally:
        claim.release()


def _execute_claimed(plan: RunPlan) -> dict:
    import torch

    clock = PhaseClock()
    tmp = plan.tmp_dir
    # Only the checkpoint survives from an interrupted attempt; partial exports are redone.
    if (tmp / LEGACY_CHECKPOINT_NAME).exists():
        log(f"{tmp / LEGACY_CHECKPOINT_NAME} is a checkpoint in the old pickle format: not read (unpickling can "
            "run code); this run starts afresh")
    clear_dir(tmp, keep=(CHECKPOINT_NAME, OWNER_FILE))

    training = plan.training
    if training["num_threads"]:
        torch.set_num_threads(training["num_threads"])
    device = pick_device()
    precision = resolve_precision(training["precision"], device)
    seeds = plan.seeds
    task, model, _, model_id, data = load_task_and_model(plan.cfg, plan.task, training, plan.data_cfg,
                                                         seeds.model_init, clock)
    clock.start("load_model")  # the method's wrapping of the model counts as loading it
    from diffprune.models import resolve_head_pattern

    # Exactly the parameters the loader newly initialised, unless the config overrides it.
    head_pattern = resolve_head_pattern(model, plan.cfg["head_pattern"], model_id)
    fingerprint = base_fingerprint(model, head_pattern)
    pretrained_params = pretrained_parameter_count(model, head_pattern)
    buffers_before = float_buffers(model)
    extra: dict = {}
    source_scores = None

    if plan.phase == "train":
        from diffprune.registry import build_method

        method = build_method(plan.method_name, **plan.method_options)
        seeds = method.use_run_seeds(seeds)
        model.to(device)
        seed_global_rngs(seeds.model_init)  # what prepare draws (e.g. new module init) is seeded too
        module = method.prepare(model, head_pattern).to(device)
    else:
        from diffprune.projection import FixedMaskFinetuning
        from diffprune.storage import load_dense_diff

        dense_diff, head, source_meta = load_dense_diff(plan.source_dir / DENSE_DIFF_NAME)
        if fingerprint and source_meta.get("base_fingerprint") not in (None, fingerprint):
            raise ValueError(f"{plan.source_dir}: its dense diff was trained on another base model "
                             f"(fingerprint {source_meta.get('base_fingerprint')}, this one {fingerprint})")
        result = model.load_state_dict(head, strict=False)
        if result.unexpected_keys:
            raise ValueError(f"{plan.source_dir}: the stored head has tensors this model lacks: {result.unexpected_keys[:5]}")
        model.to(device)
        method = FixedMaskFinetuning(dense_diff=dense_diff, rate=plan.rate, model_id=model_id,
                                     task=plan.task, labels=task_label_set(task))
        # The fixed-mask phase draws no gate noise (its mask comes from the source run).
        seeds = method.use_run_seeds(seeds)
        seed_global_rngs(seeds.model_init)
        module = method.prepare(model, head_pattern).to(device)
        source_scores = json.loads((plan.source_dir / "metrics.json").read_text()).get("scores")
    clock.stop()

    checkpoint_exists = (tmp / CHECKPOINT_NAME).is_file()
    if plan.phase == "prune" and not checkpoint_exists:
        log("evaluating right after projection (before fixed-mask finetuning)")
        with clock.phase("evaluate_before_finetune"):
            extra["before_finetune"] = evaluate_module(task, module, data, training, device, precision)
        seed_global_rngs(seeds.model_init)  # the evaluation must not shift the training RNG stream

    with clock.phase("train"):
        outcome = train_loop(plan, module, method, data, device, precision, extra)
    if outcome.steps < 1:
        raise ValueError(f"{plan.out_dir}: the run took no optimizer step (epochs {training['epochs']}, "
                         f"max_steps {training['max_steps']}): a run that trained nothing is not published")
    log("evaluating")
    with clock.phase("evaluate"):
        evaluation = evaluate_module(task, module, data, training, device, precision)
    peak_memory = peak_memory_bytes(device)

    clock.start("write")
    exported = method.export(module, tmp) or {}
    stats = method.stats(module) if hasattr(method, "stats") else None
    if stats is not None:
        write_json(tmp / "stats.json", _json_safe(stats))
    if plan.write_dense_diff:
        # The hand-over to the prune runs. Written after export, so it replaces a file of the
        # same name a method may export itself: this one always names the base fingerprint
        # and carries the changed floating buffers with the head.
        from diffprune.storage import save_dense_diff

        diff = method.dense_diff(module)
        if diff is None:
            raise TypeError(f"method {plan.method_name!r} returned no dense diff, but a projected method "
                            f"reuses the runs of {plan.method_key!r}")
        save_dense_diff(tmp / DENSE_DIFF_NAME, diff, head_state(model, head_pattern, buffers_before),
                        {"task": plan.task, "method_key": plan.method_key, "method": plan.method_name,
                         "seed": plan.seed, "model_id": model_id, "base_fingerprint": fingerprint,
                         "head_pattern": head_pattern})
    clock.stop()

    new_params = int(method.new_parameter_count(module))
    majority = task.majority_baseline(data)
    metrics = {
        "task": plan.task, "method_key": plan.method_key, "method": plan.method_name,
        "phase": plan.phase, "rate": plan.rate, "seed": plan.seed,
        "seeds": {**seeds.to_dict(), "data_subsample": DATA_SUBSAMPLE_SEED},
        "model_id": model_id, "base_fingerprint": fingerprint,
        "head_parameters": sorted(n for n, _ in model.named_parameters() if re.search(head_pattern, n)),
        "method_report": method.report(),
        "metrics": evaluation.get("metrics"), "primary_metric": task.primary_metric,
        "scores": evaluation.get("scores"),
        "before_finetune": extra.get("before_finetune"),
        "source_scores": source_scores,
        "majority_scores": _json_safe(_scores_of(majority)),
        "new_params": new_params,
        "new_params_pct": 100.0 * new_params / pretrained_params if pretrained_params else None,
        "pretrained_params": pretrained_params,
        "diffed_params": _diff_count(method, stats, "diffed_params"),
        "nonzeros": _diff_count(method, stats, "nonzeros"),
        "bytes_per_task": _file_bytes(tmp, exported),
        "exported": exported,
        "train_seconds": outcome.train_seconds,
        "seconds_per_step": outcome.train_seconds / outcome.steps if outcome.steps else None,
        "peak_memory_bytes": peak_memory,
        "steps": outcome.steps, "epochs": outcome.epochs,
        "train_examples": data.train_examples, "train_examples_total": data.train_examples_total,
        "dev_examples": data.dev_examples, "dataset_note": data.note,
        "device": device_label(device), "precision": precision,
        # The thread count changes the numbers on a CPU (reduction order), so it is on record.
        "num_threads": torch.get_num_threads(),
        "data_hash": plan.data_hash,
        "config": plan.resolved_config(), "versions": versions(),
    }
    (tmp / CHECKPOINT_NAME).unlink(missing_ok=True)
    metrics["timings"] = clock.as_dict()
    metrics = _json_safe(metrics)
    write_json(tmp / "metrics.json", metrics)
    # The ownership marker is the temporary directory's, not the result's.
    (tmp / OWNER_FILE).unlink()
    try:
        publish_dir(tmp, plan.out_dir)
    except BaseException:
        write_json(tmp / OWNER_FILE, plan.owner())  # still this run's, for the next attempt
        raise
    primary = (metrics["scores"] or {})
    log(f"done: {plan.out_dir} scores {primary}")
    return metrics


def _diff_count(method, stats: dict | None, name: str) -> int | None:
    """``diffed_params`` / ``nonzeros``: the method's attribute, else its stats.json, else None
    (methods without a diff)."""
    value = getattr(method, name, None)
    if value is None and stats:
        value = stats.get(name)
    return None if value is None else int(value)


@dataclass
class EvaluatePlan:
    cfg: dict
    config_path: str
    task: str
    diff_path: Path
    out_path: Path
    training: dict
    data_cfg: dict
    model_key: str | None


def plan_evaluate(diff_path, config_path, task: str, out_path, model_key: str | None = None,
                  overrides: dict | None = None) -> EvaluatePlan:
    out_path = Path(out_path)
    if os.path.lexists(out_path):
        raise ValueError(f"--out {out_path} exists: evaluate never reuses or overwrites a result file "
                         "(its scores could be another diff's); delete it or choose another --out")
    cfg = settings.load_config(config_path)
    settings.check_task(task)
    if model_key is not None:
        settings.model_spec(cfg, model_key)
        cfg["model"] = model_key
    diff_path = Path(diff_path)
    if not diff_path.is_file():
        raise FileNotFoundError(f"--diff {diff_path}: no such file")
    from diffprune.storage import FORMAT, check_task, read_header
    from diffprune.tasks import get_task

    # A dense diff, a foreign file or another task's diff is refused before any model loads.
    header = read_header(diff_path, expected_format=FORMAT)
    check_task(header, task, task_label_set(get_task(task)), f"--diff {diff_path}")
    out_path = Path(out_path)
    if os.path.lexists(out_path):
        raise ValueError(f"--out {out_path} exists: evaluate never reuses or overwrites a result file "
                              "(its scores could be another diff's); delete it or choose another --out")
    return EvaluatePlan(cfg=cfg, config_path=str(config_path), task=task, diff_path=diff_path,
                        out_path=out_path, training=settings.resolve_training(cfg, task, None, "train", overrides),
                        data_cfg=settings.data_config(cfg, task), model_key=model_key)


def execute_evaluate(plan: EvaluatePlan) -> dict | None:
    """Load the shared base model, apply a stored sparse diff, evaluate, write the JSON."""
    if os.path.lexists(plan.out_path):
        raise FileExistsError(f"--out {plan.out_path} exists: delete it or choose another --out")
    from diffprune.storage import apply_diff_, load_diff

    import torch

    if plan.training["num_threads"]:
        torch.set_num_threads(plan.training["num_threads"])
    device = pick_device()
    precision = resolve_precision(plan.training["precision"], device)
    task, model, _, model_id, data = load_task_and_model(plan.cfg, plan.task, plan.training, plan.data_cfg,
                                                         derive_seeds(0).model_init)
    # load_diff verifies the payload checksum and the task; apply_diff_ refuses a diff made for
    # another base model or one that does not fit it, before writing anything.
    diff = load_diff(plan.diff_path, task=plan.task, labels=task_label_set(task))
    apply_diff_(model, diff)
    model.to(device)
    evaluation = evaluate_module(task, model, data, plan.training, device, precision)
    result = _json_safe({
        "task": plan.task, "diff": str(plan.diff_path), "diff_bytes": plan.diff_path.stat().st_size,
        "model_id": model_id, "base_fingerprint": diff.header.get("fingerprint"),
        "metrics": evaluation.get("metrics"), "primary_metric": task.primary_metric,
        "scores": evaluation.get("scores"), "dev_examples": data.dev_examples,
        "dataset_note": data.note, "device": device_label(device), "precision": precision,
        "num_threads": torch.get_num_threads(), "data_hash": datahash.task_data_hash(plan.task, plan.data_cfg),
        "config": {"name": plan.cfg["name"], "config_file": plan.config_path, "model_key": plan.cfg["model"],
                   "model": settings.model_spec(plan.cfg), "training": plan.training, "data": plan.data_cfg},
        "versions": versions(),
    })
    write_json(plan.out_path, result)
    log(f"done: {plan.out_path} scores {result['scores']}")
    return result
