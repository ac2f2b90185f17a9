"""Where a run computes and in what precision, and how much memory it took.

A visible GPU is used as ``cuda:0`` (whoever launches the run picks the GPU with
``CUDA_VISIBLE_DEVICES``, e.g. ``diffprune.gpu_slots``). ``precision: auto`` trains in fp32
on the CPU; on CUDA under bf16 autocast where the GPU supports it (no loss scaling needed),
else fp16 autocast with a ``GradScaler``. Training, evaluation and the bench share these
functions so that they run under the same settings. torch is imported inside the functions,
so that importing this module (as the CLI does before planning a run) loads nothing heavy.
"""
from __future__ import annotations

import resource
import sys
from contextlib import nullcontext


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
    """The autocast a forward pass runs under for a resolved ``precision`` (none for fp32)."""
    import torch

    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def device_label(device) -> str:
    """What results record as ``device``: "cpu", or "cuda (<GPU name>)"."""
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


def set_thread_count(num_threads: int | None) -> None:
    """Make torch use ``num_threads`` CPU threads (0 or None: leave torch's default); the
    numbers of a CPU run depend on it (reduction order), so results record the count used."""
    import torch

    if num_threads:
        torch.set_num_threads(num_threads)
