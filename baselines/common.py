"""Pieces the baselines share: picking the head, freezing, optimizer groups, option checks.

Several baselines are "finetune a chosen subset of the pretrained parameters (+ the head),
freeze the rest" (last layer, BitFit, critical layers); ``SubsetFinetuning`` implements that
once so that they differ only in which parameters they select.
"""
from __future__ import annotations

from typing import Callable, Iterable

from torch import nn

from diffprune.layers import is_head
from diffprune.methods import Method


def head_parameter_names(model: nn.Module, head_pattern: str) -> list[str]:
    names = [n for n, _ in model.named_parameters() if is_head(n, head_pattern)]
    if not names:
        # Without a head the model cannot learn the task at all; a wrong regex must not
        # silently produce a run that only trains (say) biases.
        raise ValueError(f"no parameter matches the head pattern {head_pattern!r}; the head is what the "
                         "loader newly initialised (diffprune.models.resolve_head_pattern), or an explicit "
                         "head_pattern that names it")
    return names


def set_trainable(model: nn.Module, keep: Callable[[str], bool]) -> list[str]:
    """requires_grad = keep(name) for every parameter; return the trainable names."""
    trainable = []
    for name, param in model.named_parameters():
        param.requires_grad_(keep(name))
        if param.requires_grad:
            trainable.append(name)
    return trainable


def trainable_named_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def decay_groups(named_params: Iterable[tuple[str, nn.Parameter]], weight_decay: float,
                 lr: float | None = None) -> list[dict]:
    """AdamW groups in the BERT convention: weight decay on matrices, none on vectors.

    ``lr`` set: the groups carry their own learning rate (methods whose new parameters
    train at a different rate than finetuning, e.g. adapters or LoRA).
    """
    decay, no_decay = [], []
    for _, param in named_params:
        (no_decay if param.ndim < 2 else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if lr is not None:
        for group in groups:
            group["lr"] = lr
    return [g for g in groups if g["params"]]




def check_learning_rate(method: str, option: str, value) -> float | None:
    """None (use the run's training learning rate) or a positive number."""
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"method {method!r}: option {option!r} must be a number or null, got {value!r}") from None
    if not value > 0:
        raise ValueError(f"method {method!r}: option {option!r} must be > 0, got {value}")
    return value


class SubsetFinetuning(Method):
    """Train a selected subset of the pretrained parameters plus the head; freeze the rest.

    Subclasses implement ``select`` (which pretrained parameters train). The stored
    per-task state is exactly the trained tensors and the task buffers (``Method.save``).
    """

    def select(self, model: nn.Module, head_pattern: str) -> set[str]:
        """Names of the pretrained (non-head) parameters to finetune."""
        raise NotImplementedError

    def nothing_selected(self) -> str:
        """Why ``select`` found nothing on a model, and what to do instead."""
        return (f"method {self.name!r} selected no pretrained parameters to train on this model; "
                "choose another method for it")

    def check_model(self, model: nn.Module, head_pattern: str) -> None:
        head_parameter_names(model, head_pattern)
        if not self.select(model, head_pattern):
            raise ValueError(self.nothing_selected())

    def prepare(self, model: nn.Module, head_pattern: str) -> nn.Module:
        head = set(head_parameter_names(model, head_pattern))
        chosen = self.select(model, head_pattern)
        if not chosen:
            raise ValueError(self.nothing_selected())
        self.trained_names = set_trainable(model, lambda n: n in chosen or n in head)
        self.head_names = sorted(head)
        return model

    def selection_metadata(self) -> dict:
        """Facts about the selection on this model (e.g. the chosen layers); recorded as the
        run's ``method_report`` and in its artifact."""
        return {}

    def report(self) -> dict | None:
        return self.selection_metadata() or None
