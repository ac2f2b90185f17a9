"""Sparsification (Radiya-Dixit & Wang, "How fine can fine-tuning be?").

A task model is the pretrained model with a learned set of entries of chosen layers set to
zero; every other pretrained value is kept as is. Only the head trains densely. Per masked
weight tensor a real-valued score per entry is learned; the forward pass zeroes the
``zero_share`` of entries with the lowest scores (an exact top-k, so the share is always
exactly met) and the scores receive the straight-through gradient
``dL/dscore = dL/dW_eff * W`` (as in movement pruning): an entry whose removal would lower
the loss sees its score pushed down.

The mask is attached with ``torch.nn.utils.parametrize`` on the modules' ``weight``: the
pretrained tensor stays where it is (as ``parametrizations.weight.original``, frozen) and no
copy of the model is made. Per task only the zeroed positions (+ the head and task buffers)
are stored; loading turns them back into scores that zero exactly those positions.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from diffprune.baselines.common import decay_groups, head_parameter_names, trainable_named_parameters
from diffprune.layers import layer_labels, layer_order
from diffprune.method_options import option
from diffprune.methods import Method
from diffprune.projection import share_count  # the rounding rule of project, halves up


def lowest_score_positions(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Flat indices of the ``count`` lowest scores, ascending (the entries to zero)."""
    if count == 0:
        return torch.empty(0, dtype=torch.long, device=scores.device)
    return torch.topk(scores.detach().flatten(), count, largest=False, sorted=False).indices.sort().values


class _ZeroLowestScores(torch.autograd.Function):
    """W * keep_mask(scores) forward; straight-through gradient W * grad for the scores.

    A custom function (rather than ``mask + s - s.detach()``) keeps the kept entries
    bit-identical to the pretrained values: no floating-point round trip through the scores.
    """

    @staticmethod
    def forward(ctx, weight, scores, zero_count):
        keep = torch.ones(weight.numel(), dtype=weight.dtype, device=weight.device)
        keep[lowest_score_positions(scores, zero_count)] = 0
        keep = keep.view_as(weight)
        ctx.save_for_backward(weight, keep)
        return weight * keep

    @staticmethod
    def backward(ctx, grad_output):
        weight, keep = ctx.saved_tensors
        grad_weight = grad_output * keep if ctx.needs_input_grad[0] else None
        grad_scores = grad_output * weight if ctx.needs_input_grad[1] else None
        return grad_weight, grad_scores, None


class ZeroingMask(nn.Module):
    """Parametrization of one weight tensor: zero its ``zero_count`` lowest-scored entries."""

    def __init__(self, weight: torch.Tensor, zero_count: int) -> None:
        super().__init__()
        magnitude = weight.detach().abs().float()
        # Start from magnitude pruning (the smallest pretrained entries are the cheapest to
        # zero), scaled to mean 1 so that one score learning rate suits every layer.
        self.scores = nn.Parameter((magnitude / magnitude.mean().clamp_min(1e-12)).to(weight.dtype))
        self.zero_count = zero_count

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return _ZeroLowestScores.apply(weight, self.scores, self.zero_count)

    def zeroed_positions(self) -> torch.Tensor:
        return lowest_score_positions(self.scores, self.zero_count)


