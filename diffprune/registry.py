"""Method name -> implementation. Adding a baseline is one line here.

Entries are import strings so that importing the registry stays cheap and a baseline's
heavy dependencies (e.g. ``adapters``) load only when that method is used.
"""
from __future__ import annotations

import importlib

from diffprune.methods import Method

METHODS: dict[str, str] = {
    "diff_pruning": "diffprune.adaptive:AdaptiveDiffPruning",
    "full_finetuning": "baselines.full_finetuning:FullFinetuning",
    "last_layer": "baselines.last_layer:LastLayer",
    "adapters": "baselines.adapters:HoulsbyAdapters",
    "nonadaptive_diff_pruning": "baselines.nonadaptive:NonAdaptiveDiffPruning",
    "bitfit": "baselines.bitfit:BitFit",
    "lora": "baselines.lora:LoRA",
    "critical_layers": "baselines.critical_layers:CriticalLayers",
    "sparsification": "baselines.sparsification:Sparsification",
}


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(sorted(METHODS))}")
    module_name, class_name = METHODS[name].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"registry entry {name!r} -> {METHODS[name]} is not a Method subclass")
    return cls


def build_method(name: str, **options) -> Method:
    return method_class(name)(**options)
