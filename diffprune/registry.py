"""Method name -> implementation. Adding a baseline is one line here.

Entries are import strings so that importing the registry stays cheap and a baseline's
heavy dependencies (e.g. ``adapters``) load only when that method is used.
"""
from __future__ import annotations

import importlib

from diffprune.methods import Method

METHODS: dict[str, str] = {
    "diff_pruning": "diffprune.adaptive:AdaptiveDiffPruning",
    "full_finetuning": "diffprune.baselines.full_finetuning:FullFinetuning",
    "last_layer": "diffprune.baselines.last_layer:LastLayer",
    "adapters": "diffprune.baselines.adapters:HoulsbyAdapters",
    "nonadaptive_diff_pruning": "diffprune.baselines.nonadaptive:NonAdaptiveDiffPruning",
    "bitfit": "diffprune.baselines.bitfit:BitFit",
    "lora": "diffprune.baselines.lora:LoRA",
    "critical_layers": "diffprune.baselines.critical_layers:CriticalLayers",
    "sparsification": "diffprune.baselines.sparsification:Sparsification",
}


# Methods that run a phase of a registered method and store its artifact, never named in a
# config: every prune run is fixed-mask finetuning (``runner``), whatever its method key.
PHASE_METHODS: dict[str, str] = {
    "fixed_mask": "diffprune.projection:FixedMaskFinetuning",
}


def _import(name: str, entry: str) -> type[Method]:
    module_name, class_name = entry.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"registry entry {name!r} -> {entry} is not a Method subclass")
    return cls


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(sorted(METHODS))}")
    return _import(name, METHODS[name])


def stored_method_class(name: str) -> type[Method]:
    """The class named as an artifact's ``stored_by``: a registered method or a phase's
    (only these names are looked up: an artifact names no code to import)."""
    if name in PHASE_METHODS:
        return _import(name, PHASE_METHODS[name])
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r} (this diffprune knows {', '.join(sorted(METHODS))}); "
                         "an artifact of a method added later needs a diffprune that has it")
    return method_class(name)


def build_method(name: str, **options) -> Method:
    return method_class(name)(**options)
