"""diffprune/device.py: device, precision, autocast, thread count and peak memory on a CPU."""
from __future__ import annotations

import contextlib

import pytest
import torch

from diffprune import device as device_module
from diffprune.device import (autocast_context, device_label, peak_memory_bytes, pick_device, resolve_precision,
                              set_thread_count)

CPU = torch.device("cpu")


def test_a_cpu_run_trains_in_fp32_unless_asked_for_bf16():
    assert resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16" and resolve_precision("fp32", CPU) == "fp32"
    with pytest.raises(ValueError, match="precision fp16 needs a CUDA device"):
        resolve_precision("fp16", CPU)


def test_auto_precision_on_cuda_prefers_bf16(monkeypatch):
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_precision("auto", cuda) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_precision("auto", cuda) == "fp16" and resolve_precision("fp16", cuda) == "fp16"


def test_autocast_only_below_fp32():
    assert isinstance(autocast_context(CPU, "fp32"), contextlib.nullcontext)
    with autocast_context(CPU, "bf16"):
        product = torch.ones(2, 2) @ torch.ones(2, 2)
    assert product.dtype == torch.bfloat16


def test_the_device_is_the_first_visible_gpu_else_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device() == CPU and device_label(CPU) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device() == torch.device("cuda", 0)


def test_cpu_peak_memory_is_the_resident_set_peak(monkeypatch):
    peak = peak_memory_bytes(CPU)
    assert peak > 10 * 2**20  # a Python process with torch loaded holds far more than 10 MiB

    def no_proc(*args, **kwargs):
        raise OSError("no /proc here")

    monkeypatch.setattr(device_module, "open", no_proc, raising=False)  # shadows the builtin in that module only
    assert peak_memory_bytes(CPU) > 10 * 2**20  # without /proc: getrusage


def test_thread_count_is_set_only_when_given(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    set_thread_count(0)
    set_thread_count(None)
    set_thread_count(3)
    assert calls == [3]