class Sparsification(Method):
    name = "sparsification"
    summary = "a learned zeroing mask on the transformer blocks' weights (baselines/sparsification.py)"

    @dataclass(frozen=True)
    class Options:
        # A fraction, not a percent.
        zero_share: float = option(0.01, "fraction of each masked tensor's entries set to zero", gt=0, lt=1)
        # Labels as in diffprune.layers; their >=2-D weights (all the blocks' linear weights) are masked.
        layers: list[str] | None = option(None, "layer labels whose weights are masked; null = every transformer "
                                          "block", min_items=1)
        # Mean-1 scale: ~100 steps move a score by one mean magnitude. The head trains at the
        # run's training learning rate.
        score_learning_rate: float = option(1e-2, "Adam learning rate of the mask scores", gt=0)

    def prepare(self, model: nn.Module, head_pattern: str) -> nn.Module:
        head = set(head_parameter_names(model, head_pattern))
        label_of = layer_labels(model, head_pattern)
        labels = set(label_of.values())
        selected = self.options["layers"]
        if selected is None:
            selected = [l for l in layer_order(labels) if l.startswith("layer_")]
        unknown = sorted(set(selected) - (labels - {"head"}))
        if unknown:
            raise ValueError(f"sparsification: layers {unknown} not in the model; it has {layer_order(labels - {'head'})}")

        targets = []  # (module, weight name in the plain model, the weight)
        owners: dict[int, list[str]] = {}
        for module_name, module in model.named_modules():
            for param_name, param in module.named_parameters(recurse=False):
                full = f"{module_name}.{param_name}" if module_name else param_name
                owners.setdefault(id(param), []).append(full)
                if (param_name == "weight" and param.ndim >= 2 and full not in head
                        and label_of.get(full) in selected):
                    targets.append((module, full, param))
        if not targets:
            raise ValueError(f"sparsification: no >=2-D weights in layers {selected}")
        for _, full, param in targets:
            tensor_owners = owners[id(param)]
            if len(tensor_owners) > 1:
                # Masking one alias would silently leave the other (e.g. a tied output matrix) dense.
                raise ValueError(f"sparsification: {full} is shared with {tensor_owners}; tied weights are unsupported")

        for param in model.parameters():
            param.requires_grad_(False)
        self.masks: dict[str, ZeroingMask] = {}
        share = float(self.options["zero_share"])
        for module, full, _ in targets:
            mask = ZeroingMask(module.weight, share_count(share, module.weight.numel()))
            parametrize.register_parametrization(module, "weight", mask)
            self.masks[full] = mask
        # Names are taken after parametrizing: the head is untouched, so its names are stable.
        self.head_names = sorted(head)
        params = dict(model.named_parameters())
        for name in self.head_names:
            params[name].requires_grad_(True)
        return model

    def parameter_groups(self, model: nn.Module, training: dict) -> list[dict]:
        score_ids = {id(mask.scores) for mask in self.masks.values()}
        others = [(n, p) for n, p in trainable_named_parameters(model) if id(p) not in score_ids]
        # No weight decay on the scores: it would drag them to zero, i.e. towards random ties.
        groups = [{"params": [m.scores for m in self.masks.values()], "weight_decay": 0.0,
                   "lr": float(self.options["score_learning_rate"])}]
        return groups + decay_groups(others, float(training.get("weight_decay", 0.0)))

    def zeroed_positions(self) -> dict[str, torch.Tensor]:
        """Flat indices of the currently zeroed entries, per masked weight (plain-model names)."""
        return {name: mask.zeroed_positions() for name, mask in self.masks.items()}

    def new_parameter_count(self, model: nn.Module) -> int:
        params = dict(model.named_parameters())
        return sum(m.zero_count for m in self.masks.values()) + sum(params[n].numel() for n in self.head_names)

    def stored_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        # The zeroed positions (``zeroed.<weight name>``), not the scores that chose them: they
        # are what the task changes, a share of the scores' size (int32 where the tensor allows).
        state = super().stored_state(model)
        names = {id(p): n for n, p in model.named_parameters()}
        for name, mask in self.masks.items():
            del state["param." + names[id(mask.scores)]]
            dtype = torch.int32 if mask.scores.numel() < 2**31 else torch.int64
            state["zeroed." + name] = mask.zeroed_positions().to(dtype)
        return state

    def load_stored_state(self, model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
        # Scores that zero exactly the stored positions: 0 there, 1 elsewhere, and as many
        # positions as the mask zeroes, so its lowest-score pick is exactly them.
        from diffprune.artifact import ArtifactError

        tensors = dict(tensors)
        names = {id(p): n for n, p in model.named_parameters()}
        for name, mask in self.masks.items():
            positions = tensors.pop("zeroed." + name, None)
            if positions is None or positions.dtype not in (torch.int32, torch.int64) or positions.ndim != 1:
                raise ArtifactError(f"{source}: no 1-D integer zeroed.{name} (the positions this mask zeroes)")
            index, size = positions.long(), mask.scores.numel()
            in_range = not index.numel() or (int(index.min()) >= 0 and int(index.max()) < size)
            if index.numel() != mask.zero_count or not in_range or torch.unique(index).numel() != index.numel():
                raise ArtifactError(f"{source}: zeroed.{name} must be {mask.zero_count} distinct positions in "
                                    f"[0, {size}) (zero_share {self.options['zero_share']})")
            scores = torch.ones(mask.scores.numel(), dtype=mask.scores.dtype)
            scores[index] = 0
            tensors["param." + names[id(mask.scores)]] = scores.view_as(mask.scores)
        super().load_stored_state(model, tensors, source)
